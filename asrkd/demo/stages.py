"""The demo's stages, in pipeline order: what each one reads, does and returns.

Each stage is a function ``(demo, outputs) -> dict``: ``demo`` is the `asrkd.demo.engine.Demo`
running it (its folder, plan and log), ``outputs`` maps every earlier stage to what it returned,
and what this one returns is kept in ``OUT/stages/<stage>.json`` for a rerun to reuse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asrkd.demo.plan import STREAMING_STAGE, DemoError
from asrkd.demo.render import render_demo_markdown, summary_table
from asrkd.fileio import atomic_write_text, write_json

# The streaming student's artifact whose WER and latency the report gives: int8, as an app ships
# it; one format only, to keep the demo's added time small.
STREAMING_ARTIFACT = ("onnx-stream", "int8")
# Audio per batch of the Whisper cache (build_cache's default is 60 s): each clip is a 30 s window
# whose encoder output every beam keeps, so 60 s of short clips took 12.6 GB in the FSDD recipe.
WHISPER_BATCH_SECONDS = 20.0

if TYPE_CHECKING:
    from asrkd.demo.engine import Demo
    from asrkd.demo.plan import DemoPlan


def data(demo: Demo, _outputs: dict) -> dict:
    """Synthesize the plan's corpus, one voice set per split, and check every manifest."""
    from asrkd.data import check_manifest
    from asrkd.synth import synthesize_corpus
    from asrkd.text import CharTokenizer

    facts = {}
    for split, spec in demo.plan.synth.items():
        manifest = synthesize_corpus(task=demo.plan.task, n=spec.n, out_dir=demo.data_dir / split,
                                     seed=spec.seed, voice_set=split)
        problems = check_manifest(manifest, tokenizer=CharTokenizer.default_english())
        if problems:
            first = problems[0]
            raise DemoError(f"{manifest}:{first.line}: {first.kind}: {first.message} "
                            f"({len(problems)} problem(s); `asrkd manifest check {manifest}`)")
        facts[split] = _manifest_facts(manifest)
        demo.log(f"  {split}: {facts[split]['utterances']} utterances, "
                 f"{facts[split]['audio_seconds'] / 60:.1f} min, {facts[split]['voices']} voices")
    return {"manifests": {s: str(m) for s, m in demo.manifests.items()}, "splits": facts}


def teacher(demo: Demo, _outputs: dict) -> dict:
    """Train the plan's teacher with CTC."""
    from asrkd.train import Trainer

    return _fit(Trainer, demo.train_config("teacher"), "teacher")


def cache(demo: Demo, outputs: dict) -> dict:
    """The teacher's top-k posteriors, N-best lists and the hidden layers the KD student reads."""
    from asrkd.teacher import load_teacher

    return _build_cache(demo, load_teacher(outputs["teacher"]["checkpoint"]))


def whisper_teacher(demo: Demo, _outputs: dict) -> dict:
    """A pretrained Whisper teacher (`DemoPlan.teacher`) has nothing to train: load it once and
    record who it is (`WhisperTeacher.describe`: kind, weights sha256, name, source, licence)."""
    teacher = _load_whisper(demo.plan.teacher, threads=1)
    record = teacher.describe()
    model = record["model"]
    demo.log(f"  {model['name']}, {model['source']}, licence {model['license']}: {teacher.path}")
    return {"spec": demo.plan.teacher, "path": str(teacher.path), "kind": record["kind"],
            "weights": record["weights"], "model": model}


