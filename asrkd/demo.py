"""``asrkd demo``: the whole pipeline on embedded data, in one resumable command.

    run_demo("runs/demo")                  # asrkd demo
    run_demo("runs/demo-quick", "quick")   # asrkd demo --quick

Stages, each recorded in ``OUT/stages/<stage>.json`` when it finishes (a rerun skips finished
stages and reuses their outputs; an interrupted stage resumes: trainings from their last
checkpoint, the cache from its finished shards, synthesis from the wavs already written;
``force`` redoes everything):

1. ``data``: spoken digit strings synthesized with espeak-ng (asrkd.synth), three disjoint voice
   sets for train, dev and test, so the test WER is on voices no model heard;
2. ``teacher``: the teacher preset trained with CTC;
3. ``cache``: the teacher's top-k posteriors, N-best lists and hidden states over the training
   set (asrkd.cache);
4. ``student_kd``: the default student distilled from the cache (feature KD + ground-truth CTC,
   the term that did best in the FSDD ablation, docs/DISTILLATION.md);
5. ``student_ctc``: the same student, data, augmentation, seed and steps with CTC only: the
   no-KD baseline;
6. ``export``: the KD student to Core ML, TFLite, ONNX and ExecuTorch at fp32, fp16 and int8, each
   artifact run in its own runtime on the test split (mobile_export.export);
7. ``report``: WER, CER and one-thread RTF of teacher and both students on the test split (and on
   ``real_manifest``, if given), ``report.json``, ``REPORT.md`` and PNG plots (eval/plots.py).
   It runs every time; each model's figures are measured once per set of weights and kept in
   ``stages/measure_<model>.json``, so a rerun on a busy machine does not replace the timings.

``report.json`` keeps ``{"teacher": M, "student_kd": M, "student_ctc": M, "export": <the export
report>}``, each ``M = {"checkpoint", "params", "wer", "cer", "rtf_1thread"}`` (+ ``"wer_real"``
and ``"cer_real"`` with a real-speech manifest).

Plans: ``default`` (about 25 minutes on 2 CPU cores) trains long enough for the teacher to be
clearly better than the student and for KD to show; ``quick`` (about 6 minutes) runs every
stage on a smaller corpus with shorter trainings and a lighter export, to show the pipeline and
its report rather than the best numbers; ``smoke`` is for tests (seconds of training).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asrkd.fileio import atomic_write_text, write_json
from eval.rtf import all_threads

STAGES = ("data", "teacher", "cache", "student_kd", "student_ctc", "export", "report")
# What each stage reads: a stage that runs again makes the stages that read it run again too.
DEPENDS = {"data": (), "teacher": ("data",), "cache": ("teacher",), "student_kd": ("cache",),
           "student_ctc": ("data",), "export": ("student_kd",), "report": STAGES[:-1]}
DEMO_FILE = "demo.json"


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and settings of one demo run (what ``--quick`` changes)."""

    name: str
    n_train: int
    n_dev: int
    n_test: int
    teacher_epochs: int
    student_epochs: int
    teacher_preset: str = "teacher"
    teacher_overrides: dict[str, Any] = field(default_factory=dict)
    student_preset: str = "student"
    teacher_lr: float = 1e-3
    student_lr: float = 1.5e-3
    warmup_steps: int = 150
    max_batch_seconds: float = 8.0  # small batches: more updates per CPU second on small corpora
    teacher_hidden_layers: tuple[int, ...] = (3, 7)
    layer_map: dict[int, int] = field(default_factory=lambda: {1: 3, 3: 7})
    kd_weights: dict[str, float] = field(default_factory=lambda: {"ctc": 1.0, "feature": 1.0})
    formats: tuple[str, ...] = ("coreml", "tflite", "onnx", "executorch")
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    windows: tuple[float, ...] = (2.0, 5.0, 10.0)
    rtf_repeats: int = 5
    rtf_utterances: int = 10
    cold_start: bool = True  # the export's fresh-process load-time / memory measurement
    max_wer_increase: float = 1.0  # WER points; the gate of the export stage
    seed: int = 0
    # Train the KD and the CTC-only student at the same time, one thread each (the CTC one in a
    # subprocess): small models use two cores better as two jobs than as one two-thread job.
    parallel_students: bool = True

    @classmethod
    def named(cls, name: str) -> DemoPlan:
        if name not in PLANS:
            raise DemoError(f"unknown demo plan {name!r}; choose one of {sorted(PLANS)}")
        return PLANS[name]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_map"] = {str(k): v for k, v in self.layer_map.items()}
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


