#!/usr/bin/env bash
# The quickstart main job on the embedded default data: synthesize spoken digits with espeak-ng
# (train and test voices disjoint), train the default student with CTC, score it on the held-out
# voices, and transcribe one file. Re-running reuses the synthesized data and resumes training.
set -euo pipefail
cd "$(dirname "$0")/../.."
ASRKD=${ASRKD:-asrkd}
OUT=runs/quickstart
$ASRKD synth --task digits --n 400 --out $OUT/data/train --voice-set train --seed 1
$ASRKD synth --task digits --n 60 --out $OUT/data/dev --voice-set dev --seed 2
$ASRKD synth --task digits --n 60 --out $OUT/data/test --voice-set test --seed 3
$ASRKD manifest check $OUT/data/train/manifest.jsonl $OUT/data/dev/manifest.jsonl $OUT/data/test/manifest.jsonl
$ASRKD train --config recipes/quickstart/student.yaml --resume
$ASRKD eval $OUT/student --manifest $OUT/data/test/manifest.jsonl --json $OUT/test_eval.json
first=$(ls $OUT/data/test/wavs/*.wav | head -n 1)
$ASRKD transcribe $OUT/student "$first"
