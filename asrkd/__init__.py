"""asrkd: distil a large ASR teacher into a compact Conformer-CTC student and ship it to phones.

The public API, one import away (names load on first use, so ``import asrkd`` stays cheap)::

    import asrkd

    best = asrkd.train_model("recipes/quickstart/student.yaml")       # YAML config -> best checkpoint
    model = asrkd.load_checkpoint(best)                              # front end + model + tokenizer
    print(asrkd.transcribe(best, ["some.wav"])[0].text)
    report = asrkd.export(best, "bundle/", eval_manifest="test.jsonl")  # artifacts + verification

The parts compose without YAML too: ``asrkd.ConformerCTC``, ``asrkd.LogMel``, a loss
(``asrkd.CTCLoss``, ``asrkd.KDLoss`` with a target source: ``CachedTargets``, ``OnlineTargets``,
``InMemoryTargets``) and ``asrkd.TrainingLoop``; ``asrkd.build_training`` maps a YAML config to
those parts, and ``asrkd.Contract`` says what a checkpoint expects (README "Python API"). Layering: ``asrkd`` (core) <- ``eval`` (measures)
<- ``mobile_export`` (artifacts); `export` is this facade's one lazy reach into mobile_export.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved by __getattr__ on first use.
_LAZY = {
    # the audio/model contract
    "Contract": "asrkd.contract",
    "SAMPLE_RATE": "asrkd.contract",
    "BLANK_ID": "asrkd.contract",
    # audio, text, data
    "load_audio": "asrkd.audio",
    "FrontendConfig": "asrkd.features",
    "LogMel": "asrkd.features",
    "CharTokenizer": "asrkd.text",
    "load_tokenizer": "asrkd.text",
    "Utterance": "asrkd.data",
    "read_manifest": "asrkd.data",
    "check_manifest": "asrkd.data",
    # models and checkpoints
    "ConformerCTC": "asrkd.models.conformer",
    "ConformerConfig": "asrkd.models.conformer",
    "build_preset": "asrkd.models.conformer",
    "load_checkpoint": "asrkd.checkpoint",
    # teachers, cache, losses, training
    "load_teacher": "asrkd.teacher",
    "WhisperTeacher": "asrkd.teachers",
    "PosteriorCache": "asrkd.cache",
    "CacheSet": "asrkd.cache",
    "open_cache": "asrkd.cache",
    "build_cache": "asrkd.cache",
    "CachedTargets": "asrkd.teacher_targets",
    "OnlineTargets": "asrkd.teacher_targets",
    "InMemoryTargets": "asrkd.teacher_targets",
    "CTCLoss": "asrkd.losses",
    "KDLoss": "asrkd.kd",
    "TrainingLoop": "asrkd.loop",
    "DevSet": "asrkd.loop",
    "TrainConfig": "asrkd.config",
    "build_training": "asrkd.builder",
    "Trainer": "asrkd.train",
    "Distiller": "asrkd.distill",
    # inference
    "Transcriber": "asrkd.inference",
    "evaluate_checkpoint": "asrkd.inference",
    "StreamingTranscriber": "asrkd.streaming",
    # errors
    "AsrkdError": "asrkd.errors",
}

__all__ = sorted([*_LAZY, "__version__", "train_model", "distill_model", "transcribe", "export"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asrkd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


def _config(config: Any):
    from asrkd.config import TrainConfig

    return config if isinstance(config, TrainConfig) else TrainConfig.from_yaml(config)


def train_model(config: Any, resume: bool = False) -> Path | None:
    """Train a Conformer-CTC model (CTC only) from a YAML path or a ``TrainConfig``, as
    ``asrkd train --config``; returns the best checkpoint (None on ranks other than 0)."""
    from asrkd.train import Trainer

    return Trainer(_config(config), resume=resume).fit()


def distill_model(config: Any, resume: bool = False, teacher: Any = None) -> Path | None:
    """Distil a student from a YAML path or a ``TrainConfig`` with a ``kd:`` section, as
    ``asrkd distill --config``; ``teacher``: an already built teacher for online KD."""
    from asrkd.distill import Distiller

    return Distiller(_config(config), resume=resume, teacher=teacher).fit()


def transcribe(checkpoint: str | os.PathLike, audio: Sequence[str | os.PathLike], beam: int = 1) -> list:
    """Transcribe audio files with a checkpoint: one ``asrkd.inference.Hypothesis`` (text,
    confidence) per file, as ``asrkd transcribe``."""
    from asrkd.inference import Transcriber

    return Transcriber.from_checkpoint(checkpoint, beam=beam).transcribe_files(audio)


def export(model: Any, out_dir: str | os.PathLike, eval_manifest: str | os.PathLike, **options: Any):
    """Export a model to mobile artifacts, verify each in its own runtime on ``eval_manifest`` and
    write an app-ready bundle, as ``asrkd export``. ``model``: a checkpoint (or run) folder, a
    ``LoadedModel`` or a ``(frontend, model, tokenizer)`` tuple; ``options``: fields of
    ``mobile_export.ExportOptions``. Returns the typed ``ExportReport`` (``.to_dict()`` is
    ``report.json``)."""
    from mobile_export.export import ExportOptions, export_model

    return export_model(model, out_dir, eval_manifest, ExportOptions(**options))
