"""Checkpoint format: the single source of truth for what a trained model is.

A checkpoint is a folder::

    step-000400/
        model.safetensors    weights only (no pickle)
        config.json          {"format": "asrkd-checkpoint", "version": 1, "model": ConformerConfig,
                              "frontend": FrontendConfig, "tokenizer": tokenizer dict,
                              "step", "epoch", "metrics", "train_config"}
        trainer_state.pt     optimizer, scheduler, sampler position, RNG states; read with
                             torch.load(weights_only=True), so a user file can never run code
        checksums.json       size and sha256 of model.safetensors and trainer_state.pt, verified
                             when they are loaded (config.json is text a person may edit; it
                             is checked field by field instead)

A run folder's ``checkpoints/`` holds the last ``step-NNNNNNN`` ones (resumable), ``best`` (the
lowest dev WER), with ``run.keep_epochs`` the weights at each epoch's end (``epoch-NNN``, no
trainer state), and ``avg``, the average of several of those (`average_checkpoints`; icefall's
``--avg``, WeNet's ``average_model.py``). A run folder stands for ``avg`` if it has one, else for
``best`` (`resolve_checkpoint`).

Exporters and evaluators read ``model``, ``frontend`` and ``tokenizer`` from ``config.json``
and never restate numbers. Folders are written under a temporary name and renamed into place, so
a killed run never leaves a half-written checkpoint behind; a file damaged later (a copy cut
short, a disk fault) is a `CheckpointError` naming it. Checkpoints written before
``checksums.json`` existed load unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from asrkd import __version__
from asrkd.config import AVERAGE_BY
from asrkd.contract import Contract
from asrkd.errors import AsrkdError
from asrkd.features import FrontendConfig, LogMel
from asrkd.models.conformer import ConformerConfig, ConformerCTC
from asrkd.text import load_tokenizer

FORMAT = "asrkd-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "trainer_state.pt"
CHECKSUM_FILE = "checksums.json"
EPOCH_PREFIX = "epoch-"
AVERAGE_NAME = "avg"


class CheckpointError(AsrkdError, ValueError):
    """A checkpoint folder is missing, incomplete or of an unknown format."""


@dataclass
class LoadedModel:
    """Everything needed to run a checkpoint: front end, acoustic model, tokenizer.

    ``frontend(wavs [B, N], wav_lens [B])`` -> feats ``[B, T, n_mels]``; ``model(feats,
    feat_lens)`` -> log-probs ``[B, T', vocab_size]``; ``contract`` states what they expect and
    give (sample rate, frame shifts, blank id).
    """

    path: Path
    frontend: LogMel
    model: ConformerCTC
    tokenizer: Any
    config: dict = field(default_factory=dict)

    @property
    def model_config(self) -> ConformerConfig:
        """The acoustic model's shape."""
        return self.model.config

    @property
    def frontend_config(self) -> FrontendConfig:
        """The front end's settings (sample rate, hop, mel bands)."""
        return self.frontend.config

    @property
    def contract(self) -> Contract:
        """The checkpoint's audio/frame/vocabulary contract (`Contract.from_loaded`)."""
        return Contract.from_loaded(self)


def save_checkpoint(
    path: str | Path,
    model: ConformerCTC,
    frontend_config: FrontendConfig,
    tokenizer: Any,
    *,
    step: int = 0,
    epoch: int = 0,
    metrics: dict | None = None,
    train_config: dict | None = None,
    trainer_state: dict | None = None,
) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then rename). Returns its path."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": FORMAT,
        "version": VERSION,
        "asrkd_version": __version__,
        "model": model.config.to_dict(),
        "frontend": frontend_config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "step": step,
        "epoch": epoch,
        "metrics": metrics or {},
        "train_config": train_config or {},
    }
    return _write_folder(Path(path), state, config, trainer_state)