PLANS: dict[str, DemoPlan] = {
    # About 25 minutes on 2 CPU cores: the 7.5 M-parameter teacher preset, every precision.
    "default": DemoPlan(name="default", n_train=800, n_dev=80, n_test=80, teacher_epochs=6,
                        student_epochs=8, warmup_steps=300, windows=(2.0, 5.0)),
    # About 7 minutes: a 4-layer, 144-wide teacher, shorter trainings, int8 artifacts only (ExecuTorch's
    # lowering alone takes about 1.5 minutes per precision), no cold-start measurement.
    "quick": DemoPlan(name="quick", n_train=300, n_dev=40, n_test=60, teacher_epochs=8, student_epochs=7,
                      teacher_overrides={"n_layers": 4, "d_model": 144}, teacher_hidden_layers=(1, 3),
                      warmup_steps=100,
                      layer_map={1: 1, 3: 3}, precisions=("int8",), windows=(5.0,),
                      rtf_repeats=3, rtf_utterances=5, cold_start=False),
    # For tests: every stage and code path, minutes of CPU at most, no meaningful WER.
    "smoke": DemoPlan(name="smoke", n_train=24, n_dev=6, n_test=6, teacher_epochs=1, student_epochs=1,
                      teacher_overrides={"n_layers": 2, "d_model": 96}, teacher_hidden_layers=(0, 1),
                      layer_map={1: 0, 3: 1}, warmup_steps=5, formats=("onnx",),
                      precisions=("fp32", "int8"), windows=(5.0,), rtf_repeats=0, rtf_utterances=2),
}


