#!/usr/bin/env bash
# FSDD digits, top to bottom: data, the teacher (3 trainings), its cache, the default student with
# CTC only and with KD, the KD student's export, and every model's WER on the held-out speaker.
# Measured figures and the history of each choice: RESULTS.md. Configs: conf/ (one per training
# stage); ablations: conf/ablations/.
#
#   bash recipes/fsdd/run.sh [--stage N] [--stop-stage M] [--fsdd DIR] [--n-synth N]
#
# Stages (each prints the commands it runs; a training stage rerun resumes or returns at once):
#   1 data into runs/data/ (prepare.sh)        6 student stage 1 (200 steps)
#   2 teacher stage 1 (200 steps)              7 student, CTC only
#   3 teacher (8 epochs)                       8 student, KD from the cache
#   4 teacher, 3 more epochs (the recipe's)    9 export of the KD student
#   5 the teacher's cache for KD              10 WER of teacher and students on yweweler
# Outputs: runs/fsdd/. Set ASRKD to run another asrkd executable.
set -euo pipefail
cd "$(dirname "$0")/../.."

from_stage=1
stop_stage=10
fsdd=../shared/data/fsdd
n_synth=800
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) from_stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --fsdd) fsdd=$2; shift 2 ;;
    --n-synth) n_synth=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

export ASRKD=${ASRKD:-asrkd}  # prepare.sh reads it too
recipe=recipes/fsdd
conf=$recipe/conf
data=runs/data
exp=runs/fsdd
train_manifests="--manifest $data/synth_digits_train/manifest.jsonl --manifest $data/fsdd_isolated_train.jsonl --manifest $data/fsdd_connected_train.jsonl"
dev=$data/fsdd_connected_yweweler.jsonl

# run CMD... and stage N TEXT CMD... (run CMD when N lies within --stage .. --stop-stage).
source $recipe/local/stages.sh
# Stage 10: greedy and lexicon WER of the recipe's teacher and both students.
evaluate() {
  mkdir -p $exp/eval
  for model in teacher_interctc_ft student_ctc student_kd; do
    run $ASRKD eval $exp/$model --manifest $dev --json $exp/eval/$model.json
    run $ASRKD eval $exp/$model --manifest $dev --lexicon $recipe/digits.words --json $exp/eval/${model}_lexicon.json
  done
}

stage 1 "data: synthetic digits, FSDD george/jackson/nicolas, dev yweweler" \
  bash $recipe/prepare.sh "$fsdd" "$n_synth"
stage 2 "teacher stage 1, isolated digits without augmentation" \
  $ASRKD train --config $conf/teacher_stage1.yaml --resume
stage 3 "teacher, 8 epochs of the full mix" \
  $ASRKD train --config $conf/teacher.yaml --resume
stage 4 "teacher, 3 more epochs, best epoch by the dev WER with the lexicon" \
  $ASRKD train --config $conf/teacher_ft.yaml --resume
# layers 3 and 7: those student_kd.yaml's kd.layer_map reads
stage 5 "the teacher's posteriors, 4-best and layers 3 and 7 over the training audio" \
  $ASRKD cache build --teacher $exp/teacher_interctc_ft/checkpoints/best --out $exp/cache \
  $train_manifests --hidden-layers 3 7
stage 6 "student stage 1" \
  $ASRKD train --config $conf/student_stage1.yaml --resume
stage 7 "student, CTC only (the no-KD baseline)" \
  $ASRKD train --config $conf/student_ctc.yaml --resume
stage 8 "student, feature KD + CTC from the cache" \
  $ASRKD distill --config $conf/student_kd.yaml --resume
stage 9 "the KD student to every format and precision, each artifact verified on yweweler" \
  $ASRKD export $exp/student_kd --eval-manifest $dev --out $exp/export_student_kd --max-wer-increase 1.0
stage 10 "WER on yweweler, greedy and with the digit lexicon (runs/fsdd/eval/)" \
  evaluate
