"""Training configuration: plain dataclasses read from YAML, validated at the edge.

Unknown keys are an error that names the file and the key (a typo must not be silently
ignored), and relative paths in a YAML file are resolved against that file's folder.

A YAML file may start from another one: ``base: teacher_breath.yaml`` (a path relative to the
file). The base is read first (it may have a base of its own), then this file's keys are laid
over it: mappings merge key by key, anything else (a list, a number, a string) replaces the base's
value. Each file's relative paths are resolved against its own folder before the merge.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asrkd.contract import TOP_K
from asrkd.errors import AsrkdError


class ConfigError(AsrkdError, ValueError):
    """A configuration file or dict has a missing, unknown or invalid field."""


ON_BAD_AUDIO = ("error", "skip")  # data.on_bad_audio: what training does with a bad audio line


@dataclass
class DataConfig:
    # One or more data sources (asrkd.data.sources): JSONL manifest paths, and/or mappings
    # {lhotse: cuts.jsonl.gz} / {hf: DATASET_DIR, split: train, audio_column: audio, ...}.
    train: list[str | dict[str, Any]] = field(default_factory=list)
    dev: str | dict[str, Any] | None = None  # a data source for dev WER after each epoch
    # Word list (`asrkd eval --lexicon`): the dev WER is then decoded with it, and the best
    # checkpoint is the one that is best with the lexicon, as it will be deployed.
    dev_lexicon: str | None = None
    tokens: str | None = None  # tokens.txt / SentencePiece .model; None: characters of train texts
    max_batch_seconds: float = 60.0  # padded audio seconds per batch (per rank)
    num_buckets: int = 10  # duration buckets of the batch sampler
    num_workers: int = 1  # DataLoader worker processes
    cache_audio: bool = True  # keep decoded, resampled audio in memory (small corpora)
    # error: refuse a manifest with an unreadable, truncated, too-short or mis-described audio
    # line before anything is written; skip: leave such lines out, count them and list them in
    # the run folder.
    on_bad_audio: str = "error"

    def __post_init__(self) -> None:
        if self.on_bad_audio not in ON_BAD_AUDIO:
            raise ConfigError(f"on_bad_audio {self.on_bad_audio!r} is not one of {list(ON_BAD_AUDIO)}")
        if isinstance(self.train, str | dict):
            self.train = [self.train]
        if not isinstance(self.train, list):
            raise ConfigError(f"train must be a data source or a list of them, got {self.train!r}")
        self.train = [_source(s, f"train[{i}]") for i, s in enumerate(self.train)]
        if self.dev is not None:
            self.dev = _source(self.dev, "dev")


def _source(value: Any, key: str) -> str | dict[str, Any]:
    """A data source as the config holds it: a manifest path unchanged, a spec string
    (``lhotse:PATH``) as its mapping; a mapping checked (asrkd.data.sources)."""
    if isinstance(value, str) and not value.startswith(_SOURCE_PREFIXES):
        return value
    from asrkd.data.sources import DataSource, SourceError  # torch-heavy package: import late

    try:
        return DataSource.parse(value).to_config()
    except SourceError as e:
        raise ConfigError(f"{key}: {e}") from None


@dataclass
class DynamicChunksConfig:
    """Dynamic chunk training (WeNet U2) of a causal (streaming) model: each batch is trained with
    a chunking drawn by `asrkd.models.streaming.draw_chunk_size` from a generator seeded with
    (run.seed, step), so one set of weights serves several chunk sizes and full context. Off: a
    causal model trains with its config's static ``chunk_size`` / ``left_chunks``."""

    enabled: bool = False
    max_chunk_size: int = 25  # encoder frames; a chunk size is drawn from 1 .. max_chunk_size
    full_context_prob: float = 0.5  # probability that a batch trains at full context
    max_left_chunks: int | None = None  # left context drawn from 0 .. max_left_chunks; None: unlimited

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"enabled must be true or false, got {self.enabled!r}")
        if isinstance(self.max_chunk_size, bool) or not isinstance(self.max_chunk_size, int) or self.max_chunk_size < 1:
            raise ConfigError(f"max_chunk_size must be a whole number of encoder frames >= 1, got {self.max_chunk_size!r}")
        prob = self.full_context_prob
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0 <= prob <= 1:
            raise ConfigError(f"full_context_prob must be a probability in [0, 1], got {prob!r}")
        left = self.max_left_chunks
        if left is not None and (isinstance(left, bool) or not isinstance(left, int) or left < 0):
            raise ConfigError(f"max_left_chunks must be a whole number of chunks >= 0, or null (unlimited), "
                              f"got {left!r}")