# ------------------------------------------------------------------------------------------------
class Demo:
    """One demo folder. ``run()`` does every unfinished stage and returns the report."""

    def __init__(self, out_dir: str | os.PathLike, plan: str | DemoPlan = "default", *,
                 real_manifest: str | os.PathLike | None = None, force: bool = False,
                 threads: int | None = None, log: Callable[[str], None] = print):
        self.out = Path(out_dir).resolve()  # absolute: configs and subprocesses see the same paths
        self.plan = plan if isinstance(plan, DemoPlan) else DemoPlan.named(plan)
        self.real_manifest = Path(real_manifest).resolve() if real_manifest else None
        if self.real_manifest is not None and not self.real_manifest.is_file():
            raise DemoError(f"--real-manifest {real_manifest}: file not found")
        self.force = force
        self.threads = threads or min(all_threads(), 8)  # cores this process may use
        self.log = log
        self.data_dir = self.out / "data"
        self.manifests = {s: self.data_dir / s / "manifest.jsonl" for s in ("train", "dev", "test")}
        self.stage_seconds: dict[str, float] = {}

    # -------------------------------------------------------------------------- bookkeeping
    def _stage_file(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def _done(self, stage: str) -> dict | None:
        path = self._stage_file(stage)
        if not path.is_file():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        return record if record.get("plan") == self.plan.fingerprint() else None

    def _prepare_folder(self) -> None:
        """Refuse to mix plans in one folder; ``force`` starts it afresh."""
        demo_file = self.out / DEMO_FILE
        if self.force and self.out.exists():
            self.log(f"--force: removing the previous demo in {self.out}")
            for name in ["data", "stages", "runs", "cache", "bundle", "plots", "logs", DEMO_FILE,
                         "report.json", "REPORT.md"]:
                p = self.out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        if demo_file.is_file():
            old = json.loads(demo_file.read_text(encoding="utf-8"))
            if old.get("fingerprint") != self.plan.fingerprint():
                raise DemoError(
                    f"{self.out} holds a demo made with the {old.get('plan', {}).get('name')!r} plan "
                    f"(or other settings), not {self.plan.name!r}: pass --force to redo it there, or "
                    "choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(demo_file, {"fingerprint": self.plan.fingerprint(), "plan": self.plan.to_dict()})

    def run(self) -> dict:
        import torch

        self._prepare_folder()
        torch.set_num_threads(self.threads)
        t_all = time.perf_counter()
        outputs: dict[str, dict] = {}
        redone: set[str] = set()
        for i, stage in enumerate(STAGES, 1):
            stale = stage == "report" or any(d in redone for d in DEPENDS[stage])
            record = None if stale else self._done(stage)
            if record is not None:
                self.log(f"[{i}/{len(STAGES)}] {stage}: done earlier ({record['seconds']:.0f} s), reusing "
                         f"{self.out / 'stages' / (stage + '.json')}")
                outputs[stage] = record["outputs"]
                self.stage_seconds[stage] = record["seconds"]
                continue
            self.log(f"[{i}/{len(STAGES)}] {stage}: {_STAGE_TEXT[stage]}")
            redone.add(stage)
            t0 = time.perf_counter()
            outputs[stage] = getattr(self, f"_stage_{stage}")(outputs)
            seconds = time.perf_counter() - t0
            self.stage_seconds[stage] = seconds
            self.log(f"[{i}/{len(STAGES)}] {stage}: finished in {seconds:.0f} s")
            if stage != "report":
                write_json(self._stage_file(stage), {"plan": self.plan.fingerprint(), "seconds": seconds,
                                                     "outputs": outputs[stage]})
        report = json.loads((self.out / "report.json").read_text(encoding="utf-8"))
        self.log(f"demo finished in {time.perf_counter() - t_all:.0f} s (this invocation)")
        return report

    # -------------------------------------------------------------------------- stages
    def _stage_data(self, _outputs) -> dict:
        from asrkd.data import check_manifest
        from asrkd.synth import synthesize_corpus
        from asrkd.text import CharTokenizer

        p = self.plan
        sizes = {"train": p.n_train, "dev": p.n_dev, "test": p.n_test}
        seeds = {"train": 1, "dev": 2, "test": 3}
        facts = {}
        for split, n in sizes.items():
            manifest = synthesize_corpus(task="digits", n=n, out_dir=self.data_dir / split,
                                         seed=seeds[split], voice_set=split)
            problems = check_manifest(manifest, tokenizer=CharTokenizer.default_english())
            if problems:
                first = problems[0]
                raise DemoError(f"{manifest}:{first.line}: {first.kind}: {first.message} "
                                f"({len(problems)} problem(s); `asrkd manifest check {manifest}`)")
            facts[split] = _manifest_facts(manifest)
            self.log(f"  {split}: {facts[split]['utterances']} utterances, "
                     f"{facts[split]['audio_seconds'] / 60:.1f} min, {facts[split]['voices']} voices")
        return {"manifests": {s: str(m) for s, m in self.manifests.items()}, "splits": facts}

    def _train_config(self, run: str, preset: str, overrides: dict, epochs: int, lr: float,
                      init_from: str | None = None, kd: dict | None = None, threads: int | None = None):
        from asrkd.config import TrainConfig

        p = self.plan
        d = {
            "data": {"train": [str(self.manifests["train"])], "dev": str(self.manifests["dev"]),
                     "max_batch_seconds": p.max_batch_seconds, "num_workers": 1},
            "model": {"preset": preset, "overrides": dict(overrides), "init_from": init_from},
            # Cached teacher posteriors were computed on the clean audio: speed perturbation
            # (which changes the length) is off for every run, so the KD and CTC-only students
            # see exactly the same data; noise and SpecAugment stay.
            "augment": {"speed_factors": [1.0], "noise_prob": 0.3},
            "optim": {"lr": lr, "warmup_steps": p.warmup_steps, "epochs": epochs},
            "run": {"out_dir": str(self.out / "runs" / run), "threads": threads or self.threads, "seed": p.seed,
                    "checkpoint_every": 100, "keep_last": 2},
        }
        if kd is not None:
            d["kd"] = kd
        return TrainConfig.from_dict(d, source=f"demo {run}")

    def _fit(self, trainer_class, cfg, run: str) -> dict:
        best = trainer_class(cfg, resume=True).fit()
        if best is None:
            raise DemoError(f"{run}: training produced no checkpoint")
        return {"checkpoint": str(best), "run_dir": cfg.run.out_dir}

    def _stage_teacher(self, _outputs) -> dict:
        from asrkd.train import Trainer

        p = self.plan
        cfg = self._train_config("teacher", p.teacher_preset, p.teacher_overrides, p.teacher_epochs,
                                 p.teacher_lr)
        return self._fit(Trainer, cfg, "teacher")

    def _stage_cache(self, outputs) -> dict:
        from asrkd.cache import StaleCacheError, build_cache
        from asrkd.teacher import load_teacher

        teacher = load_teacher(outputs["teacher"]["checkpoint"])

        def build(force: bool):
            return build_cache(teacher, [self.manifests["train"]], self.out / "cache",
                               hidden_layers=self.plan.teacher_hidden_layers, force=force)

        try:
            report = build(force=False)  # resumes an interrupted build
        except StaleCacheError as e:  # the teacher or the data were redone since
            self.log(f"  rebuilding the cache: {e}")
            report = build(force=True)
        self.log("  " + report.summary())
        return {"cache": str(self.out / "cache"), "summary": report.summary()}

    def _kd_section(self, outputs) -> dict:
        p = self.plan
        return {"cache": outputs["cache"]["cache"], "teacher": outputs["teacher"]["checkpoint"],
                "layer_map": dict(p.layer_map), "weights": dict(p.kd_weights)}

    def _ctc_config(self, threads: int | None = None):
        p = self.plan
        return self._train_config("student_ctc", p.student_preset, {}, p.student_epochs, p.student_lr,
                                  threads=threads)

    def _stage_student_kd(self, outputs) -> dict:
        import torch

        from asrkd.distill import Distiller

        p = self.plan
        parallel = p.parallel_students and self.threads > 1 and self._done("student_ctc") is None
        if parallel:
            self._start_ctc_subprocess()
        cfg = self._train_config("student_kd", p.student_preset, {}, p.student_epochs, p.student_lr,
                                 kd=self._kd_section(outputs), threads=1 if parallel else None)
        try:
            return self._fit(Distiller, cfg, "student_kd")
        finally:
            torch.set_num_threads(self.threads)

    def _start_ctc_subprocess(self) -> None:
        """`asrkd train` of the CTC-only student, one thread, in the background (its log in
        OUT/logs/student_ctc.log); the student_ctc stage waits for it."""
        import subprocess

        import yaml

        cfg = self._ctc_config(threads=1)
        cfg.run.progress = False
        config_path = self.out / "runs" / "student_ctc.yaml"
        atomic_write_text(config_path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        log_path = self.out / "logs" / "student_ctc.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"  training the CTC-only student alongside, one thread each (log: {log_path})")
        with open(log_path, "ab") as log:
            self._ctc_process = subprocess.Popen(
                [sys.executable, "-m", "asrkd.cli", "train", "--config", str(config_path), "--resume"],
                stdout=log, stderr=subprocess.STDOUT)

    def _stage_student_ctc(self, _outputs) -> dict:
        from asrkd.train import Trainer

        process = getattr(self, "_ctc_process", None)
        if process is None:
            return self._fit(Trainer, self._ctc_config(), "student_ctc")
        self._ctc_process = None
        if process.wait() != 0:
            raise DemoError(f"the CTC-only student's training failed (exit status {process.returncode}); "
                            f"see {self.out / 'logs' / 'student_ctc.log'}, then run the demo again to resume")
        cfg = self._ctc_config()
        best = Path(cfg.run.out_dir) / "checkpoints" / "best"
        if not best.is_dir():
            raise DemoError(f"{best}: missing after the CTC-only student's training; "
                            f"see {self.out / 'logs' / 'student_ctc.log'}")
        return {"checkpoint": str(best), "run_dir": cfg.run.out_dir}

    def _stage_export(self, outputs) -> dict:
        from mobile_export.export import ExportOptions, export_bundle

        p = self.plan
        options = ExportOptions(formats=p.formats, precisions=p.precisions, windows=p.windows,
                                max_wer_increase=p.max_wer_increase, rtf_repeats=p.rtf_repeats,
                                rtf_utterances=p.rtf_utterances, cold_start=p.cold_start)
        bundle = self.out / "bundle"
        log_file = self.out / "logs" / "export.log"
        self.log(f"  converter output: {log_file}")
        with _output_to(log_file) as show:
            report = export_bundle(outputs["student_kd"]["checkpoint"], bundle, self.manifests["test"],
                                   options, log=lambda m: show(self.log, "  " + m))
        return {"bundle": str(bundle), "gate_passed": report["gate"]["passed"]}

    def _stage_report(self, outputs) -> dict:
        from eval import plots

        export_report = json.loads((Path(outputs["export"]["bundle"]) / "report.json").read_text())
        models = {}
        for name in ("teacher", "student_kd", "student_ctc"):
            models[name] = self._measured(name, outputs[name]["checkpoint"])
            models[name]["run_dir"] = outputs[name]["run_dir"]
        report = {
            "demo": {"plan": self.plan.to_dict(), "out": str(self.out),
                     "stage_seconds": {s: round(self.stage_seconds.get(s, 0.0), 1) for s in STAGES},
                     "data": outputs["data"]["splits"], "cache": outputs["cache"]["summary"],
                     "test_manifest": str(self.manifests["test"]),
                     "real_manifest": str(self.real_manifest) if self.real_manifest else None},
            **models,
            "export": export_report,
        }
        plot_dir = self.out / "plots"
        report["plots"] = {k: str(v.relative_to(self.out)) for k, v in plots.demo_plots(report, plot_dir).items()}
        write_json(self.out / "report.json", report)
        atomic_write_text(self.out / "REPORT.md", render_demo_markdown(report))
        for line in summary_table(report):
            self.log(line)
        self.log(f"report: {self.out / 'REPORT.md'} (report.json, plots/*.png beside it)")
        return {"report": str(self.out / "report.json")}

    def _measured(self, name: str, checkpoint: str) -> dict:
        """`_measure_model`'s figures, kept in ``stages/measure_<name>.json`` and reused while the
        checkpoint's weights, the plan and the real manifest are unchanged. The report is rendered
        on every run; re-timing the models each time would let a rerun on a busy machine replace
        the figures of the run that trained them (and disagree with the export's own timings)."""
        from asrkd.checkpoint import MODEL_FILE, resolve_checkpoint

        weights = resolve_checkpoint(checkpoint) / MODEL_FILE
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        key = {"plan": self.plan.fingerprint(), "weights_sha256": digest,
               "real_manifest": str(self.real_manifest) if self.real_manifest else None}
        path = self._stage_file(f"measure_{name}")
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("key") == key:
                self.log(f"  {name}: measured earlier, reusing {path}")
                return record["figures"]
        self.log(f"  measuring {name}")
        figures = self._measure_model(checkpoint)
        write_json(path, {"key": key, "figures": figures})
        return figures

    def _measure_model(self, checkpoint: str) -> dict:
        """WER/CER on the test split (and the real manifest), params, FLOPs, one-thread RTF of
        PyTorch eager measured exactly as the export measures its reference (eval/rtf.py)."""
        import torch

        from asrkd.checkpoint import load_checkpoint, resolve_checkpoint
        from asrkd.data import read_manifest
        from asrkd.inference import evaluate
        from asrkd.models.conformer import count_parameters, flops_per_second
        from eval.rtf import measure
        from eval.runners import TorchRunner
        from mobile_export.export import read_eval_set
        from mobile_export.graph import ExportGraph

        loaded = load_checkpoint(resolve_checkpoint(checkpoint))

        def score(manifest):
            return evaluate(loaded.model, loaded.frontend, loaded.tokenizer, read_manifest(manifest))

        test = score(self.manifests["test"])
        m = {"checkpoint": checkpoint, "params": count_parameters(loaded.model),
             "wer": test["wer"], "cer": test["cer"],
             "gflops_per_audio_second": flops_per_second(loaded.model_config) / 1e9}
        sample_rate = loaded.frontend.config.sample_rate
        pcms = read_eval_set(self.manifests["test"], sample_rate, self.plan.rtf_utterances).pcms
        graph = ExportGraph.from_loaded(loaded)
        threads_before = torch.get_num_threads()
        try:
            timing = measure(lambda: TorchRunner(loaded.path, 1, graph=graph), pcms, sample_rate,
                             repeats=max(1, self.plan.rtf_repeats))
        finally:
            torch.set_num_threads(threads_before)
        m["rtf_1thread"] = timing.rtf
        if self.real_manifest is not None:
            real = score(self.real_manifest)
            m["wer_real"], m["cer_real"] = real["wer"], real["cer"]
        return m


_STAGE_TEXT = {
    "data": "synthesizing spoken digits (espeak-ng), disjoint voices for train/dev/test",
    "teacher": "training the teacher with CTC",
    "cache": "caching the teacher's posteriors, N-best lists and hidden states",
    "student_kd": "distilling the default student from the cache (feature KD + CTC)",
    "student_ctc": "training the same student with CTC only (the no-KD baseline)",
    "export": "exporting the KD student to every format and precision, running each artifact",
    "report": "measuring WER and speed, writing report.json, REPORT.md and plots",
}


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


# ------------------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _rtf(x) -> str:
    return "-" if x is None else f"{x:.4f}"


MODEL_LABELS = {"teacher": "teacher", "student_kd": "student + KD", "student_ctc": "student, CTC only"}


def summary_table(report: dict) -> list[str]:
    real = report["demo"].get("real_manifest") is not None
    head = f"{'model / artifact':<26} {'params':>8} {'WER %':>7} {'CER %':>7} {'RTF 1thr':>9} {'MB':>7}"
    lines = [head + (f" {'real WER %':>10}" if real else ""), "-" * (len(head) + (11 if real else 0))]
    for key, label in MODEL_LABELS.items():
        m = report[key]
        line = (f"{label:<26} {m['params'] / 1e6:>7.2f}M {_pct(m['wer']):>7} {_pct(m['cer']):>7} "
                f"{_rtf(m['rtf_1thread']):>9} {'':>7}")
        lines.append(line + (f" {_pct(m.get('wer_real')):>10}" if real else ""))
    for a in report["export"]["artifacts"]:
        size = "-" if a["size_bytes"] is None else f"{a['size_bytes'] / 1e6:.2f}"
        label = f"{a['format']} {a['precision']}" + ("" if a["status"] == "ok" else f" ({a['status']})")
        lines.append(f"{label:<26} {'':>8} {_pct(a['wer']):>7} {_pct(a['cer']):>7} "
                     f"{_rtf(a['rtf_1thread']):>9} {size:>7}")
    return lines


def render_demo_markdown(report: dict) -> str:
    d = report["demo"]
    plan = d["plan"]
    t, kd, ctc = report["teacher"], report["student_kd"], report["student_ctc"]
    real = d.get("real_manifest") is not None
    rel = (kd["wer"] / ctc["wer"]) if ctc["wer"] else None
    lines = [
        "# asrkd demo report",
        "",
        f"Plan `{plan['name']}`: {d['data']['train']['utterances']} synthetic training utterances "
        f"({d['data']['train']['audio_seconds'] / 60:.1f} min, {d['data']['train']['voices']} voices), "
        f"tested on {d['data']['test']['utterances']} utterances from {d['data']['test']['voices']} "
        "voices no model heard in training. RTF: compute seconds per audio second, PyTorch eager or "
        "the artifact's runtime, one thread, median of repeats. Lower is better everywhere.",
        "",
        "## Teacher vs students",
        "",
        "| model | params | GFLOPs / audio s | test WER % | test CER % | RTF (1 thread) |"
        + (" real-speech WER % |" if real else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if real else ""),
    ]
    for key, label in MODEL_LABELS.items():
        m = report[key]
        lines.append(f"| {label} | {m['params'] / 1e6:.2f} M | {m['gflops_per_audio_second']:.3f} | "
                     f"{_pct(m['wer'])} | {_pct(m['cer'])} | {_rtf(m['rtf_1thread'])} |"
                     + (f" {_pct(m.get('wer_real'))} |" if real else ""))
    lines += [
        "",
        f"The student has {t['params'] / kd['params']:.1f}x fewer parameters than the teacher and runs "
        f"{t['rtf_1thread'] / kd['rtf_1thread']:.1f}x faster. "
        + (f"Knowledge distillation changed its test WER from {_pct(ctc['wer'])} % (CTC only) to "
           f"{_pct(kd['wer'])} % ({rel:.2f}x), with the same data, augmentation and steps."
           if rel is not None else ""),
    ]
    if real:
        lines += ["", f"Real speech: `{d['real_manifest']}` (a different domain from the synthetic "
                  "training data; expect a higher WER)."]
    lines += ["", "![WER against RTF](plots/pareto.png)", "",
              "## Mobile artifacts (the KD student)", "",
              "| artifact | status | test WER % | agreement with PyTorch % | RTF 1 thread | RTF all threads | size MB | load s |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for a in report["export"]["artifacts"]:
        size = "-" if a["size_bytes"] is None else f"{a['size_bytes'] / 1e6:.2f}"
        load = "-" if a.get("load_seconds") is None else f"{a['load_seconds']:.2f}"
        reason = (a.get("reason") or "").removeprefix("not run: ")
        status = a["status"] + (f": {reason}" if a["status"] != "ok" and reason else "")
        lines.append(f"| {a['format']} {a['precision']} | {status} | {_pct(a['wer'])} | "
                     f"{_pct(a['agreement'])} | {_rtf(a['rtf_1thread'])} | {_rtf(a['rtf_all_threads'])} | "
                     f"{size} | {load} |")
    gate = report["export"]["gate"]
    lines += ["", f"Gate (each artifact within {gate['max_wer_increase']:g} WER point(s) of PyTorch): "
              f"{'passed' if gate['passed'] else 'FAILED: ' + str(gate.get('reason'))}. "
              "The bundle, ready for an app (artifacts, tokens.txt, contract.json, its own REPORT.md), "
              "is in `bundle/`.", "",
              "![artifact sizes](plots/sizes.png)", "",
              "## Training", "",
              "![training curves](plots/training.png)", "",
              "| stage | seconds |", "|---|---:|"]
    lines += [f"| {s} | {v:.0f} |" for s, v in d["stage_seconds"].items() if s != "report"]
    if plan.get("parallel_students"):
        lines += ["", "The CTC-only student trains in a second process during the student_kd stage (one "
                  "thread each); its own stage only waits for it to finish."]
    lines += ["", f"Posterior cache: {d['cache']}", ""]
    return "\n".join(lines)


def run_demo(out_dir: str | os.PathLike = "runs/demo", plan: str | DemoPlan = "default", **kwargs) -> dict:
    """The Python API of ``asrkd demo``; returns the report (also in ``OUT/report.json``)."""
    return Demo(out_dir, plan, **kwargs).run()
