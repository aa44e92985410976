#!/usr/bin/env bash
# FSDD digits, the streaming table (issue 15): the default student at full context and the
# streaming student (student-stream, dynamic chunk training), each with CTC only and with KD from
# a full-context teacher, at the same data and steps (run.sh's student shape: 200 steps of stage 1,
# then 730 updates), all with the raw log-mel front end a streaming model needs
# (frontend.normalize: none). Then WER (greedy and lexicon), first-partial / final latency and RTF
# on one thread of every model, the streaming ones at 320, 640 and 120 ms chunks, and the streaming
# KD student's int8 streaming artifacts. Figures: RESULTS.md, "The streaming table".
#
#   bash recipes/fsdd/run_streaming.sh [--stage N] [--stop-stage M]
#                                      [--teacher whisper|fsdd|ctc|whisper-adapt]
#
# --teacher: the KD rows' teacher. whisper (default): Whisper tiny.en through its cache of the
# training audio, runs/fsdd/whisper_cache (N-best and encoder states, `--hidden-layers 0`;
# docs/TEACHERS.md), configs conf/streaming/*_kd.yaml. fsdd: the recipe's own full-context
# teacher (run.sh stages 2-4) through its cache (run.sh stage 5), configs
# conf/streaming/fsdd_teacher/, outputs in runs/fsdd/streaming/fsdd_teacher/. ctc: the
# full-context CTC student of stage 3 through its own cache (built by stage 5), configs
# conf/streaming/ctc_teacher/, outputs in runs/fsdd/streaming/ctc_teacher/. whisper-adapt:
# Whisper tiny.en without transcripts, as run_whisper.sh stage 10, on the training audio plus the
# dev speaker's untranscribed audio (its caches: run_whisper.sh stages 2 and 9), 16 epochs; every
# row of this table has that audio: the CTC-only rows with its true text (as run_whisper.sh stage
# 11), the KD rows label-free (each from its own stage 1 on Whisper's pseudo-labels, run by stages
# 5 and 6); configs conf/streaming/whisper_adapt/, outputs in runs/fsdd/streaming/whisper_adapt/.
#
# Stages (each prints the commands it runs; a training stage rerun resumes or returns at once):
#   1 student stage 1 (200 steps)             5 student, KD
#   2 streaming student stage 1 (200 steps)   6 streaming student, KD
#   3 student, CTC only                       7 WER and latency on yweweler (runs/fsdd/streaming/eval/)
#   4 streaming student, CTC only             8 the streaming KD student's int8 ONNX/TFLite streaming
#                                               artifacts at 320 ms and 120 ms chunks, gated on yweweler
# Needs runs/data/ (run.sh stage 1). Outputs: runs/fsdd/streaming/. Set ASRKD / PYTHON to run
# other executables.
set -euo pipefail
cd "$(dirname "$0")/../.."

source recipes/fsdd/local/stages.sh
teacher=whisper
stage_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --teacher) teacher=$2; shift 2 ;;
    *) stage_args+=("$1"); shift ;;
  esac
done
parse_stages "$0" 8 ${stage_args[@]+"${stage_args[@]}"}

ASRKD=${ASRKD:-asrkd}
PYTHON=${PYTHON:-python}
recipe=recipes/fsdd
conf=$recipe/conf/streaming
exp=runs/fsdd/streaming
data=runs/data
train_manifests="--manifest $data/synth_digits_train/manifest.jsonl --manifest $data/fsdd_isolated_train.jsonl --manifest $data/fsdd_connected_train.jsonl"
dev=$data/fsdd_connected_yweweler.jsonl
rows=  # where the CTC-only rows' configs and runs are, under conf/streaming/ and runs/fsdd/streaming/
case "$teacher" in
  whisper) kd= ;;
  fsdd) kd=fsdd_teacher/ ;;
  ctc) kd=ctc_teacher/ ;;
  whisper-adapt) kd=whisper_adapt/ rows=whisper_adapt/ ;;
  *) echo "run_streaming.sh: --teacher is whisper, fsdd, ctc or whisper-adapt, not $teacher" >&2; exit 2 ;;
esac
kd_conf=$conf/${kd%/}  # the KD rows' configs
kd_conf=${kd_conf%/}
rows_conf=$conf/${rows%/}  # the CTC-only rows' configs
rows_conf=${rows_conf%/}
export OMP_NUM_THREADS=1  # one thread per training (the configs say run.threads: 1 too)