@dataclass
class ModelConfig:
    preset: str = "student"
    overrides: dict[str, Any] = field(default_factory=dict)
    # Start from this checkpoint's weights (and tokenizer) instead of a random init: fine-tuning,
    # or a curriculum whose first stage trains on short utterances only.
    init_from: str | None = None
    # Intermediate CTC (Lee & Watanabe, ICASSP 2021): CTC also on the output of these blocks
    # (1-based, below the last), through the model's own CTC head, so no weights are added and
    # exported graphs do not change. Loss = (1 - w) * CTC + w * mean of the intermediate CTCs.
    interctc_layers: list[int] = field(default_factory=list)
    interctc_weight: float = 0.3
    # Causal (streaming) models only, e.g. preset student-stream: see DynamicChunksConfig.
    dynamic_chunks: DynamicChunksConfig = field(default_factory=DynamicChunksConfig)

    def __post_init__(self) -> None:
        layers = self.interctc_layers
        if not isinstance(layers, list) or not all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in layers):
            raise ConfigError(f"interctc_layers must be a list of block numbers >= 1, got {layers!r}")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"interctc_layers has a block twice: {layers}")
        if not (isinstance(self.interctc_weight, int | float) and 0 < self.interctc_weight < 1):
            raise ConfigError(f"interctc_weight must lie in (0, 1), got {self.interctc_weight!r}")


