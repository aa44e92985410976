"""``asrkd demo``: the whole pipeline on embedded data, in one resumable command.

    run_demo("runs/demo")                  # asrkd demo
    run_demo("runs/demo-quick", "quick")   # asrkd demo --quick
    run_demo("runs/demo-quick-whisper", "quick", teacher="whisper")   # asrkd demo --quick --teacher whisper

What it trains and exports is a plan, read from ``recipes/demo/<plan>/`` (`plan.DemoPlan`): a
`TrainConfig` file per training stage and ``plan.yaml`` (corpus sizes and seeds, export settings);
``asrkd train --config recipes/demo/<plan>/<stage>.yaml`` replays a stage (recipes/demo/README.md).

Stages (`stages.pipeline`: `stages.PIPELINE`, plus `stages.STREAMING` in a plan with a streaming
student), each recorded in ``OUT/stages/<stage>.json`` when it finishes (a rerun skips finished
stages and reuses their outputs; an interrupted stage resumes: trainings from their last
checkpoint, the cache from its finished shards, synthesis from the wavs already written;
``force`` redoes everything):

1. ``data``: spoken digit strings synthesized with espeak-ng (asrkd.synth), three disjoint voice
   sets for train, dev and test, so the test WER is on voices no model heard;
2. ``teacher``: the plan's teacher trained with CTC;
3. ``cache``: the teacher's top-k posteriors, N-best lists and hidden states over the training
   set (asrkd.cache);
4. ``student_kd``: the default student distilled from the cache (feature KD + ground-truth CTC,
   the term that did best in the FSDD ablation, recipes/fsdd/RESULTS.md);
5. ``student_ctc``: the same student, data, augmentation, seed and steps with CTC only: the
   no-KD baseline;
6. ``export``: the KD student to Core ML, TFLite, ONNX and ExecuTorch at the plan's precisions,
   each artifact run in its own runtime on the test split (mobile_export.export);
7. ``student_stream`` and ``stream_export``, only in a plan with a ``student_stream.yaml`` (quick
   and default): the streaming student (preset ``student-stream``, raw log-mel front end)
   distilled from the same cache, exported as an int8 streaming ONNX artifact (``bundle_stream/``)
   and run chunk by chunk on the test split; the report gives its streaming WER and the artifact's
   first-partial and final latency on one thread (eval/latency.py);
8. ``report``: WER, CER and one-thread RTF of teacher and both students on the test split (and on
   ``real_manifest``, if given), ``report.json``, ``REPORT.md`` and PNG plots (eval/plots.py).
   It runs every time; each model's figures are measured once per set of weights and kept in
   ``stages/measure_<model>.json``, so a rerun on a busy machine does not replace the timings.

``report.json`` keeps ``{"teacher": M, "student_kd": M, "student_ctc": M, "export": <the export
report>}``, each ``M = {"checkpoint", "params", "wer", "cer", "rtf_1thread"}`` (+ ``"wer_real"``
and ``"cer_real"`` with a real-speech manifest), and with a streaming student ``"student_stream":
M`` + ``"chunk_size"``, ``"left_chunks"``, ``"artifact"`` (its export report entry), ``"latency"``
(`eval.latency.LatencyStats.to_dict`) and ``"latency_of"`` (the runtime measured).

With ``teacher="whisper"`` (or ``"whisper:DIR"``; `DemoPlan.with_whisper`) the teacher is a
pretrained Whisper (`stages.WHISPER`): the ``teacher`` stage only loads and records it, the
``cache`` stage runs it over the training audio (N-best, confidence) and writes the training
manifest without its text and the students' vocabulary, and the KD students (``recipes/demo/whisper/<plan>/``) learn
from Whisper alone; the CTC-only student still trains on the ground-truth text. The report's
``teacher`` is Whisper, with ``identity`` (name, source, licence), ``spec`` and ``runtime`` and
no ``run_dir``.

Plans: ``default`` (about 25 minutes on 2 CPU cores) trains long enough for the teacher to be
clearly better than the student and for KD to show; ``quick`` (about 6 minutes) runs every
stage on a smaller corpus with shorter trainings and a lighter export, to show the pipeline and
its report rather than the best numbers; ``smoke`` is for tests (seconds of training).

Modules: `plan` (a recipe folder read into configs), `engine` (the folder, stage records and the
loop), `stages` (what each stage does), `render` (the printed table and ``REPORT.md``).
"""

from asrkd.demo.engine import DEMO_FILE, Demo, run_demo
from asrkd.demo.plan import DemoError, DemoPlan
from asrkd.demo.render import MODEL_LABELS, render_demo_markdown, summary_table
from asrkd.demo.stages import PIPELINE, STAGES

__all__ = ["DEMO_FILE", "MODEL_LABELS", "PIPELINE", "STAGES", "Demo", "DemoError", "DemoPlan",
           "render_demo_markdown", "run_demo", "summary_table"]