# Stages 5-6: the teacher's cache (the CTC student's: built here, a rerun keeps its finished
# shards; Whisper's: built beforehand), then the distillation.
need_cache() {  # FOLDER HINT: stop with HINT unless FOLDER is a finished cache
  [ -f "$1/cache.json" ] || { echo "run_streaming.sh: $1/cache.json not found; $2" >&2; exit 2; }
}
distil() {  # ROW: student or stream
  if [ "$teacher" = ctc ]; then
    # block 3: the ctc_teacher configs' kd.layer_map
    run $ASRKD cache build --teacher $exp/student_ctc/checkpoints/best --out $exp/cache_student_ctc \
      --hidden-layers 3 $train_manifests
  fi
  case "$teacher" in
    fsdd) need_cache runs/fsdd/cache "run bash recipes/fsdd/run.sh --stage 2 --stop-stage 5 first (the recipe's teacher and its cache)" ;;
    whisper) need_cache runs/fsdd/whisper_cache "build the Whisper cache of the training audio first (docs/TEACHERS.md), or pass --teacher ctc" ;;
    whisper-adapt)
      need_cache runs/fsdd/whisper_cache "run bash recipes/fsdd/run_whisper.sh --stage 1 --stop-stage 2 first"
      need_cache runs/fsdd/whisper_cache_yweweler "run bash recipes/fsdd/run_whisper.sh --stage 9 --stop-stage 9 first"
      run $ASRKD distill --config $kd_conf/$1_stage1.yaml --resume ;;  # stage 1 on the pseudo-labels
  esac
  run $ASRKD distill --config $kd_conf/$1_kd.yaml --resume
}
# Stage 7: greedy and lexicon WER and the latency of each model; the streaming students at
# 320 ms (8 encoder frames, 8 chunks of left context), 640 ms (16 frames, 4 chunks: the same 2.56 s)
# and 120 ms (3 frames, 21 chunks: 2.52 s).
evaluate() {
  mkdir -p $exp/eval/$kd
  for model in ${rows}student_ctc ${kd}student_kd; do
    run $ASRKD eval $exp/$model --manifest $dev --json $exp/eval/$model.json
    run $ASRKD eval $exp/$model --manifest $dev --lexicon $recipe/digits.words --json $exp/eval/${model}_lexicon.json
    run $PYTHON $recipe/local/offline_latency.py $exp/$model --manifest $dev --json $exp/eval/${model}_latency.json
  done
  for model in ${rows}stream_ctc ${kd}stream_kd; do
    for chunking in "8 8" "16 4" "3 21"; do
      set -- $chunking
      run $ASRKD eval $exp/$model --manifest $dev --chunk-size $1 --left-chunks $2 --json $exp/eval/${model}_c$1.json
      run $ASRKD eval $exp/$model --manifest $dev --chunk-size $1 --left-chunks $2 --lexicon $recipe/digits.words \
        --json $exp/eval/${model}_c$1_lexicon.json
    done
  done
}
# Stage 8: `asrkd export` makes the streaming artifacts at the checkpoint's chunking (320 ms, as
# trained) and, with --chunk-size 3 --left-chunks 21, at 120 ms chunks (2.52 s of left context),
# the chunk that brings the first partial under 200 ms.
# Latency over all 100 utterances (--rtf-utterances), one thread.
export_stream() {
  local model=${kd}stream_kd
  local options="--formats onnx-stream,tflite-stream --quantize int8 --eval-manifest $dev --threads 1 --rtf-utterances 100 --rtf-repeats 1"
  mkdir -p $exp/export/$kd
  run $ASRKD export $exp/$model $options --out $exp/export/$model
  run $ASRKD export $exp/$model $options --chunk-size 3 --left-chunks 21 --out $exp/export/${model}_c3
}

stage 1 "student stage 1, raw log-mel front end" \
  $ASRKD train --config $conf/student_stage1.yaml --resume
stage 2 "streaming student stage 1 (dynamic chunks)" \
  $ASRKD train --config $conf/stream_stage1.yaml --resume
stage 3 "student, CTC only" \
  $ASRKD train --config $rows_conf/student_ctc.yaml --resume
stage 4 "streaming student, CTC only" \
  $ASRKD train --config $rows_conf/stream_ctc.yaml --resume
stage 5 "student, KD from the $teacher teacher's cache" \
  distil student
stage 6 "streaming student, KD from the $teacher teacher's cache" \
  distil stream
stage 7 "WER and latency on yweweler (runs/fsdd/streaming/eval/)" \
  evaluate
stage 8 "the streaming KD student's int8 streaming artifacts, 320 ms (its config) and 120 ms chunks" \
  export_stream