def _write_folder(path: Path, state: dict[str, torch.Tensor], config: dict,
                  trainer_state: dict | None = None) -> Path:
    """Write ``state`` and ``config`` (and ``trainer_state``) as the checkpoint folder ``path``,
    under a temporary name renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(state, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if trainer_state is not None:
        torch.save(trainer_state, tmp / STATE_FILE)
    write_checksums(tmp)
    replace_folder(tmp, path)
    return path


def replace_folder(new: Path, path: Path) -> None:
    """Move the complete folder ``new`` to ``path``, replacing what is there (the old one is renamed
    aside first, so a kill leaves either folder whole)."""
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old)
    else:
        os.replace(new, path)


def read_config(path: str | Path) -> dict:
    """Read and validate ``config.json`` of a checkpoint folder."""
    path = Path(path)
    cfg_path = path / CONFIG_FILE
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder (expected a folder with {CONFIG_FILE})")
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing; is {path} an asrkd checkpoint?")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}:{e.lineno}: invalid JSON: {e.msg}") from e
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: 'format' is {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{cfg_path}: checkpoint version {config['version']} is newer than this asrkd "
            f"understands ({VERSION}); upgrade asrkd"
        )
    for key in ("model", "frontend", "tokenizer"):
        if key not in config:
            raise CheckpointError(f"{cfg_path}: missing field {key!r}")
    return config


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> LoadedModel:
    """Load a checkpoint folder into eval-mode modules.

    Raises:
        CheckpointError: the folder is not a checkpoint, a file is missing, or damaged (its size
            or sha256 differs from ``checksums.json``, or safetensors cannot read it).
    """
    path = Path(path)
    config = read_config(path)
    model = ConformerCTC(_section(path, config, "model", ConformerConfig.from_dict))
    state = load_weights(path, map_location)
    weights = path / MODEL_FILE
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not match the config in {CONFIG_FILE} "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    frontend = LogMel(_section(path, config, "frontend", FrontendConfig.from_dict))
    tokenizer = _section(path, config, "tokenizer", load_tokenizer)
    model.eval()
    frontend.eval()
    return LoadedModel(path=path, frontend=frontend, model=model, tokenizer=tokenizer, config=config)


def _section(path: Path, config: dict, key: str, build: Callable[[Any], Any]) -> Any:
    """``build(config[key])``, its failure a `CheckpointError` naming ``config.json`` and the key."""
    try:
        return build(config[key])
    except (TypeError, ValueError, KeyError) as e:  # TokenizerFileError is a ValueError
        raise CheckpointError(f"{path / CONFIG_FILE}: {key!r}: {e}") from None


def load_weights(path: str | Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint folder's ``model.safetensors``, verified (`verify_file`).

    Raises:
        CheckpointError: the file is missing, damaged or not a safetensors file; names it.
    """
    weights = Path(path) / MODEL_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing; the checkpoint is incomplete")
    verify_file(weights)
    try:
        return load_file(str(weights), device=map_location)
    except SafetensorError as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e}); {_REPAIR}") from None


def load_trainer_state(path: str | Path) -> dict:
    """The optimizer/scheduler/sampler/RNG state of a checkpoint (no pickle: weights_only),
    verified (`verify_file`)."""
    state_path = Path(path) / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: missing; this checkpoint cannot resume training")
    verify_file(state_path)
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as e:  # a torn zip, or a file that is not torch's
        raise CheckpointError(f"{state_path}: cannot be read ({e}); {_REPAIR}") from None


# What to do about a damaged checkpoint file, said by every message about one.
_REPAIR = "copy the checkpoint folder again, or use an earlier checkpoint (asrkd train --resume falls back to one)"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: str | Path) -> None:
    """Record the size and sha256 of the binary files in checkpoint ``folder`` in ``checksums.json``."""
    folder = Path(folder)
    files = {name: {"size": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
             for name in (MODEL_FILE, STATE_FILE) if (folder / name).is_file()}
    (folder / CHECKSUM_FILE).write_text(json.dumps({"files": files}, indent=2) + "\n", encoding="utf-8")


def verify_file(path: str | Path) -> None:
    """Check a checkpoint file against its folder's ``checksums.json``: size, then sha256.

    A folder without ``checksums.json`` (written by an older asrkd) and a file it does not list
    pass unchecked.

    Raises:
        CheckpointError: the size or the sha256 differs from the record, or the record is unreadable.
    """
    path = Path(path)
    record_path = path.parent / CHECKSUM_FILE
    if not record_path.is_file():
        return
    try:
        expected = json.loads(record_path.read_text(encoding="utf-8"))["files"].get(path.name)
        if expected is None:
            return
        expected_size, expected_sha256 = int(expected["size"]), expected["sha256"]
    except (KeyError, AttributeError, TypeError, ValueError) as e:  # ValueError: bad JSON or UTF-8 too
        raise CheckpointError(f"{record_path}: unreadable checksum record ({e}); {_REPAIR}") from None
    size = path.stat().st_size
    if size != expected_size:
        cut = " (cut short)" if size < expected_size else ""
        raise CheckpointError(f"{path}: {size} bytes{cut}, but {expected_size} were written "
                              f"({CHECKSUM_FILE}); {_REPAIR}")
    if file_sha256(path) != expected_sha256:
        raise CheckpointError(f"{path}: its sha256 differs from the one recorded in {CHECKSUM_FILE} "
                              f"(same size: the bytes were changed); {_REPAIR}")


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (then its ``avg``, else its ``best``, else its
    latest step)."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    ckpts = path / "checkpoints"
    for name in (AVERAGE_NAME, "best"):
        if (ckpts / name / CONFIG_FILE).is_file():
            return ckpts / name
    steps = list_step_checkpoints(ckpts)
    if steps:
        return steps[-1]
    raise CheckpointError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints/")


def list_step_checkpoints(folder: str | Path) -> list[Path]:
    """Complete ``step-NNNNNNN`` checkpoints in ``folder``, oldest first."""
    return _numbered(folder, "step-")


def list_epoch_checkpoints(folder: str | Path) -> list[Path]:
    """Complete ``epoch-NNN`` checkpoints (``run.keep_epochs``) in ``folder``, oldest first."""
    return _numbered(folder, EPOCH_PREFIX)


def _numbered(folder: str | Path, prefix: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith(prefix) and p.name[len(prefix):].isdigit()
        and (p / CONFIG_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(prefix):]))