def whisper_cache(demo: Demo, outputs: dict) -> dict:
    """Whisper over the training audio: per utterance its N-best in the student's spelling, a
    confidence and its no-speech probability (and its encoder states, float32 stored fp16, if a KD
    student's ``kd.layer_map`` reads them); then what the KD students train on: the training manifest without its text
    (``data/train/unlabelled.jsonl``) and their vocabulary (``data/train/tokens.txt``: the letters
    of the task's words, which the CTC-only student reads off its transcripts). Whisper never
    reads a transcript, and a line without text reads the cache entry of the same audio, so the
    cache is built from the labelled manifest."""
    from asrkd.data import read_manifest, write_manifest
    from asrkd.synth import DIGIT_WORDS, word_list
    from asrkd.text import CharTokenizer

    report = _build_cache(demo, _load_whisper(outputs["teacher"]["spec"], threads=demo.threads),
                          max_batch_seconds=WHISPER_BATCH_SECONDS)
    unlabelled = demo.manifests["train"].with_name("unlabelled.jsonl")
    write_manifest(unlabelled, [dataclasses.replace(u, text=None) for u in read_manifest(demo.manifests["train"])])
    tokens = demo.manifests["train"].with_name("tokens.txt")
    CharTokenizer.from_texts(DIGIT_WORDS if demo.plan.task == "digits" else word_list()).save(tokens)
    return {**report, "unlabelled_train": str(unlabelled), "tokens": str(tokens)}


def _load_whisper(spec: str, threads: int):
    """The Whisper teacher of ``spec`` decoding with ``threads`` CTranslate2 threads (speed only:
    not part of its fingerprint)."""
    from asrkd.teacher import load_teacher
    from asrkd.teachers.loading import with_threads

    return load_teacher(with_threads(spec, threads))


def _build_cache(demo: Demo, model, **options) -> dict:
    """``build_cache`` of ``model`` over the training split into ``OUT/cache`` with the hidden layers
    the KD students read, resuming an interrupted build and redoing a stale one."""
    from asrkd.cache import StaleCacheError, build_cache

    def build(force: bool):
        return build_cache(model, [demo.manifests["train"]], demo.out / "cache",
                           hidden_layers=demo.plan.cache_layers, force=force, **options)

    try:
        report = build(force=False)  # resumes an interrupted build
    except StaleCacheError as e:  # the teacher or the data were redone since
        demo.log(f"  rebuilding the cache: {e}")
        report = build(force=True)
    demo.log("  " + report.summary())
    return {"cache": str(demo.out / "cache"), "summary": report.summary()}


def student_kd(demo: Demo, outputs: dict) -> dict:
    """Distil the student from the cache; with ``parallel_students`` (and two cores or more) the
    CTC-only student trains in a subprocess meanwhile, one thread each."""
    import torch

    from asrkd.distill import Distiller

    parallel = demo.plan.parallel_students and demo.threads > 1 and demo.done("student_ctc") is None
    if parallel:
        _start_ctc_subprocess(demo)
    cfg = demo.train_config("student_kd", threads=1 if parallel else None, outputs=outputs)
    try:
        return {**_fit(Distiller, cfg, "student_kd"), "parallel_ctc": parallel}  # REPORT.md says which
    finally:
        torch.set_num_threads(demo.threads)


