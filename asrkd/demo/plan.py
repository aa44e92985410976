"""A demo plan: one folder of ``recipes/demo/`` read into the configs the demo runs.

    recipes/demo/teacher.yaml, student_ctc.yaml, student_kd.yaml   what every plan shares
    recipes/demo/<plan>/teacher.yaml, student_ctc.yaml, student_kd.yaml
                                      the plan's stages: ``base: ../<stage>.yaml`` plus its sizes
                                      and schedule (``asrkd train --config`` replays one)
    recipes/demo/<plan>/student_stream.yaml
                                      optional: a streaming student too (`STREAMING_STAGE`)
    recipes/demo/<plan>/plan.yaml     the synthetic corpus and the export settings
    recipes/demo/whisper/<plan>/student_kd.yaml, student_stream.yaml
                                      with a Whisper teacher (`DemoPlan.with_whisper`): the KD
                                      students learn from Whisper without transcripts; their
                                      ``kd.teacher`` gives the Whisper teacher's options

The stage files are `TrainConfig` files like any other. Their paths name the plan's default
folder (``runs/demo-quick/...``) so that ``asrkd train`` can replay a stage; the demo puts its
own folder there instead (`PLACED_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from asrkd.config import ConfigError, TrainConfig
from asrkd.errors import AsrkdError

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "demo"
# The per-plan overlays of a demo whose teacher is Whisper (`DemoPlan.with_whisper`).
WHISPER_RECIPES = RECIPES / "whisper"
TRAINING_STAGES = ("teacher", "student_kd", "student_ctc")
# A plan with this stage file also distils a streaming student and reports its latency.
STREAMING_STAGE = "student_stream"
# The stages that learn from the teacher's cache (those a Whisper overlay replaces).
KD_STAGES = ("student_kd", STREAMING_STAGE)
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
    # None: the plan's own teacher, trained by the demo (stage file teacher.yaml). Else the spec of
    # a pretrained Whisper teacher (`asrkd.teachers.load_teacher`) that the demo runs, not trains.
    teacher: str | None = None

    @classmethod
    def named(cls, name: str, teacher: str | None = None) -> DemoPlan:
        """The plan in ``recipes/demo/<name>/`` (``default``, ``quick``, ``smoke``); with ``teacher``
        (``whisper`` or ``whisper:DIR``) its Whisper variant (`with_whisper`)."""
        known = sorted(p.parent.name for p in RECIPES.glob("*/plan.yaml"))
        if name not in known:
            if not known:
                raise DemoError(f"{RECIPES}: no demo plans there; the demo reads its plans from the "
                                "recipes/demo/ folder of a source checkout (pip install -e .)")
            raise DemoError(f"unknown demo plan {name!r}; choose one of {known}")
        plan = cls.from_folder(RECIPES / name)
        return plan if teacher is None else plan.with_whisper(teacher)

    def with_whisper(self, teacher: str) -> DemoPlan:
        """This plan with a pretrained Whisper teacher instead of the one it trains.

        ``teacher``: ``whisper`` (the bundled tiny.en of ``asrkd[whisper]``) or ``whisper:DIR`` (a
        CTranslate2 or Hugging Face Whisper folder). The plan loses its ``teacher`` stage file; its KD
        students are read from ``recipes/demo/whisper/<plan>/<stage>.yaml`` instead: the same
        students learning without transcripts (pseudo-labels, N-best). The options
        of the Whisper teacher are those the overlays' ``kd.teacher`` gives (all the same), with
        ``DIR`` put in; a missing extra or model is a `DemoError` now, before any stage runs.
        """
        folder = _whisper_folder(teacher)
        overlays = WHISPER_RECIPES / self.name
        stages = {s: cfg for s, cfg in self.stages.items() if s != "teacher"}
        specs = {}
        for stage in (s for s in KD_STAGES if s in stages):
            path = overlays / f"{stage}.yaml"
            if not path.is_file():
                raise DemoError(f"{path}: not found; the {self.name!r} plan has no Whisper variant "
                                f"(recipes/demo/whisper/ has {sorted(p.name for p in WHISPER_RECIPES.glob('*/'))})")
            try:
                stages[stage] = TrainConfig.from_yaml(path)
            except ConfigError as e:
                raise DemoError(str(e)) from None
            specs[path] = stages[stage].kd.teacher or ""
        head, _, options = next(iter(specs.values())).partition("?")
        if head != "whisper" or len(set(specs.values())) != 1:
            raise DemoError(f"{', '.join(map(str, specs))}: kd.teacher must be the same 'whisper?<options>' "
                            f"in each, got {sorted(set(specs.values()))}")
        spec = f"whisper:{folder}" if folder else "whisper"
        spec += f"?{options}" if options else ""
        return dataclasses.replace(self, stages=stages, teacher=spec)

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
        students = [s for s in KD_STAGES if s in self.stages]
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

    @property
    def placed_fields(self) -> tuple[tuple[str, str], ...]:
        """`PLACED_FIELDS`, plus ``data.tokens`` with a Whisper teacher: the KD students' vocabulary,
        a file the cache stage writes into the folder (their training lines have no text to read
        it from)."""
        return PLACED_FIELDS + ((("data", "tokens"),) if self.teacher is not None else ())

    def to_dict(self) -> dict:
        """The plan as plain data (``report.json``'s ``demo.plan``), without `placed_fields`; with a
        Whisper teacher, its spec as ``teacher``."""
        stages = {}
        for stage, cfg in self.stages.items():
            d = cfg.to_dict()  # a deep copy (dataclasses.asdict)
            for section, key in self.placed_fields:
                d[section].pop(key)
            d["kd"]["layer_map"] = {str(k): v for k, v in d["kd"]["layer_map"].items()}
            stages[stage] = d
        out = {"name": self.name, "task": self.task,
               "synth": {s: dataclasses.asdict(v) for s, v in self.synth.items()},
               "stages": stages, "export": self.export, "parallel_students": self.parallel_students}
        if self.teacher is not None:  # absent for the plan's own teacher: its fingerprint predates the option
            out["teacher"] = self.teacher
        return out

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


def _whisper_folder(teacher: str) -> Path | None:
    """The folder of ``--teacher whisper[:DIR]`` (None: the bundled tiny.en), checked: the model is
    there and the package that runs it is installed. Errors are one line, naming the fix."""
    from asrkd.teachers.whisper import WHISPER_INSTALL_HINT, bundled_whisper_path, whisper_backend

    head, sep, folder = teacher.partition(":")
    if head != "whisper" or "?" in teacher or (sep and not folder):
        raise DemoError(f"--teacher {teacher}: give 'whisper' (the bundled Whisper tiny.en) or 'whisper:DIR' (a "
                        "CTranslate2 or Hugging Face Whisper folder); the demo sets the decoding options "
                        f"({WHISPER_RECIPES}/<plan>/student_kd.yaml, kd.teacher)")
    try:
        path = Path(folder).resolve() if folder else bundled_whisper_path()
    except ImportError:
        raise DemoError(f"--teacher {teacher}: the bundled Whisper tiny.en is not installed: "
                        f"{WHISPER_INSTALL_HINT}") from None
    backend = whisper_backend(path)
    if backend is None:
        raise DemoError(f"--teacher {teacher}: {path} is not a Whisper model folder (a CTranslate2 one has "
                        "model.bin, a Hugging Face one a config.json with model_type 'whisper')")
    module, hint = (("faster_whisper", WHISPER_INSTALL_HINT) if backend == "ct2"
                    else ("transformers", "pip install 'asrkd[hf]'"))
    try:
        importlib.import_module(module)
    except ImportError:
        raise DemoError(f"--teacher {teacher}: running {path} needs {module}: {hint}") from None
    return path if folder else None
