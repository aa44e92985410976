#!/usr/bin/env bash
# Data of the FSDD digits recipe (run.sh stage 1), written to runs/data/:
#   - synthetic digits (espeak-ng, voices from the "train" voice set), wideband 16 kHz: N_SYNTH
#     for training, 200 from the "dev" voices;
#   - real speech: FSDD speakers george, jackson, nicolas (isolated + connected digits), 8 kHz;
#   - dev/test: FSDD speaker yweweler's connected digits (a held-out speaker, as the FSDD README asks).
# Usage: bash recipes/fsdd/prepare.sh [FSDD_DIR] [N_SYNTH]   (defaults: ../shared/data/fsdd, 800)
set -euo pipefail
cd "$(dirname "$0")/../.."
FSDD=${1:-../shared/data/fsdd}
N_SYNTH=${2:-800}
OUT=runs/data
ASRKD=${ASRKD:-asrkd}
[ -d "$FSDD/manifests" ] || { echo "prepare.sh: $FSDD/manifests not found; pass the FSDD folder as the first argument" >&2; exit 2; }
mkdir -p "$OUT"
$ASRKD synth --task digits --n "$N_SYNTH" --out "$OUT/synth_digits_train" --voice-set train --seed 1
$ASRKD synth --task digits --n 200 --out "$OUT/synth_digits_dev" --voice-set dev --seed 2
for kind in isolated connected; do
  $ASRKD manifest filter "$FSDD/manifests/fsdd_$kind.jsonl" --exclude-speaker fsdd_yweweler \
    --out "$OUT/fsdd_${kind}_train.jsonl"
done
$ASRKD manifest filter "$FSDD/manifests/fsdd_connected.jsonl" --speaker fsdd_yweweler \
  --out "$OUT/fsdd_connected_yweweler.jsonl"
$ASRKD manifest check "$OUT"/synth_digits_train/manifest.jsonl "$OUT"/synth_digits_dev/manifest.jsonl \
  "$OUT"/fsdd_*_train.jsonl "$OUT/fsdd_connected_yweweler.jsonl"