@dataclass
class AugmentConfig:
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    noise_prob: float = 0.3
    snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])
    bandlimit_prob: float = 0.0  # low-pass wideband audio to look like 8 kHz recordings
    bandlimit_hz: list[float] = field(default_factory=lambda: [3400.0, 4000.0])
    gain_prob: float = 0.0  # scale the audio by a random gain (quiet recordings; last transform)
    gain_db: list[float] = field(default_factory=lambda: [-25.0, 0.0])
    # noise that follows the speech envelope (breathy voice, glottal onsets); see data.BreathNoise
    breath_prob: float = 0.0
    breath_db: list[float] = field(default_factory=lambda: [-25.0, -10.0])
    breath_hz: list[float] = field(default_factory=lambda: [1000.0, 4000.0])
    # vocal tract length perturbation: formants scaled by alpha in vtlp_alpha (features.vtlp_warp)
    vtlp_prob: float = 0.0
    vtlp_alpha: list[float] = field(default_factory=lambda: [0.9, 1.1])
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: float = 0.05  # fraction of the utterance per mask

    def __post_init__(self) -> None:
        for name in ("noise_prob", "bandlimit_prob", "gain_prob", "breath_prob", "vtlp_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
        for name in ("snr_db", "bandlimit_hz", "gain_db", "breath_db", "breath_hz", "vtlp_alpha"):
            value = getattr(self, name)
            if (
                not isinstance(value, list | tuple) or len(value) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
                or value[0] > value[1]
            ):
                raise ConfigError(f"{name} must be a range [low, high] with low <= high, got {value!r}")
        if not (0.5 <= self.vtlp_alpha[0] and self.vtlp_alpha[1] <= 2.0):
            raise ConfigError(f"vtlp_alpha must lie within [0.5, 2] (a formant scale), got {self.vtlp_alpha!r}")


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
    kd: KDConfig = field(default_factory=lambda: KDConfig())  # read by the distiller only

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> TrainConfig:
        return _build(cls, d, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML config (and its ``base:`` chain); its relative paths come back absolute."""
        path = Path(path)
        return cls.from_dict(_read_yaml_with_bases(path, chain=()), source=str(path))

    def resolve_paths(self, base: Path) -> None:
        """Make the path fields (`_PATH_FIELDS`) absolute, relative to ``base``: for configs built
        with `from_dict` from relative paths (`from_yaml` resolves each file against its folder)."""
        for section, key in _PATH_FIELDS:
            part = getattr(self, section)
            value = getattr(part, key)
            if value is not None:
                setattr(part, key, [_absolute(v, base) for v in value] if isinstance(value, list)
                        else _absolute(value, base))
        self.data.train = [_absolute_source(s, base, "data.train") for s in self.data.train]
        if self.data.dev is not None:
            self.data.dev = _absolute_source(self.data.dev, base, "data.dev")


# Fields that hold paths, as (section, key): resolved against the folder of the YAML that sets them.
_PATH_FIELDS = (
    ("data", "dev_lexicon"), ("data", "tokens"),
    ("kd", "cache"), ("kd", "teacher"), ("run", "out_dir"), ("model", "init_from"),
)
# Fields that hold data sources (manifest paths or source mappings, whose paths are resolved).
_SOURCE_FIELDS = (("data", "train"), ("data", "dev"))
_SOURCE_PREFIXES = ("lhotse:", "hf:")  # asrkd.data.manifest.SOURCE_PREFIXES, without importing torch


def _read_yaml_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    """One YAML file as a dict with its ``base:`` chain merged in and its relative paths made absolute."""
    if not path.is_file():
        where = f"{chain[-1]}: base" if chain else str(path)
        raise ConfigError(f"{where}: config file {path} not found")
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"{path}: base files form a cycle: {cycle}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    base = raw.pop("base", None)
    _check_keys(TrainConfig, raw, str(path))  # a typo is reported with the file that has it
    _absolute_paths(raw, path.parent, str(path))
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be the path of another YAML config, got {base!r}")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    merged = _read_yaml_with_bases(base_path, (*chain, path.resolve()))
    return _merge(merged, raw)


def _check_keys(cls, d: Any, where: str) -> None:
    """The unknown-key check of `_build`, on one file's part of a merged config."""
    if not isinstance(d, dict):
        return  # a wrong type is reported by _build
    fields = _known_fields(cls, d, where)
    for name, value in d.items():
        sub = _section_of(fields[name])
        if sub is not None:
            _check_keys(sub, value, f"{where}: {name}")


def _known_fields(cls, d: dict, where: str) -> dict:
    """``cls``'s dataclass fields by name; a key of ``d`` that is not one of them is an error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    return fields


def _section_of(f: dataclasses.Field):
    """The config dataclass a field holds (a nested section), or None for a plain value."""
    return _SECTIONS.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))


def _absolute_paths(raw: dict, folder: Path, where: str) -> None:
    for section, key in _SOURCE_FIELDS:
        part = raw.get(section)
        if not isinstance(part, dict) or part.get(key) is None:
            continue
        value = part[key]
        if isinstance(value, list):
            part[key] = [_absolute_source(v, folder, f"{where}: {section}.{key}[{i}]") for i, v in enumerate(value)]
        else:
            part[key] = _absolute_source(value, folder, f"{where}: {section}.{key}")
    for section, key in _PATH_FIELDS:
        part = raw.get(section)
        if not isinstance(part, dict) or part.get(key) is None:
            continue  # a wrong type is reported by _build, with the key's name
        value = part[key]
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}: {section}.{key} must be a path or a list of paths, got {value!r}")
        fixed = [_absolute(v, folder) for v in values]
        part[key] = fixed if isinstance(value, list) else fixed[0]


def _absolute(path: str, folder: Path) -> str:
    return path if Path(path).is_absolute() else str((folder / path).resolve())


def _absolute_source(value: Any, folder: Path, where: str) -> str | dict[str, Any]:
    """A data source with its paths made absolute against ``folder``; ``where`` names it in errors."""
    if isinstance(value, str) and not value.startswith(_SOURCE_PREFIXES):
        return _absolute(value, folder)  # a manifest path, as before sources existed
    if not isinstance(value, str | dict):
        raise ConfigError(f"{where} must be a manifest path or a data source mapping, got {value!r}")
    from asrkd.data.sources import DataSource, SourceError  # torch-heavy package: import late

    try:
        return DataSource.parse(value).with_paths(lambda p: _absolute(p, folder)).to_config()
    except SourceError as e:
        raise ConfigError(f"{where}: {e}") from None


def _merge(base: dict, top: dict) -> dict:
    """``top`` laid over ``base``: mappings merge recursively, other values replace."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls, d: Any, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    fields = _known_fields(cls, d, where)
    kwargs = {}
    for name, value in d.items():
        sub = _section_of(fields[name])
        if sub is TermWeight and isinstance(value, int | float) and not isinstance(value, bool):
            kwargs[name] = TermWeight(value=float(value))  # `frame: 0.5` is a constant weight
        elif sub is not None:
            kwargs[name] = _build(sub, value or {}, f"{where}: {name}")
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise ConfigError(f"{where}: {e}") from None
        raise


# ---------------------------------------------------------------------------------------------
# Distillation (`kd:` section, read by asrkd.distill.Distiller; plain training ignores it)
# ---------------------------------------------------------------------------------------------

BLANK_MODES = ("all", "downweight", "nonblank", "symmetric")
WEIGHT_SCHEDULES = ("constant", "linear", "cosine")
KD_TERMS = ("ctc", "frame", "sequence", "feature", "relation")


@dataclass
class TermWeight:
    """The weight of one loss term as a function of the optimiser step.

    ``constant``: ``value`` from step 0. ``linear`` / ``cosine``: ``initial`` until
    ``start_step``, then a linear or half-cosine ramp reaching ``value`` after ``ramp_steps``
    more steps, ``value`` afterwards. In YAML a bare number means a constant weight.
    """

    value: float = 0.0
    schedule: str = "constant"
    initial: float = 0.0
    start_step: int = 0
    ramp_steps: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in WEIGHT_SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} is not one of {list(WEIGHT_SCHEDULES)}")
        if self.value < 0 or self.initial < 0:
            raise ConfigError(f"weights must be >= 0, got value={self.value}, initial={self.initial}")
        if self.start_step < 0 or self.ramp_steps < 0:
            raise ConfigError("start_step and ramp_steps must be >= 0")
        if self.schedule != "constant" and self.ramp_steps == 0:
            raise ConfigError(f"a {self.schedule} schedule needs ramp_steps > 0")

    def at(self, step: int) -> float:
        if self.schedule == "constant":
            return self.value
        progress = min(1.0, max(0.0, (step - self.start_step) / self.ramp_steps))
        if self.schedule == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.initial + (self.value - self.initial) * progress

    @property
    def enabled(self) -> bool:
        """True if the term is ever weighted above 0 (then its inputs must be available)."""
        return self.value > 0 or (self.schedule != "constant" and self.initial > 0)


@dataclass
class KDWeights:
    """One weight per loss term (see asrkd.losses). Ground-truth (or pseudo-label) CTC is on by default."""

    ctc: TermWeight = field(default_factory=lambda: TermWeight(1.0))
    frame: TermWeight = field(default_factory=TermWeight)
    sequence: TermWeight = field(default_factory=TermWeight)
    feature: TermWeight = field(default_factory=TermWeight)
    relation: TermWeight = field(default_factory=TermWeight)


@dataclass
class PseudoLabelConfig:
    """Utterances without text get the teacher's best hypothesis as their CTC target."""

    min_confidence: float = 0.0  # drop unlabelled utterances the teacher is less sure of (0..1)
    drop_empty: bool = True  # drop unlabelled utterances whose best hypothesis is empty

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"min_confidence must be in [0, 1], got {self.min_confidence}")


