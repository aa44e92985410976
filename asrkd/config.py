"""Training configuration: plain dataclasses read from YAML, validated at the edge.

Unknown keys are an error that names the file and the key (a typo must not be silently
ignored), and relative paths in a YAML file are resolved against that file's folder. Every value
is type- and range-checked when its section is built, from the field's type and its ``allowed``
metadata (`Bounds`, or a tuple of choices): a bad value is a `ConfigError`
``FILE: section.key: what is wrong (allowed: what is allowed)`` before anything is written.
YAML is read with YAML 1.2's floats, so ``lr: 3e-3`` is a number (YAML 1.1, PyYAML's, needs a dot).

A YAML file may start from another one: ``base: teacher_breath.yaml`` (a path relative to the
file). The base is read first (it may have a base of its own), then this file's keys are laid
over it: mappings merge key by key, anything else (a list, a number, a string) replaces the base's
value. Each file's relative paths are resolved against its own folder before the merge.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from asrkd.config_values import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Bounds,
    ConfigError,
    Section,
    allowed,
    check_fields,
    kind_of,
)
from asrkd.contract import TOP_K

AVERAGE_BY = ("best", "last")  # run.average.by: which epoch checkpoints are averaged
ON_BAD_AUDIO = ("error", "skip")  # data.on_bad_audio: what training does with a bad audio line


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``3e-3`` and ``1e4`` are numbers, not strings
    (YAML 1.1 wants ``3.0e-3``). Everything else resolves as before; a quoted ``"4"`` stays a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


@dataclass
class DataConfig(Section):
    # One or more data sources (asrkd.data.sources): JSONL manifest paths, and/or mappings
    # {lhotse: cuts.jsonl.gz} / {hf: DATASET_DIR, split: train, audio_column: audio, ...}.
    train: list[str | dict[str, Any]] = field(default_factory=list)
    dev: str | dict[str, Any] | None = None  # a data source for dev WER after each epoch
    # Word list (`asrkd eval --lexicon`): the dev WER is then decoded with it, and the best
    # checkpoint is the one that is best with the lexicon, as it will be deployed.
    dev_lexicon: str | None = None
    tokens: str | None = None  # tokens.txt / SentencePiece .model; None: characters of train texts
    # padded audio seconds per batch (per rank)
    max_batch_seconds: float = field(default=60.0, metadata=allowed(POSITIVE))
    num_buckets: int = field(default=10, metadata=allowed(AT_LEAST_ONE))  # duration buckets of the batch sampler
    num_workers: int = field(default=1, metadata=allowed(NON_NEGATIVE))  # DataLoader worker processes
    cache_audio: bool = True  # keep decoded, resampled audio in memory (small corpora)
    # error: refuse a manifest with an unreadable, truncated, too-short or mis-described audio
    # line before anything is written; skip: leave such lines out, count them and list them in
    # the run folder.
    on_bad_audio: str = field(default="error", metadata=allowed(ON_BAD_AUDIO))

    def __post_init__(self) -> None:
        if isinstance(self.train, str | dict):
            self.train = [self.train]
        if not isinstance(self.train, list):
            raise ConfigError(f"train: {self.train!r} is {kind_of(self.train)} "
                              f"(allowed: a data source or a list of them)")
        self.train = [_source(s, f"train[{i}]") for i, s in enumerate(self.train)]
        if self.dev is not None:
            self.dev = _source(self.dev, "dev")
        check_fields(self)


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
class DynamicChunksConfig(Section):
    """Dynamic chunk training (WeNet U2) of a causal (streaming) model: each batch is trained with
    a chunking drawn by `asrkd.models.streaming.draw_chunk_size` from a generator seeded with
    (run.seed, step), so one set of weights serves several chunk sizes and full context. Off: a
    causal model trains with its config's static ``chunk_size`` / ``left_chunks``."""

    enabled: bool = False
    # encoder frames; a chunk size is drawn from 1 .. max_chunk_size
    max_chunk_size: int = field(default=25, metadata=allowed(AT_LEAST_ONE))
    # probability that a batch trains at full context
    full_context_prob: float = field(default=0.5, metadata=allowed(PROBABILITY))
    # left context drawn from 0 .. max_left_chunks (chunks); None: unlimited
    max_left_chunks: int | None = field(default=None, metadata=allowed(NON_NEGATIVE, null="unlimited"))