def _start_ctc_subprocess(demo: Demo) -> None:
    """`asrkd train` of the CTC-only student, one thread, in the background (its log in
    OUT/logs/student_ctc.log); the student_ctc stage waits for it."""
    import subprocess

    import yaml

    cfg = demo.train_config("student_ctc", threads=1)
    cfg.run.progress = False
    config_path = demo.out / "runs" / "student_ctc.yaml"
    atomic_write_text(config_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log_path = demo.out / "logs" / "student_ctc.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    demo.log(f"  training the CTC-only student alongside, one thread each (log: {log_path})")
    with open(log_path, "ab") as log:
        demo.ctc_process = subprocess.Popen(
            [sys.executable, "-m", "asrkd.cli", "train", "--config", str(config_path), "--resume"],
            stdout=log, stderr=subprocess.STDOUT)


def student_ctc(demo: Demo, _outputs: dict) -> dict:
    """Train the same student with CTC only, or wait for the subprocess `student_kd` started."""
    from asrkd.train import Trainer

    process = demo.ctc_process
    if process is None:
        return _fit(Trainer, demo.train_config("student_ctc"), "student_ctc")
    demo.ctc_process = None
    if process.wait() != 0:
        raise DemoError(f"the CTC-only student's training failed (exit status {process.returncode}); "
                        f"see {demo.out / 'logs' / 'student_ctc.log'}, then run the demo again to resume")
    cfg = demo.train_config("student_ctc")
    best = Path(cfg.run.out_dir) / "checkpoints" / "best"
    if not best.is_dir():
        raise DemoError(f"{best}: missing after the CTC-only student's training; "
                        f"see {demo.out / 'logs' / 'student_ctc.log'}")
    return {"checkpoint": str(best), "run_dir": cfg.run.out_dir}


def student_stream(demo: Demo, outputs: dict) -> dict:
    """Distil the streaming student from the cache (plans with a student_stream.yaml), on one
    thread as the other students: a second thread gains a model this small little, and loses
    much on a machine that runs anything else."""
    import torch

    from asrkd.distill import Distiller

    try:
        return _fit(Distiller, demo.train_config(STREAMING_STAGE, threads=1, outputs=outputs), STREAMING_STAGE)
    finally:
        torch.set_num_threads(demo.threads)


def _fit(trainer_class, cfg, run: str) -> dict:
    best = trainer_class(cfg, resume=True).fit()
    if best is None:
        raise DemoError(f"{run}: training produced no checkpoint")
    return {"checkpoint": str(best), "run_dir": cfg.run.out_dir}


def export(demo: Demo, outputs: dict) -> dict:
    """The KD student to every format and precision of the plan, each artifact run in its runtime."""
    return _export(demo, outputs["student_kd"]["checkpoint"], "bundle", "export", demo.plan.export_options())


def stream_export(demo: Demo, outputs: dict) -> dict:
    """The streaming student as `STREAMING_ARTIFACT`, run chunk by chunk in its runtime on the test
    split (WER, agreement with the PyTorch streaming model) and gated like the export stage's."""
    from mobile_export.options import ExportOptions

    fmt, precision = STREAMING_ARTIFACT
    options = ExportOptions(formats=(fmt,), precisions=(precision,), rtf_repeats=0, cold_start=False,
                            max_wer_increase=demo.plan.export_options().max_wer_increase)
    return _export(demo, outputs[STREAMING_STAGE]["checkpoint"], "bundle_stream", "export_stream", options)


def _export(demo: Demo, checkpoint: str, folder: str, log_name: str, options) -> dict:
    """``mobile_export.export.export_bundle`` of ``checkpoint`` into ``OUT/<folder>``, verified on
    the test split, the converters' output in ``OUT/logs/<log_name>.log``."""
    from mobile_export.export import export_bundle

    bundle = demo.out / folder
    log_file = demo.out / "logs" / f"{log_name}.log"
    demo.log(f"  converter output: {log_file}")
    with _output_to(log_file) as show:
        report = export_bundle(checkpoint, bundle, demo.manifests["test"], options,
                               log=lambda m: show(demo.log, "  " + m))
    return {"bundle": str(bundle), "gate_passed": report["gate"]["passed"]}


def report(demo: Demo, outputs: dict) -> dict:
    """Measure the three models, then write report.json, REPORT.md and the plots."""
    from eval import plots

    export_report = json.loads((Path(outputs["export"]["bundle"]) / "report.json").read_text())
    models = {}
    teacher = outputs["teacher"]
    if demo.plan.teacher is not None:  # pretrained: no checkpoint, no training log
        models["teacher"] = _measured(demo, "teacher", teacher["path"], lambda d, _: _measure_whisper(d, teacher),
                                      weights_sha256=teacher["weights"])
    for name in ("teacher", "student_kd", "student_ctc"):
        if name in models:
            continue
        models[name] = _measured(demo, name, outputs[name]["checkpoint"])
        models[name]["run_dir"] = outputs[name]["run_dir"]
    if STREAMING_STAGE in outputs:
        bundle = Path(outputs["stream_export"]["bundle"])
        models[STREAMING_STAGE] = _measured(demo, STREAMING_STAGE, outputs[STREAMING_STAGE]["checkpoint"],
                                            lambda d, c: _measure_streaming(d, c, bundle))
        models[STREAMING_STAGE]["run_dir"] = outputs[STREAMING_STAGE]["run_dir"]
    demo_report = {
        "demo": {"plan": demo.plan.to_dict(), "out": str(demo.out),
                 "stage_seconds": {s.name: round(demo.stage_seconds.get(s.name, 0.0), 1)
                                   for s in pipeline(demo.plan)},
                 "data": outputs["data"]["splits"], "cache": outputs["cache"]["summary"],
                 # whether the CTC-only student trained beside the KD one (one thread each)
                 "parallel_students": outputs["student_kd"].get("parallel_ctc"),
                 "test_manifest": str(demo.manifests["test"]),
                 "real_manifest": str(demo.real_manifest) if demo.real_manifest else None},
        **models,
        "export": export_report,
    }
    plot_dir = demo.out / "plots"
    demo_report["plots"] = {k: str(v.relative_to(demo.out))
                            for k, v in plots.demo_plots(demo_report, plot_dir).items()}
    write_json(demo.out / "report.json", demo_report)
    atomic_write_text(demo.out / "REPORT.md", render_demo_markdown(demo_report))
    for line in summary_table(demo_report):
        demo.log(line)
    demo.log(f"report: {demo.out / 'REPORT.md'} (report.json, plots/*.png beside it)")
    return {"report": str(demo.out / "report.json")}


def _measured(demo: Demo, name: str, checkpoint: str, measure: Callable[[Demo, str], dict] | None = None,
              weights_sha256: str | None = None) -> dict:
    """``measure``'s figures (default `_measure_model`'s), kept in ``stages/measure_<name>.json`` and reused while the
    checkpoint's weights (``weights_sha256``, default: the sha256 of its weights file), the plan
    and the real manifest are unchanged. The report is rendered
    on every run; re-timing the models each time would let a rerun on a busy machine replace
    the figures of the run that trained them (and disagree with the export's own timings)."""
    from asrkd.checkpoint import MODEL_FILE, resolve_checkpoint

    if weights_sha256 is None:
        weights_sha256 = hashlib.sha256((resolve_checkpoint(checkpoint) / MODEL_FILE).read_bytes()).hexdigest()
    key = {"plan": demo.plan.fingerprint(), "weights_sha256": weights_sha256,
           "real_manifest": str(demo.real_manifest) if demo.real_manifest else None}
    path = demo.stage_file(f"measure_{name}")
    if path.is_file():
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("key") == key:
            demo.log(f"  {name}: measured earlier, reusing {path}")
            return record["figures"]
    demo.log(f"  measuring {name}")
    figures = (measure or _measure_model)(demo, checkpoint)
    write_json(path, {"key": key, "figures": figures})
    return figures


def _measure_model(demo: Demo, checkpoint: str) -> dict:
    """WER/CER on the test split (and the real manifest), params, FLOPs, one-thread RTF of
    PyTorch eager measured exactly as the export measures its reference (eval/rtf.py)."""
    import torch

    from asrkd.checkpoint import load_checkpoint, resolve_checkpoint
    from asrkd.contract import Contract
    from asrkd.data import read_manifest
    from asrkd.inference import evaluate
    from asrkd.models.conformer import count_parameters, flops_per_second
    from eval.rtf import measure
    from eval.runners import TorchRunner
    from mobile_export.export import read_eval_set
    from mobile_export.graph import ExportGraph

    loaded = load_checkpoint(resolve_checkpoint(checkpoint))
    options = demo.plan.export_options()

    def score(manifest):
        return evaluate(loaded.model, loaded.frontend, loaded.tokenizer, read_manifest(manifest))

    test = score(demo.manifests["test"])
    m = {"checkpoint": checkpoint, "params": count_parameters(loaded.model),
         "wer": test["wer"], "cer": test["cer"],
         "gflops_per_audio_second": flops_per_second(loaded.model_config) / 1e9}
    sample_rate = Contract.from_loaded(loaded).sample_rate
    pcms = read_eval_set(demo.manifests["test"], sample_rate, options.rtf_utterances).pcms
    graph = ExportGraph.from_loaded(loaded)
    threads_before = torch.get_num_threads()
    try:
        timing = measure(lambda: TorchRunner(loaded.path, 1, graph=graph), pcms, sample_rate,
                         repeats=max(1, options.rtf_repeats))
    finally:
        torch.set_num_threads(threads_before)
    m["rtf_1thread"] = timing.rtf
    if demo.real_manifest is not None:
        real = score(demo.real_manifest)
        m["wer_real"], m["cer_real"] = real["wer"], real["cer"]
    return m


def _measure_whisper(demo: Demo, teacher: dict) -> dict:
    """The Whisper teacher (the teacher stage's record) as `_measure_model` measures a checkpoint:
    WER/CER of its best hypothesis on the test split (and the real manifest) against the
    normalised text, its parameters, and its RTF on one thread (CTranslate2 or PyTorch) over the
    export's timing utterances; plus who it is (``identity``: name, source, licence) and ``spec``.
    No FLOPs: it decodes autoregressively, so they depend on the text."""
    import torch

    from asrkd.metrics import score
    from asrkd.teachers.ctranslate2_model import parameter_count
    from eval.rtf import measure
    from eval.runners import SequenceTeacherRunner
    from mobile_export.export import read_eval_set

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _load_whisper(teacher["spec"], threads=1)
        runner, rate = SequenceTeacherRunner(model), model.sample_rate

        def score_manifest(manifest) -> dict:
            data = read_eval_set(manifest, rate, None)
            return score(data.refs, [runner.run(p) for p in data.pcms], data.speakers, utt_ids=data.utt_ids)

        test = score_manifest(demo.manifests["test"])
        options = demo.plan.export_options()
        pcms = read_eval_set(demo.manifests["test"], rate, options.rtf_utterances).pcms
        timing = measure(lambda: runner, pcms, rate, repeats=max(1, options.rtf_repeats))
        real = score_manifest(demo.real_manifest) if demo.real_manifest is not None else None
    finally:
        torch.set_num_threads(threads_before)
    params = (sum(p.numel() for p in model.backend.model.parameters()) if model.backend.name == "hf"
              else parameter_count(model.path / "model.bin"))
    m = {"checkpoint": teacher["path"], "params": params, "wer": test["wer"], "cer": test["cer"],
         "gflops_per_audio_second": None, "rtf_1thread": timing.rtf, "spec": teacher["spec"],
         "identity": teacher["model"], "runtime": model.backend.name}
    if real is not None:
        m["wer_real"], m["cer_real"] = real["wer"], real["cer"]
    return m


def _measure_streaming(demo: Demo, checkpoint: str, bundle: Path) -> dict:
    """The streaming student on the test split: the PyTorch streaming model's WER/CER at its
    config's chunking (the export's reference: the text it emits while streaming), params, and
    the `STREAMING_ARTIFACT` of ``bundle`` (its export report entry) with its latency on one
    thread, audio arriving in real time (`eval.latency`), driven from the bundle's contract.json
    as an app would. If the artifact did not run, the latency is the PyTorch model's instead
    (``latency_of`` says which); ``rtf_1thread`` is the latency run's median RTF."""
    from asrkd.checkpoint import load_checkpoint, resolve_checkpoint
    from asrkd.models.conformer import count_parameters
    from eval.latency import checkpoint_latency, manifest_waves, measure_latency
    from eval.streaming_runners import open_stepper

    loaded = load_checkpoint(resolve_checkpoint(checkpoint))
    chunking = loaded.model.chunking(None, None)
    export = json.loads((bundle / "report.json").read_text(encoding="utf-8"))
    fmt, precision = STREAMING_ARTIFACT
    entry = next(a for a in export["artifacts"] if (a["format"], a["precision"]) == STREAMING_ARTIFACT)
    artifact = {k: entry.get(k) for k in ("format", "precision", "status", "reason", "wer", "cer", "agreement",
                                          "size_bytes")}
    if entry["status"] == "ok":
        stepper = open_stepper(bundle, fmt, precision, threads=1)
        rate = stepper.contract.sample_rate
        latency = measure_latency(stepper, manifest_waves(demo.manifests["test"], rate), rate)
        latency_of = f"{fmt} {precision}"
    else:
        latency = checkpoint_latency(checkpoint, demo.manifests["test"])
        latency_of = "pytorch"
    return {"checkpoint": checkpoint, "params": count_parameters(loaded.model),
            "wer": export["reference"]["wer"], "cer": export["reference"]["cer"],
            "chunk_size": chunking.chunk_size, "left_chunks": chunking.left_chunks, "artifact": artifact,
            "rtf_1thread": latency.rtf.median, "latency": latency.to_dict(), "latency_of": latency_of}


@contextlib.contextmanager
def _output_to(path: Path):
    """Send everything written to stdout and stderr, including by C++ converters writing to the
    file descriptors directly, to ``path``; yields ``show(log, message)``, which still reaches
    the terminal. Without real file descriptors (e.g. captured by a test), only flushes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        yield lambda log, message: log(message)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    with open(path, "ab") as f:
        for fd in fds:
            os.dup2(f.fileno(), fd)

        def show(log, message):
            sys.stdout.flush()
            if log is print:
                os.write(saved[0], (message + "\n").encode())
            else:
                log(message)

        try:
            yield show
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip(fds, saved):
                os.dup2(old, fd)
                os.close(old)


def _manifest_facts(path: Path) -> dict:
    from asrkd.data import read_manifest

    utts = read_manifest(path)
    return {"manifest": str(path), "utterances": len(utts),
            "audio_seconds": round(sum(u.duration for u in utts), 2),
            "voices": len({u.speaker for u in utts})}


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline."""

    name: str
    reads: tuple[str, ...]  # stages whose outputs it reads: when one of them runs again, so does it
    text: str  # what the log says it does
    run: Callable[[Demo, dict], dict]


PIPELINE: tuple[Stage, ...] = (
    Stage("data", (), "synthesizing spoken digits (espeak-ng), disjoint voices for train/dev/test", data),
    Stage("teacher", ("data",), "training the teacher with CTC", teacher),
    Stage("cache", ("teacher",), "caching the teacher's posteriors, N-best lists and hidden states", cache),
    Stage("student_kd", ("cache",), "distilling the default student from the cache (feature KD + CTC)",
          student_kd),
    Stage("student_ctc", ("data",), "training the same student with CTC only (the no-KD baseline)",
          student_ctc),
    Stage("export", ("student_kd",),
          "exporting the KD student to every format and precision, running each artifact", export),
    Stage("report", ("data", "teacher", "cache", "student_kd", "student_ctc", "export"),
          "measuring WER and speed, writing report.json, REPORT.md and plots", report),
)
STAGES = tuple(s.name for s in PIPELINE)
# With a pretrained Whisper teacher (`DemoPlan.teacher`), these replace the stages of the same name.
WHISPER: tuple[Stage, ...] = (
    Stage("teacher", ("data",), "loading the pretrained Whisper teacher (nothing to train)", whisper_teacher),
    Stage("cache", ("teacher",), "running Whisper over the training audio: N-best, confidence", whisper_cache),
    Stage("student_kd", ("cache",), "distilling the default student from Whisper without transcripts "
          "(pseudo-labels, N-best)", student_kd),
)
# Before the report, in a plan with a streaming student (`DemoPlan.streaming`).
STREAMING: tuple[Stage, ...] = (
    Stage(STREAMING_STAGE, ("cache",), "distilling the streaming student (student-stream, raw log-mel) "
          "from the cache", student_stream),
    Stage("stream_export", (STREAMING_STAGE,),
          "exporting the streaming student (int8 ONNX, chunk by chunk), running it on the test split",
          stream_export),
)


def pipeline(plan: DemoPlan) -> tuple[Stage, ...]:
    """The stages ``plan`` runs, in order: `PIPELINE`, with `STREAMING` before the report if it
    has a streaming student, and `WHISPER`'s stages in place of their namesakes if its teacher is
    Whisper."""
    stages = (*PIPELINE[:-1], *(STREAMING if plan.streaming else ()), PIPELINE[-1])
    if plan.teacher is None:
        return stages
    whisper = {s.name: s for s in WHISPER}
    return tuple(whisper.get(s.name, s) for s in stages)