@dataclass
class KDConfig:
    """What the distiller distils from, and how. See docs/DISTILLATION.md."""

    cache: str | None = None  # posterior cache folder (`asrkd cache build`)
    teacher: str | None = None  # asrkd checkpoint or Hugging Face *ForCTC folder
    teacher_mode: str = "cache"  # cache: targets from `cache`; online: run `teacher` every step
    top_k: int = TOP_K  # online mode: posteriors kept per frame (the cache fixes its own)
    temperature: float = 1.0  # frame KD temperature tau (the loss is scaled by tau^2)
    blank_mode: str = "all"  # all | downweight | nonblank | symmetric
    blank_weight: float = 0.1  # downweight: weight of frames whose teacher argmax is blank
    seq_temperature: float = 1.0  # sequence KD: N-best weights softmax(score / seq_temperature)
    # Student frames by which a streaming student emits later than the full-context teacher: its
    # frame t is compared with the teacher's frame t - frame_delay (frame, feature, relation KD).
    frame_delay: int = 0
    layer_map: dict[int, int] = field(default_factory=dict)  # {student block: teacher layer}, 0-based
    pseudo_label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    weights: KDWeights = field(default_factory=KDWeights)

    def __post_init__(self) -> None:
        if self.teacher_mode not in ("cache", "online"):
            raise ConfigError(f"teacher_mode {self.teacher_mode!r} is not one of ['cache', 'online']")
        if self.blank_mode not in BLANK_MODES:
            raise ConfigError(f"blank_mode {self.blank_mode!r} is not one of {list(BLANK_MODES)}")
        if self.temperature <= 0 or self.seq_temperature <= 0:
            raise ConfigError("temperature and seq_temperature must be > 0")
        if not 0.0 <= self.blank_weight <= 1.0:
            raise ConfigError(f"blank_weight must be in [0, 1], got {self.blank_weight}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if isinstance(self.frame_delay, bool) or not isinstance(self.frame_delay, int) or self.frame_delay < 0:
            raise ConfigError(f"frame_delay must be a whole number of student frames >= 0, got {self.frame_delay!r}")
        try:
            self.layer_map = {int(s): int(t) for s, t in (self.layer_map or {}).items()}
        except (TypeError, ValueError):
            raise ConfigError(f"layer_map must map integers to integers, got {self.layer_map!r}") from None
        if any(s < 0 or t < 0 for s, t in self.layer_map.items()):
            raise ConfigError(f"layer_map indices are 0-based and >= 0, got {self.layer_map}")

    def enabled_terms(self) -> list[str]:
        return [t for t in KD_TERMS if getattr(self.weights, t).enabled]


_SECTIONS = {
    "DataConfig": DataConfig, "ModelConfig": ModelConfig, "DynamicChunksConfig": DynamicChunksConfig, "AugmentConfig": AugmentConfig,
    "OptimConfig": OptimConfig, "RunConfig": RunConfig, "KDConfig": KDConfig,
    "KDWeights": KDWeights, "TermWeight": TermWeight, "PseudoLabelConfig": PseudoLabelConfig,
}