@dataclass
class ModelConfig(Section):
    preset: str = "student"
    overrides: dict[str, Any] = field(default_factory=dict)
    # Start from this checkpoint's weights (and tokenizer) instead of a random init: fine-tuning,
    # or a curriculum whose first stage trains on short utterances only.
    init_from: str | None = None
    # Intermediate CTC (Lee & Watanabe, ICASSP 2021): CTC also on the output of these blocks
    # (1-based, below the last), through the model's own CTC head, so no weights are added and
    # exported graphs do not change. Loss = (1 - w) * CTC + w * mean of the intermediate CTCs.
    interctc_layers: list[int] = field(default_factory=list, metadata=allowed(AT_LEAST_ONE))
    interctc_weight: float = field(default=0.3, metadata=allowed(Bounds(0, 1, low_open=True, high_open=True)))
    # Causal (streaming) models only, e.g. preset student-stream: see DynamicChunksConfig.
    dynamic_chunks: DynamicChunksConfig = field(default_factory=DynamicChunksConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        if len(set(self.interctc_layers)) != len(self.interctc_layers):
            raise ConfigError(f"interctc_layers: {self.interctc_layers} has a block twice "
                              "(allowed: each block once)")


@dataclass
class AugmentConfig(Section):
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1], metadata=allowed(POSITIVE))
    noise_prob: float = field(default=0.3, metadata=allowed(PROBABILITY))
    snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])
    # low-pass wideband audio to look like 8 kHz recordings
    bandlimit_prob: float = field(default=0.0, metadata=allowed(PROBABILITY))
    bandlimit_hz: list[float] = field(default_factory=lambda: [3400.0, 4000.0], metadata=allowed(POSITIVE))
    # scale the audio by a random gain (quiet recordings; last transform)
    gain_prob: float = field(default=0.0, metadata=allowed(PROBABILITY))
    gain_db: list[float] = field(default_factory=lambda: [-25.0, 0.0])
    # noise that follows the speech envelope (breathy voice, glottal onsets); see data.BreathNoise
    breath_prob: float = field(default=0.0, metadata=allowed(PROBABILITY))
    breath_db: list[float] = field(default_factory=lambda: [-25.0, -10.0])
    breath_hz: list[float] = field(default_factory=lambda: [1000.0, 4000.0], metadata=allowed(POSITIVE))
    # vocal tract length perturbation: formants scaled by alpha in vtlp_alpha (features.vtlp_warp)
    vtlp_prob: float = field(default=0.0, metadata=allowed(PROBABILITY))
    vtlp_alpha: list[float] = field(default_factory=lambda: [0.9, 1.1], metadata=allowed(Bounds(0.5, 2)))
    freq_masks: int = field(default=2, metadata=allowed(NON_NEGATIVE))
    freq_width: int = field(default=15, metadata=allowed(NON_NEGATIVE))  # mel bands per mask, at most
    time_masks: int = field(default=2, metadata=allowed(NON_NEGATIVE))
    time_width: float = field(default=0.05, metadata=allowed(PROBABILITY))  # fraction of the utterance per mask

    # Fields that hold a range [low, high] to draw from.
    RANGES: ClassVar[tuple[str, ...]] = ("snr_db", "bandlimit_hz", "gain_db", "breath_db", "breath_hz", "vtlp_alpha")

    def __post_init__(self) -> None:
        check_fields(self)
        for name in self.RANGES:
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ConfigError(f"{name}: {value!r} is not a range (allowed: [low, high] with low <= high)")


@dataclass
class OptimConfig(Section):
    lr: float = field(default=2e-3, metadata=allowed(POSITIVE))
    weight_decay: float = field(default=1e-3, metadata=allowed(NON_NEGATIVE))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98], metadata=allowed(Bounds(0, 1, high_open=True)))
    warmup_steps: int = field(default=200, metadata=allowed(NON_NEGATIVE))
    schedule: str = field(default="cosine", metadata=allowed(("cosine", "constant")))
    min_lr_ratio: float = field(default=0.05, metadata=allowed(PROBABILITY))  # cosine: lr at the end / lr
    grad_clip: float = field(default=5.0, metadata=allowed(POSITIVE))  # max gradient norm
    # None: epochs × batches per epoch (0 is refused: it used to read as None)
    max_steps: int | None = field(default=None, metadata=allowed(AT_LEAST_ONE, null="epochs x batches per epoch"))
    epochs: int = field(default=10, metadata=allowed(AT_LEAST_ONE))

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.betas) != 2:
            raise ConfigError(f"betas: {self.betas!r} has {len(self.betas)} values (allowed: [beta1, beta2])")


