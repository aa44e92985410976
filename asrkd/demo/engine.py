"""The demo's stage engine: one folder, its stage records, and the loop that runs what is unfinished."""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from asrkd.config import TrainConfig
from asrkd.demo.plan import DemoError, DemoPlan
from asrkd.demo.stages import pipeline
from asrkd.fileio import write_json
from eval.rtf import all_threads

DEMO_FILE = "demo.json"
# What --force deletes: everything the stages write into the folder.
_OUTPUTS = ("data", "stages", "runs", "cache", "bundle", "bundle_stream", "plots", "logs", DEMO_FILE,
            "report.json", "REPORT.md")


class Demo:
    """One demo folder. ``run()`` does every unfinished stage and returns the report."""

    def __init__(self, out_dir: str | os.PathLike, plan: str | DemoPlan = "default", *,
                 real_manifest: str | os.PathLike | None = None, force: bool = False,
                 threads: int | None = None, teacher: str | None = None, log: Callable[[str], None] = print):
        """``teacher``: None for the plan's own teacher (trained by the demo), or ``whisper`` /
        ``whisper:DIR`` for a pretrained Whisper teacher (`DemoPlan.with_whisper`)."""
        self.out = Path(out_dir).resolve()  # absolute: configs and subprocesses see the same paths
        self.plan = plan if isinstance(plan, DemoPlan) else DemoPlan.named(plan)
        if teacher is not None:
            self.plan = self.plan.with_whisper(teacher)
        self.real_manifest = Path(real_manifest).resolve() if real_manifest else None
        if self.real_manifest is not None and not self.real_manifest.is_file():
            raise DemoError(f"--real-manifest {real_manifest}: file not found")
        self.force = force
        self.threads = threads or min(all_threads(), 8)  # cores this process may use
        self.log = log
        self.data_dir = self.out / "data"
        self.manifests = {s: self.data_dir / s / "manifest.jsonl" for s in ("train", "dev", "test")}
        self.stage_seconds: dict[str, float] = {}
        self.ctc_process = None  # the CTC-only student's training, when it runs beside the KD one

    def train_config(self, stage: str, threads: int | None = None, outputs: dict | None = None) -> TrainConfig:
        """The plan's config of a training stage with this folder's paths (`plan.PLACED_FIELDS`):
        the split manifests, ``runs/<stage>``, ``threads`` (default: the demo's) and, given the
        earlier stages' ``outputs``, the teacher and cache that the KD student reads. With a
        Whisper teacher a KD student trains on the text-free copy of the training manifest and
        with the vocabulary that the cache stage wrote: it learns from Whisper alone."""
        cfg = copy.deepcopy(self.plan.stages[stage])
        cfg.data.train = [str(self.manifests["train"])]
        cfg.data.dev = str(self.manifests["dev"])
        cfg.run.out_dir = str(self.out / "runs" / stage)
        cfg.run.threads = threads or self.threads
        if outputs is not None:
            cfg.kd.cache = outputs["cache"]["cache"]
            if self.plan.teacher is None:
                cfg.kd.teacher = outputs["teacher"]["checkpoint"]
            else:
                cfg.kd.teacher = outputs["teacher"]["spec"]
                cfg.data.train = [outputs["cache"]["unlabelled_train"]]
                cfg.data.tokens = outputs["cache"]["tokens"]
        return cfg

    # -------------------------------------------------------------------------- bookkeeping
    def stage_file(self, stage: str) -> Path:
        """Where a finished stage's record (or a model's measurement) is kept."""
        return self.out / "stages" / f"{stage}.json"

    def done(self, stage: str) -> dict | None:
        """The record of ``stage`` if it finished with this plan, else None."""
        path = self.stage_file(stage)
        if not path.is_file():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        return record if record.get("plan") == self.plan.fingerprint() else None

    def _prepare_folder(self) -> None:
        """Refuse to mix plans in one folder; ``force`` starts it afresh."""
        demo_file = self.out / DEMO_FILE
        if self.force and self.out.exists():
            self.log(f"--force: removing the previous demo in {self.out}")
            for name in _OUTPUTS:
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
        """Run every stage that has not finished with this plan (and those that read one that
        runs again); returns the report (``OUT/report.json``)."""
        import torch

        self._prepare_folder()
        torch.set_num_threads(self.threads)
        t_all = time.perf_counter()
        outputs: dict[str, dict] = {}
        redone: set[str] = set()
        stages = pipeline(self.plan)
        for i, stage in enumerate(stages, 1):
            name = stage.name
            stale = name == "report" or any(d in redone for d in stage.reads)
            record = None if stale else self.done(name)
            if record is not None:
                self.log(f"[{i}/{len(stages)}] {name}: done earlier ({record['seconds']:.0f} s), reusing "
                         f"{self.stage_file(name)}")
                outputs[name] = record["outputs"]
                self.stage_seconds[name] = record["seconds"]
                continue
            self.log(f"[{i}/{len(stages)}] {name}: {stage.text}")
            redone.add(name)
            t0 = time.perf_counter()
            outputs[name] = stage.run(self, outputs)
            seconds = time.perf_counter() - t0
            self.stage_seconds[name] = seconds
            self.log(f"[{i}/{len(stages)}] {name}: finished in {seconds:.0f} s")
            if name != "report":
                write_json(self.stage_file(name), {"plan": self.plan.fingerprint(), "seconds": seconds,
                                                   "outputs": outputs[name]})
        report = json.loads((self.out / "report.json").read_text(encoding="utf-8"))
        self.log(f"demo finished in {time.perf_counter() - t_all:.0f} s (this invocation)")
        return report


def run_demo(out_dir: str | os.PathLike = "runs/demo", plan: str | DemoPlan = "default", **kwargs) -> dict:
    """The Python API of ``asrkd demo``; returns the report (also in ``OUT/report.json``)."""
    return Demo(out_dir, plan, **kwargs).run()