def select_epochs(folder: str | Path, n: int, by: str = "best") -> list[Path]:
    """``n`` of the ``epoch-NNN`` checkpoints in ``folder``: the last ``n``, or the ``n`` with the
    lowest dev WER (``metrics.dev_wer``; a tie goes to the later epoch). Oldest first.

    Raises:
        CheckpointError: fewer than ``n`` epoch checkpoints (or, ``by="best"``, fewer with a dev
            WER); says how many there are and what keeps them.
    """
    if by not in AVERAGE_BY:
        raise CheckpointError(f"select_epochs: by={by!r}; allowed: {', '.join(AVERAGE_BY)}")
    epochs = list_epoch_checkpoints(folder)
    if by == "best":
        wer = {p: read_config(p).get("metrics", {}).get("dev_wer") for p in epochs}
        epochs = [p for p in epochs if wer[p] is not None]
    if n < 1 or len(epochs) < n:
        have = f"{len(epochs)} epoch checkpoint(s)" + (" with a dev WER" if by == "best" else "")
        raise CheckpointError(f"{folder}: {n} epoch checkpoint(s) asked for, {have} there "
                              "(run.keep_epochs keeps them; null keeps every epoch's)")
    if by == "last":
        return epochs[-n:]
    chosen = sorted(reversed(epochs), key=lambda p: wer[p])[:n]  # stable: on a tie the later epoch
    return [p for p in epochs if p in chosen]


def average_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the weights of the checkpoint folders ``paths`` (accumulated in
    float64, returned in each tensor's dtype); integer tensors (a batch norm's batch counter) are
    the last checkpoint's.

    Raises:
        CheckpointError: the checkpoints hold different tensors (not one model); names the first.
    """
    if not paths:
        raise CheckpointError("average_weights: no checkpoints given")
    states = [load_weights(p) for p in paths]
    first = states[0]
    for path, state in zip(paths[1:], states[1:]):
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise CheckpointError(f"{path / MODEL_FILE}: its tensors differ from {paths[0] / MODEL_FILE}'s; "
                                  "only checkpoints of one model can be averaged")
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            total = sum(state[key].to(torch.float64) for state in states)
            averaged[key] = (total / len(states)).to(last.dtype).contiguous()
        else:
            averaged[key] = last.clone()
    return averaged


def describe_average(paths: list[Path], by: str, out: Path) -> str:
    """One line naming what `average_checkpoints` averaged into ``out``."""
    return f"averaged {len(paths)} epoch checkpoints ({by}: {', '.join(p.name for p in paths)}) into {out}"


def average_checkpoints(paths: list[Path], out: str | Path, metrics: dict | None = None,
                        state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint folder ``out`` with the mean of ``paths``' weights (``state``, when the
    caller has it already from `average_weights`) and the last one's config, which records the
    folders averaged (``averaged_from``) and ``metrics``. Returns ``out``."""
    config = dict(read_config(paths[-1]))
    config.update(metrics=metrics or {}, averaged_from=[p.name for p in paths])
    return _write_folder(Path(out), state if state is not None else average_weights(paths), config)
