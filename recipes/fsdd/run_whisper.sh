#!/usr/bin/env bash
# FSDD digits distilled from Whisper tiny.en without transcripts (issue 19): the training audio's
# text is removed, Whisper labels it (free decoding; the ten digit words as a closed set for
# short clips it gets wrong) and gives its encoder states; the default student learns from
# those pseudo-labels, then also from the states (feature KD); the reference is the same student
# on the ground-truth text. Figures: RESULTS.md ("Whisper tiny.en as the teacher").
#
#   bash recipes/fsdd/run_whisper.sh [--stage N] [--stop-stage M]
#
# Needs run.sh stage 1 (runs/data/) and, for stage 6, run.sh stage 6 (the ground-truth stage 1),
# and asrkd[whisper]. Stages (each prints the commands it runs; a training rerun resumes):
#   1 the training manifests without text          5 + feature KD from the encoder states
#   2 Whisper's cache of that audio (N-best, fp32   6 reference: ground-truth CTC, same steps
#     encoder states kept as fp16)                  7 export of the pseudo-label student
#   3 pseudo-label student, stage 1 (200 steps)     8 WER and RTF on yweweler: Whisper itself,
#   4 pseudo-label student (730 updates)              then every student, greedy and lexicon
# Adaptation to the dev speaker without transcripts (the real use case: audio from where the app
# will run, no text):
#   9 yweweler's isolated takes that no dev utterance contains, and connected utterances made of
#     them (local/untranscribed_dev_speaker.py), without text; Whisper's cache of that audio
#  10 the pseudo-label student with that audio added (kd.cache: both caches)
#  11 reference: the ground-truth CTC student on the same audio with its true text
#  12 WER and RTF of the two on yweweler, greedy and lexicon
# Outputs: runs/fsdd/whisper/, runs/fsdd/whisper_cache/, runs/fsdd/whisper_cache_yweweler/,
# runs/data/fsdd_yweweler_untranscribed/. Set ASRKD for another asrkd, FSDD for another FSDD folder.
set -euo pipefail
cd "$(dirname "$0")/../.."

source recipes/fsdd/local/stages.sh
parse_stages "$0" 12 "$@"

ASRKD=${ASRKD:-asrkd}
PYTHON=${PYTHON:-python}
recipe=recipes/fsdd
conf=$recipe/conf/whisper
data=runs/data
exp=runs/fsdd/whisper
dev=$data/fsdd_connected_yweweler.jsonl
fsdd=${FSDD:-../shared/data/fsdd}  # stage 9 (run.sh stage 1 takes it as --fsdd)
# Digit strings spelled as digit words; the closed set of the ten digit words for clips under 1 s
# whose free decoding is not a digit string (isolated digits: "Bye.", "to.", nothing); words
# outside the ten dropped; fp32 so that the encoder states are feature targets.
teacher="whisper?numbers=digits&lexicon=digits&candidates=digits&candidates_below=1.0&max_new_tokens=48&threads=2"

# Stage 1. The alphabet (tokens.txt) is what a ground-truth run reads off its transcripts: the
# letters of the ten digit words, so every student here has the same output layer.
unlabel() {
  run $PYTHON $recipe/local/unlabel.py \
    $data/synth_digits_train/manifest.jsonl $data/synth_digits_train_unlabelled.jsonl \
    $data/fsdd_isolated_train.jsonl $data/fsdd_isolated_train_unlabelled.jsonl \
    $data/fsdd_connected_train.jsonl $data/fsdd_connected_train_unlabelled.jsonl
  run $PYTHON -c "from asrkd.decoding import Lexicon; from asrkd.text import CharTokenizer; \
CharTokenizer.from_texts(Lexicon.from_file('$recipe/digits.words').words).save('$data/digits_tokens.txt')"
}
evaluate() {
  mkdir -p $exp/eval
  run $PYTHON $recipe/local/whisper_eval.py "$teacher" $dev --json $exp/eval/whisper.json
  evaluate_students student student_feature student_gt
}
evaluate_students() {
  for model in "$@"; do
    run $ASRKD eval $exp/$model --manifest $dev --json $exp/eval/$model.json
    run $ASRKD eval $exp/$model --manifest $dev --lexicon $recipe/digits.words \
      --json $exp/eval/${model}_lexicon.json
  done
}

stage 1 "the training manifests without their text; the student's alphabet from the digit words" \
  unlabel
# The cache is built from the labelled manifests so that one cache serves the label-free students,
# the ground-truth reference and run_streaming.sh's KD rows: Whisper never reads the text, and a
# line without text reads the cache entry of the same audio (asrkd.cache.diff_entries).
stage 2 "Whisper tiny.en over the training audio: N-best, confidence, encoder states (layer 0)" \
  $ASRKD cache build --teacher "$teacher" --out runs/fsdd/whisper_cache --hidden-layers 0 --threads 2 \
  --manifest $data/synth_digits_train/manifest.jsonl --manifest $data/fsdd_isolated_train.jsonl \
  --manifest $data/fsdd_connected_train.jsonl
stage 3 "pseudo-label student, stage 1 (isolated digits)" \
  $ASRKD distill --config $conf/student_stage1.yaml --resume
stage 4 "pseudo-label student" \
  $ASRKD distill --config $conf/student.yaml --resume
stage 5 "pseudo-label student + feature KD from Whisper's encoder states" \
  $ASRKD distill --config $conf/student_feature.yaml --resume
stage 6 "reference: the same student on the ground-truth text, CTC only (after run.sh stage 6)" \
  $ASRKD train --config $conf/student_gt.yaml --resume
stage 7 "export of the pseudo-label student (every format; the gate on yweweler)" \
  $ASRKD export $exp/student --eval-manifest $dev --out $exp/export_student --max-wer-increase 1.0
stage 8 "WER and RTF on yweweler (runs/fsdd/whisper/eval/)" \
  evaluate

untranscribed=$data/fsdd_yweweler_untranscribed
adaptation_audio() {
  run $PYTHON $recipe/local/untranscribed_dev_speaker.py $fsdd $untranscribed
  run $ASRKD cache build --teacher "$teacher" --out runs/fsdd/whisper_cache_yweweler --hidden-layers 0 \
    --threads 2 --manifest $untranscribed/manifest.jsonl
}
stage 9 "yweweler's untranscribed audio that no dev utterance contains, and Whisper's cache of it" \
  adaptation_audio
stage 10 "pseudo-label student + the dev speaker's untranscribed audio" \
  $ASRKD distill --config $conf/student_adapt.yaml --resume
stage 11 "reference: the ground-truth CTC student on the same audio with its true text" \
  $ASRKD train --config $conf/student_gt_adapt.yaml --resume
stage 12 "WER and RTF of stages 10 and 11 on yweweler (runs/fsdd/whisper/eval/)" \
  evaluate_students student_adapt student_gt_adapt