@dataclass
class AverageConfig(Section):
    """Checkpoint averaging at the end of a run (icefall's ``--avg``, WeNet's ``average_model.py``):
    the mean of the weights of ``epochs`` epoch-end checkpoints, the ones with the lowest dev WER
    (``best``) or the last ones, written as ``checkpoints/avg`` and scored on the dev set; a run
    folder then stands for it (`asrkd.checkpoint.resolve_checkpoint`). 0: off."""

    epochs: int = field(default=0, metadata=allowed(NON_NEGATIVE))
    by: str = field(default="best", metadata=allowed(AVERAGE_BY))


@dataclass
class RunConfig(Section):
    out_dir: str = "runs/train"
    seed: int = field(default=0, metadata=allowed(NON_NEGATIVE))
    # torch intra-op threads (None: torch default)
    threads: int | None = field(default=None, metadata=allowed(AT_LEAST_ONE, null="torch's default"))
    log_every: int = field(default=10, metadata=allowed(AT_LEAST_ONE))  # steps
    # steps; a checkpoint is also written at each epoch end
    checkpoint_every: int = field(default=200, metadata=allowed(AT_LEAST_ONE))
    keep_last: int = field(default=3, metadata=allowed(AT_LEAST_ONE))  # step checkpoints kept
    progress: bool = True
    # the weights at each epoch's end kept as checkpoints/epoch-NNN, the last so many (None: all),
    # for `average` or `asrkd average`
    keep_epochs: int | None = field(default=0, metadata=allowed(NON_NEGATIVE, null="every epoch's"))
    average: AverageConfig = field(default_factory=AverageConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        n = self.average.epochs
        if n and self.keep_epochs is not None and self.keep_epochs < n:
            raise ConfigError(f"keep_epochs: {self.keep_epochs} keeps fewer epoch checkpoints than "
                              f"average.epochs ({n}) averages (allowed: >= {n}, or null: every epoch's)")


@dataclass
class TrainConfig(Section):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    frontend: dict[str, Any] = field(default_factory=dict)  # FrontendConfig overrides
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    kd: KDConfig = field(default_factory=lambda: KDConfig())  # read by the distiller only

    def __post_init__(self) -> None:
        check_fields(self)
        _check_frontend_and_model(self.frontend, self.model)

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


def _check_frontend_and_model(frontend: dict[str, Any], model: ModelConfig) -> None:
    """``frontend`` and ``model.preset`` / ``model.overrides`` checked by the classes that read
    them (`asrkd.features.FrontendConfig`, `asrkd.models.conformer.build_preset`), at load rather
    than when the run is built; the vocabulary size is not known yet, so any valid one stands in."""
    from asrkd.features import FrontendConfig  # torch-heavy: import late
    from asrkd.models.conformer import PRESETS, build_preset

    try:
        n_mels = FrontendConfig.from_dict(frontend).n_mels
    except (TypeError, ValueError) as e:
        raise ConfigError(f"frontend: {e}") from None
    if model.preset not in PRESETS:
        raise ConfigError(f"model.preset: {model.preset!r} is not allowed (allowed: one of "
                          f"{', '.join(repr(p) for p in sorted(PRESETS))})")
    fixed = sorted({"vocab_size", "n_mels"} & set(model.overrides))
    if fixed:
        raise ConfigError(f"model.overrides: {fixed} cannot be overridden (allowed: other ConformerConfig "
                          "fields; the vocabulary size comes from the tokenizer, n_mels from frontend.n_mels)")
    try:
        build_preset(model.preset, vocab_size=2, n_mels=n_mels, **model.overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.overrides: {e}") from None


# Fields that hold paths, as (section, key): resolved against the folder of the YAML that sets them.
_PATH_FIELDS = (
    ("data", "dev_lexicon"), ("data", "tokens"),
    ("kd", "cache"), ("kd", "teacher"), ("run", "out_dir"), ("model", "init_from"),
)
# Fields that hold data sources (manifest paths or source mappings, whose paths are resolved).
_SOURCE_FIELDS = (("data", "train"), ("data", "dev"))
_SOURCE_PREFIXES = ("lhotse:", "hf:")  # asrkd.data.manifest.SOURCE_PREFIXES, without importing torch
_WHISPER_SPEC = "whisper"  # asrkd.teachers.loading.WHISPER_SPEC, without importing torch


def _read_yaml_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    """One YAML file as a dict with its ``base:`` chain merged in and its relative paths made absolute."""
    if not path.is_file():
        where = f"{chain[-1]}: base" if chain else str(path)
        raise ConfigError(f"{where}: config file {path} not found")
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"{path}: base files form a cycle: {cycle}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
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


def _check_keys(cls, d: Any, source: str, section: str = "") -> None:
    """The unknown-key check of `_build`, on one file's part of a merged config."""
    if not isinstance(d, dict):
        return  # a wrong type is reported by _build
    fields = _known_fields(cls, d, f"{source}: {section}" if section else source)
    for name, value in d.items():
        sub = _section_of(fields[name])
        if sub is not None:
            _check_keys(sub, value, source, f"{section}.{name}" if section else name)


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
        resolve = _absolute_teacher if (section, key) == ("kd", "teacher") else _absolute
        fixed = [resolve(v, folder) for v in values]
        part[key] = fixed if isinstance(value, list) else fixed[0]


def _absolute(path: str, folder: Path) -> str:
    return path if Path(path).is_absolute() else str((folder / path).resolve())


def _absolute_teacher(spec: str, folder: Path) -> str:
    """``kd.teacher``: a path, or a Whisper spec (``whisper[:DIR][?options]``, as
    `asrkd.teachers.load_teacher` reads it) whose DIR alone is a path."""
    head, sep, query = spec.partition("?")
    if head == _WHISPER_SPEC:
        return spec
    if head.startswith(f"{_WHISPER_SPEC}:"):
        return f"{_WHISPER_SPEC}:{_absolute(head.partition(':')[2], folder)}{sep}{query}"
    return _absolute(spec, folder)


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


def _build(cls, d: Any, source: str, section: str = ""):
    """The config section ``cls`` from the mapping ``d``; errors name ``source`` (the file) and
    the ``section``'s dotted path: ``FILE: optim.lr: ...``."""
    where = f"{source}: {section}" if section else source
    if not isinstance(d, dict):
        weight = "a number >= 0 (a constant weight) or " if cls is TermWeight else ""
        raise ConfigError(f"{where}: {d!r} is {kind_of(d)} (allowed: {weight}a mapping of {cls.__name__} keys)")
    fields = _known_fields(cls, d, where)
    kwargs = {}
    for name, value in d.items():
        sub = _section_of(fields[name])
        if sub is TermWeight and isinstance(value, int | float) and not isinstance(value, bool):
            value = {"value": float(value)}  # `frame: 0.5` is a constant weight
        if sub is not None:
            kwargs[name] = _build(sub, value or {}, source, f"{section}.{name}" if section else name)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:  # its message starts with the key: `lr: ...`
        raise ConfigError(f"{where}.{e}" if section else f"{where}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Distillation (`kd:` section, read by asrkd.distill.Distiller; plain training ignores it)
# ---------------------------------------------------------------------------------------------

BLANK_MODES = ("all", "downweight", "nonblank", "symmetric")
WEIGHT_SCHEDULES = ("constant", "linear", "cosine")
KD_TERMS = ("ctc", "frame", "sequence", "feature", "relation")


@dataclass
class TermWeight(Section):
    """The weight of one loss term as a function of the optimiser step.

    ``constant``: ``value`` from step 0. ``linear`` / ``cosine``: ``initial`` until
    ``start_step``, then a linear or half-cosine ramp reaching ``value`` after ``ramp_steps``
    more steps, ``value`` afterwards. In YAML a bare number means a constant weight.
    """

    value: float = field(default=0.0, metadata=allowed(NON_NEGATIVE))
    schedule: str = field(default="constant", metadata=allowed(WEIGHT_SCHEDULES))
    initial: float = field(default=0.0, metadata=allowed(NON_NEGATIVE))
    start_step: int = field(default=0, metadata=allowed(NON_NEGATIVE))
    ramp_steps: int = field(default=0, metadata=allowed(NON_NEGATIVE))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.schedule != "constant" and self.ramp_steps == 0:
            raise ConfigError(f"ramp_steps: 0 with a {self.schedule} schedule (allowed: >= 1, or schedule: constant)")

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
class KDWeights(Section):
    """One weight per loss term (see asrkd.losses). Ground-truth (or pseudo-label) CTC is on by default."""

    ctc: TermWeight = field(default_factory=lambda: TermWeight(1.0))
    frame: TermWeight = field(default_factory=TermWeight)
    sequence: TermWeight = field(default_factory=TermWeight)
    feature: TermWeight = field(default_factory=TermWeight)
    relation: TermWeight = field(default_factory=TermWeight)


@dataclass
class PseudoLabelConfig(Section):
    """Utterances without text get the teacher's best hypothesis as their CTC target."""

    # drop unlabelled utterances the teacher is less sure of
    min_confidence: float = field(default=0.0, metadata=allowed(PROBABILITY))
    drop_empty: bool = True  # drop unlabelled utterances whose best hypothesis is empty


@dataclass
class KDConfig(Section):
    """What the distiller distils from, and how. See docs/DISTILLATION.md."""

    # posterior cache folder (`asrkd cache build`), or a list of caches of one teacher (asrkd.cache.CacheSet)
    cache: str | list[str] | None = None
    teacher: str | None = None  # asrkd checkpoint or Hugging Face *ForCTC folder
    # cache: targets from `cache`; online: run `teacher` every step
    teacher_mode: str = field(default="cache", metadata=allowed(("cache", "online")))
    # online mode: posteriors kept per frame (the cache fixes its own)
    top_k: int = field(default=TOP_K, metadata=allowed(AT_LEAST_ONE))
    # frame KD temperature tau (the loss is scaled by tau^2)
    temperature: float = field(default=1.0, metadata=allowed(POSITIVE))
    blank_mode: str = field(default="all", metadata=allowed(BLANK_MODES))
    # downweight: weight of frames whose teacher argmax is blank
    blank_weight: float = field(default=0.1, metadata=allowed(PROBABILITY))
    # sequence KD: N-best weights softmax(score / seq_temperature)
    seq_temperature: float = field(default=1.0, metadata=allowed(POSITIVE))
    # Student frames by which a streaming student emits later than the full-context teacher: its
    # frame t is compared with the teacher's frame t - frame_delay (frame, feature, relation KD).
    frame_delay: int = field(default=0, metadata=allowed(NON_NEGATIVE))
    # {student block: teacher layer}, 0-based
    layer_map: dict[int, int] = field(default_factory=dict, metadata=allowed(NON_NEGATIVE))
    pseudo_label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    weights: KDWeights = field(default_factory=KDWeights)

    def __post_init__(self) -> None:
        layer_map = {} if self.layer_map is None else self.layer_map
        if isinstance(layer_map, dict) and all(_is_index(k) and _is_index(v) for k, v in layer_map.items()):
            layer_map = {int(s): int(t) for s, t in layer_map.items()}  # YAML may quote a key: "0": 3
        self.layer_map = layer_map
        check_fields(self)

    def enabled_terms(self) -> list[str]:
        return [t for t in KD_TERMS if getattr(self.weights, t).enabled]


def _is_index(x: Any) -> bool:
    """An int, or a string of one (a quoted YAML mapping key)."""
    if isinstance(x, str):
        return x.strip().lstrip("-").isdigit()
    return isinstance(x, int) and not isinstance(x, bool)


_SECTIONS = {
    "DataConfig": DataConfig, "ModelConfig": ModelConfig, "DynamicChunksConfig": DynamicChunksConfig, "AugmentConfig": AugmentConfig,
    "OptimConfig": OptimConfig, "RunConfig": RunConfig, "AverageConfig": AverageConfig, "KDConfig": KDConfig,
    "KDWeights": KDWeights, "TermWeight": TermWeight, "PseudoLabelConfig": PseudoLabelConfig,
}
