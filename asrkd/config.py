"""Training configuration: plain dataclasses read from YAML, validated at the edge.

Unknown keys are an error that names the file and the key (a typo must not be silently
ignored), and relative paths in a YAML file are resolved against that file's folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or dict has a missing, unknown or invalid field."""


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # one or more JSONL manifests
    dev: str | None = None  # manifest for dev WER after each epoch
    tokens: str | None = None  # tokens.txt / SentencePiece .model; None: characters of train texts
    max_batch_seconds: float = 60.0  # padded audio seconds per batch (per rank)
    num_buckets: int = 10  # duration buckets of the batch sampler
    num_workers: int = 1  # DataLoader worker processes
    cache_audio: bool = True  # keep decoded, resampled audio in memory (small corpora)

    def __post_init__(self) -> None:
        if isinstance(self.train, str):
            self.train = [self.train]


@dataclass
class ModelConfig:
    preset: str = "student"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    noise_prob: float = 0.3
    snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])
    bandlimit_prob: float = 0.0  # low-pass wideband audio to look like 8 kHz recordings
    bandlimit_hz: list[float] = field(default_factory=lambda: [3400.0, 4000.0])
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: float = 0.05  # fraction of the utterance per mask


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 200
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.05
    grad_clip: float = 5.0
    max_steps: int | None = None  # if None: epochs × batches per epoch
    epochs: int = 10


@dataclass
class RunConfig:
    out_dir: str = "runs/train"
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (None: torch default)
    log_every: int = 10
    checkpoint_every: int = 200  # steps; a checkpoint is also written at each epoch end
    keep_last: int = 3
    progress: bool = True


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    frontend: dict[str, Any] = field(default_factory=dict)  # FrontendConfig overrides
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    kd: dict[str, Any] = field(default_factory=dict)  # read by the distiller, ignored by plain training

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> TrainConfig:
        return _build(cls, d, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: invalid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
        cfg = cls.from_dict(raw, source=str(path))
        cfg.resolve_paths(path.parent)
        return cfg

    def resolve_paths(self, base: Path) -> None:
        """Make manifest, tokens and run.out_dir paths absolute, relative to ``base`` (the YAML's folder)."""

        def fix(p: str | None) -> str | None:
            return None if p is None else str((base / p).resolve()) if not Path(p).is_absolute() else p

        self.data.train = [fix(p) for p in self.data.train]
        self.data.dev = fix(self.data.dev)
        self.data.tokens = fix(self.data.tokens)
        self.run.out_dir = fix(self.run.out_dir)


def _build(cls, d: Any, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    kwargs = {}
    for name, value in d.items():
        ftype = fields[name].type
        sub = {"DataConfig": DataConfig, "ModelConfig": ModelConfig, "AugmentConfig": AugmentConfig,
               "OptimConfig": OptimConfig, "RunConfig": RunConfig}.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if sub is not None:
            kwargs[name] = _build(sub, value or {}, f"{where}: {name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)
