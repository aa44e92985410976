"""A demo plan: one folder of ``recipes/demo/`` read into the configs the demo runs.

    recipes/demo/teacher.yaml, student_ctc.yaml, student_kd.yaml   what every plan shares
    recipes/demo/<plan>/teacher.yaml, student_ctc.yaml, student_kd.yaml
                                      the plan's stages: ``base: ../<stage>.yaml`` plus its sizes
                                      and schedule (``asrkd train --config`` replays one)
    recipes/demo/<plan>/student_stream.yaml
                                      optional: a streaming student too (`STREAMING_STAGE`)
    recipes/demo/<plan>/plan.yaml     the synthetic corpus and the export settings

The stage files are `TrainConfig` files like any other. Their paths name the plan's default
folder (``runs/demo-quick/...``) so that ``asrkd train`` can replay a stage; the demo puts its
own folder there instead (`PLACED_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from asrkd.config import ConfigError, TrainConfig
from asrkd.errors import AsrkdError

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "demo"
TRAINING_STAGES = ("teacher", "student_kd", "student_ctc")
# A plan with this stage file also distils a streaming student and reports its latency.
STREAMING_STAGE = "student_stream"
SPLITS = ("train", "dev", "test")
# Fields the demo sets for the folder it runs in (and the cores it has), whatever a stage file
# says: they are left out of the plan's fingerprint, which must not depend on where the folder is.
PLACED_FIELDS = (("data", "train"), ("data", "dev"), ("run", "out_dir"), ("run", "threads"),
                 ("kd", "cache"), ("kd", "teacher"))
_PLAN_KEYS = ("synth", "export", "parallel_students")


class DemoError(AsrkdError, RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class SynthSplit:
    """One split of the synthetic corpus: ``asrkd synth --task TASK --n N --seed SEED --voice-set SPLIT``."""

    n: int
    seed: int


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and settings of one demo run, read from ``recipes/demo/<name>/`` (`from_folder`).

    ``stages`` holds the `TrainConfig` of each training stage as its file states it (`STREAMING_STAGE`
    too if the folder has its file: `streaming`); the demo copies it and sets `PLACED_FIELDS` for
    its folder (`Demo.train_config`). ``export`` holds the keyword arguments of
    ``mobile_export.export.ExportOptions``.
    """

    name: str
    task: str
    synth: dict[str, SynthSplit]
    stages: dict[str, TrainConfig]
    export: dict
    # Train the KD and the CTC-only student at the same time, one thread each (the CTC one in a
    # subprocess): small models use two cores better as two jobs than as one two-thread job.
    parallel_students: bool = True
    folder: Path | None = None  # where it was read from (named in errors)

    @classmethod
    def named(cls, name: str) -> DemoPlan:
        """The plan in ``recipes/demo/<name>/`` (``default``, ``quick``, ``smoke``)."""
        known = sorted(p.parent.name for p in RECIPES.glob("*/plan.yaml"))
        if name not in known:
            if not known:
                raise DemoError(f"{RECIPES}: no demo plans there; the demo reads its plans from the "
                                "recipes/demo/ folder of a source checkout (pip install -e .)")
            raise DemoError(f"unknown demo plan {name!r}; choose one of {known}")
        return cls.from_folder(RECIPES / name)

    @classmethod
    def from_folder(cls, folder: str | Path) -> DemoPlan:
        """Read ``folder/plan.yaml`` and ``folder/<stage>.yaml`` for each of `TRAINING_STAGES`."""
        folder = Path(folder)
        path = folder / "plan.yaml"
        if not path.is_file():
            raise DemoError(f"{path}: not found; a demo plan folder holds plan.yaml and "
                            f"{', '.join(s + '.yaml' for s in TRAINING_STAGES)}")
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict) or sorted(raw) != sorted(_PLAN_KEYS):
            keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise DemoError(f"{path}: expected the keys {list(_PLAN_KEYS)}, got {keys}")
        stages = {}
        optional = [STREAMING_STAGE] if (folder / f"{STREAMING_STAGE}.yaml").is_file() else []
        for stage in (*TRAINING_STAGES, *optional):
            try:
                stages[stage] = TrainConfig.from_yaml(folder / f"{stage}.yaml")
            except ConfigError as e:
                raise DemoError(str(e)) from None
        if not isinstance(raw["export"], dict):
            raise DemoError(f"{path}: export must be a mapping of ExportOptions keys")
        if not isinstance(raw["parallel_students"], bool):
            raise DemoError(f"{path}: parallel_students must be true or false")
        plan = cls(name=folder.name, task=_task(raw["synth"], path), synth=_synth(raw["synth"], path),
                   stages=stages, export=raw["export"], parallel_students=raw["parallel_students"],
                   folder=folder)
        plan.export_options()  # a bad export setting is an error now, not after the trainings
        return plan

    @property
    def streaming(self) -> bool:
        """Whether the plan distils a streaming student (its folder has `STREAMING_STAGE`'s file)."""
        return STREAMING_STAGE in self.stages

    @property
    def cache_layers(self) -> tuple[int, ...]:
        """The teacher layers the cache keeps: those the KD students' ``kd.layer_map`` read."""
        students = [s for s in ("student_kd", STREAMING_STAGE) if s in self.stages]
        return tuple(sorted({layer for s in students for layer in self.stages[s].kd.layer_map.values()}))

    def export_options(self):
        """``mobile_export.export.ExportOptions`` of the export stage."""
        from mobile_export.export import ExportError, ExportOptions

        where = self.folder / "plan.yaml" if self.folder else f"plan {self.name!r}"
        known = {f.name for f in dataclasses.fields(ExportOptions)}
        unknown = sorted(set(self.export) - known)
        if unknown:
            raise DemoError(f"{where}: export: unknown key(s) {unknown}; known keys: {sorted(known)}")
        try:
            return ExportOptions(**self.export)
        except (ExportError, TypeError, ValueError) as e:
            raise DemoError(f"{where}: export: {e}") from None

    def to_dict(self) -> dict:
        """The plan as plain data (``report.json``'s ``demo.plan``), without `PLACED_FIELDS`."""
        stages = {}
        for stage, cfg in self.stages.items():
            d = cfg.to_dict()  # a deep copy (dataclasses.asdict)
            for section, key in PLACED_FIELDS:
                d[section].pop(key)
            d["kd"]["layer_map"] = {str(k): v for k, v in d["kd"]["layer_map"].items()}
            stages[stage] = d
        return {"name": self.name, "task": self.task,
                "synth": {s: dataclasses.asdict(v) for s, v in self.synth.items()},
                "stages": stages, "export": self.export, "parallel_students": self.parallel_students}

    def fingerprint(self) -> str:
        """Changes with any setting of the plan: a folder made with another one is not reused."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _task(synth, path: Path) -> str:
    task = synth.get("task") if isinstance(synth, dict) else None
    if not isinstance(task, str):
        raise DemoError(f"{path}: synth.task must name an `asrkd synth --task`, e.g. digits")
    return task


def _synth(synth: dict, path: Path) -> dict[str, SynthSplit]:
    splits = {k: v for k, v in synth.items() if k != "task"}
    if sorted(splits) != sorted(SPLITS):
        raise DemoError(f"{path}: synth must have task and the splits {list(SPLITS)}, got {sorted(synth)}")
    out = {}
    for split in SPLITS:
        spec = splits[split]
        if not (isinstance(spec, dict) and sorted(spec) == ["n", "seed"]
                and all(isinstance(v, int) and not isinstance(v, bool) for v in spec.values())
                and spec["n"] >= 1):
            raise DemoError(f"{path}: synth.{split} must be {{n: <utterances, >= 1>, seed: <integer>}}, "
                            f"got {spec!r}")
        out[split] = SynthSplit(**spec)
    return out
