"""From a YAML config to the training loop's parts: `build_training(config) -> TrainingParts`.

What each config section becomes::

    data      -> utterances of each source (manifests, Lhotse, HF datasets; + pseudo-labels),
                 checked first (asrkd.data.preflight; data.on_bad_audio refuses or skips bad
                 audio lines), tokenizer, BucketedLoader, DevSet
    frontend  -> LogMel                     model  -> ConformerCTC (+ init_from weights),
                                                      a causal model's DynamicChunks
    augment   -> waveform transforms (AudioDataset) and FeatureAugment (VTLP, SpecAugment)
    optim     -> AdamW + warm-up / cosine LambdaLR, max_steps
    kd        -> a target source (asrkd.teacher_targets) and KDLoss; without distill: CTCLoss
    run       -> seed, threads, out_dir and the loop's options

The order of construction is part of the result: the global torch RNG is seeded with
``run.seed``, then draws, in this order, nothing while a teacher is loaded (inside
``fork_rng``), the model's initial weights, the KD projections' initial weights; the DataLoader
seeds its workers from a generator of its own. (With ``model.init_from``, building that
checkpoint's model draws too: for its tokenizer before the student, when ``data.tokens`` is
unset, and for its weights after.) The same config therefore gives the same weights and the
same losses, step for step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from asrkd.cache import open_cache
from asrkd.checkpoint import load_checkpoint, resolve_checkpoint
from asrkd.config import ConfigError, OptimConfig, TrainConfig
from asrkd.contract import Contract
from asrkd.data import (
    AddNoise,
    AudioDataset,
    BandLimit,
    BreathNoise,
    BucketingBatchSampler,
    Compose,
    Gain,
    SpecAugment,
    SpeedPerturb,
    Utterance,
)
from asrkd.data.check import ctc_shortfall
from asrkd.data.manifest import ManifestError
from asrkd.data.preflight import (
    SKIPPED_FILE,
    BadItem,
    CheckedSource,
    SkipLog,
    preflight,
    refuse,
    summary,
)
from asrkd.decoding import Lexicon, LexiconError
from asrkd.features import FrontendConfig, LogMel
from asrkd.kd import FRAME_TERMS, KDLoss, KDSettingError
from asrkd.loader import BucketedLoader
from asrkd.loop import DevSet, DynamicChunks, FeatureAugment, TrainingLoop, init_distributed
from asrkd.losses import CTCLoss, TrainingLoss
from asrkd.models.conformer import ConformerCTC, build_preset, count_parameters
from asrkd.pseudo_labels import (
    PSEUDO_LABEL_DROPS,
    drop_unspellable,
    pseudo_label,
    tokenizer_from_cache,
    write_drops,
)
from asrkd.streaming import frontend_streaming_problems
from asrkd.teacher import Teacher, load_teacher
from asrkd.teacher_targets import CachedTargets, OnlineTargets, TargetSource
from asrkd.text import CharTokenizer, Tokenizer, load_tokenizer, normalize_text

__all__ = ["TrainingParts", "build_training", "lr_factor"]


@dataclass
class TrainingParts:
    """What `build_training` made of a config: the loop's parts and what they were made from."""

    config: TrainConfig
    train_utts: list[Utterance]
    tokenizer: Tokenizer
    frontend: LogMel
    model: ConformerCTC
    data: BucketedLoader  # .dataset: the AudioDataset, .sampler: the BucketingBatchSampler
    augment: FeatureAugment
    loss: TrainingLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    max_steps: int
    dev: DevSet | None
    chunks: DynamicChunks | None = None  # a causal model's dynamic chunk training, when enabled

    def loop(self) -> TrainingLoop:
        """The `TrainingLoop` over these parts, with the config's run options."""
        run = self.config.run
        return TrainingLoop(
            self.model, self.frontend, self.data, self.optimizer, self.loss, tokenizer=self.tokenizer,
            out_dir=run.out_dir, max_steps=self.max_steps, scheduler=self.scheduler, augment=self.augment,
            chunks=self.chunks, dev=self.dev, grad_clip=self.config.optim.grad_clip, log_every=run.log_every,
            checkpoint_every=run.checkpoint_every, keep_last=run.keep_last, progress=run.progress,
            keep_epochs=run.keep_epochs, average_epochs=run.average.epochs, average_by=run.average.by,
            train_config=self.config.to_dict())

    def summary(self) -> str:
        """One line: model size, data size, steps."""
        hours = sum(u.duration for u in self.train_utts) / 3600
        return (f"model {self.config.model.preset}: {count_parameters(self.model) / 1e6:.2f} M params; "
                f"{len(self.train_utts)} train utterances ({hours:.2f} h); "
                f"{len(self.data)} steps/epoch; {self.max_steps} steps")


def build_training(config: TrainConfig, distill: bool = False, teacher: Teacher | None = None) -> TrainingParts:
    """Build every part of a training run from ``config``; see the module docstring.

    ``distill``: train with `KDLoss` from the ``kd`` section (else `CTCLoss`). ``teacher``: an
    already built teacher for ``kd.teacher_mode: online`` (else ``kd.teacher`` is loaded); with a
    cache it is only used to check the cache's fingerprint. Raises `ConfigError` naming the key,
    `ManifestError` naming the FILE:LINE of a bad training or dev line (``data.on_bad_audio``).
    """
    rank, world_size = init_distributed()
    is_main = rank == 0
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    _validate(config)
    if distill:
        _validate_kd(config, teacher)
    torch.manual_seed(config.run.seed)

    checked = _checked_sources(config, is_main)  # refuses bad audio lines (data.on_bad_audio: error) before any write
    utts = [u for c in checked.train for u in c.utterances]
    if not distill:
        _check_labelled(utts, checked.places)
    source, tokenizer, drops = None, None, []
    if distill:
        source = _target_source(config, utts, teacher)
        if any(u.text is None for u in utts):
            utts, tokenizer, drops = _pseudo_labelled(config, utts, source)
            if not utts:
                if is_main:
                    write_drops(config.run.out_dir, drops)
                raise ConfigError(f"every unlabelled utterance was dropped; see "
                                  f"{config.run.out_dir}/{PSEUDO_LABEL_DROPS}")
    dev_utts = checked.dev.utterances if checked.dev else []
    dev_lexicon = _dev_lexicon(config)
    tokenizer = tokenizer or _tokenizer(config, utts)
    frontend = LogMel(FrontendConfig.from_dict(config.frontend))
    model_config = build_preset(config.model.preset, vocab_size=tokenizer.vocab_size,
                                n_mels=frontend.config.n_mels, **config.model.overrides)
    short = checked.too_short_for_ctc(utts, tokenizer, Contract.from_parts(frontend.config, model_config).output_frame_rate)
    if not distill:
        utts = checked.set_aside(utts, short)
    elif short and is_main and "ctc" in config.kd.enabled_terms():  # the KD terms still learn from them
        print(f"{len(short)} training utterance(s) too short for CTC on their text, e.g. {short[0].where}: "
              f"{short[0].reason.split(';')[0]}; their ctc term is 0, the distillation terms train on them")
    if is_main:
        if drops:
            write_drops(config.run.out_dir, drops)
        checked.report()
    model = ConformerCTC(model_config)
    chunks = _dynamic_chunks(config, model, frontend.config)
    sampler = BucketingBatchSampler(
        [u.duration for u in utts], max_batch_seconds=config.data.max_batch_seconds,
        num_buckets=config.data.num_buckets, seed=config.run.seed, rank=rank, world_size=world_size)
    dataset = AudioDataset(utts, sample_rate=frontend.config.sample_rate, tokenizer=tokenizer,
                           transform=_waveform_augmentation(config, frontend.config.sample_rate), seed=config.run.seed,
                           cache_audio=config.data.cache_audio)
    a = config.augment
    augment = FeatureAugment(
        SpecAugment(freq_masks=a.freq_masks, freq_width=a.freq_width, time_masks=a.time_masks,
                    time_width=a.time_width),
        vtlp_prob=a.vtlp_prob, vtlp_alpha=tuple(a.vtlp_alpha), seed=config.run.seed)
    # Batches per epoch vary a little with the shuffle, so an epoch ends when its sampler is
    # exhausted, and `epochs` converts to the exact sum of the epochs' batch counts.
    max_steps = config.optim.max_steps or sum(_batches_in_epoch(sampler, e) for e in range(config.optim.epochs))
    try:
        loss: TrainingLoss = CTCLoss(model, config.model.interctc_layers, config.model.interctc_weight)
    except ValueError as e:
        raise ConfigError(f"model.{e}") from None
    if config.model.init_from:
        _init_weights(model, tokenizer, config.model.init_from, is_main)
    if distill:
        loss = _kd_loss(config, source, model, tokenizer, frontend, loss)
        if "sequence" in loss.terms and isinstance(source, CachedTargets):
            source.nbest([u.utt_id for u in utts], tokenizer)  # spelled once, up front: fails early, counts skips
        if is_main:
            _report_kd(loss, drops, config.run.out_dir)
    o = config.optim
    optimizer = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=o.lr, betas=tuple(o.betas),
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, optim=o, max_steps=max_steps))
    data = BucketedLoader(dataset, sampler, num_workers=config.data.num_workers, seed=config.run.seed,
                          skip_log=checked.log)
    dev = DevSet(dev_utts, dev_lexicon, config.data.max_batch_seconds) if dev_utts else None
    return TrainingParts(config, utts, tokenizer, frontend, model, data, augment, loss, optimizer, scheduler,
                         max_steps, dev, chunks)


def lr_factor(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up over ``optim.warmup_steps``, then
    constant or a cosine decay to ``optim.min_lr_ratio`` at ``max_steps``."""
    o = optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, max_steps - o.warmup_steps))
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Checks of the config as a whole (each section checks its own fields in asrkd.config)
# ---------------------------------------------------------------------------------------------


def _validate(c: TrainConfig) -> None:
    """What no single field's check sees (asrkd.config checks each value's type and range at load)."""
    if not c.data.train:
        raise ConfigError("data.train: give at least one training manifest or data source")
    _check_out_dir(Path(c.run.out_dir))


# What a run writes into run.out_dir: a folder holding one of them is an earlier run's.
_RUN_FILES = ("config.yaml", "tokens.txt", "train_log.csv", "checkpoints", "tb", SKIPPED_FILE, PSEUDO_LABEL_DROPS)


def _check_out_dir(out: Path) -> None:
    """run.out_dir must be a new or empty folder, or an earlier run's (resumed, or written over
    file by file): never a file, nor a folder of someone's other files."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run.out_dir: {out} is a file; give a folder for the run")
    if out.is_dir() and not any((out / name).exists() for name in _RUN_FILES):
        others = sorted(p.name for p in out.iterdir())
        if others:
            raise ConfigError(f"run.out_dir: {out} is not an asrkd run folder but holds {others[:3]}"
                              f"{' ...' if len(others) > 3 else ''}; give a new folder (or an earlier run's)")


def _validate_kd(c: TrainConfig, teacher: Teacher | None) -> None:
    kd, a = c.kd, c.augment
    terms = kd.enabled_terms()
    if not set(terms) - {"ctc"}:
        raise ConfigError("kd.weights: no distillation term has a weight > 0 (frame, sequence, feature, "
                          "relation); for CTC alone use `asrkd train`")
    if kd.teacher_mode == "cache" and not kd.cache:
        raise ConfigError("kd.cache: give the posterior cache folder (asrkd cache build), "
                          "or set kd.teacher_mode: online with kd.teacher")
    if kd.teacher_mode == "online" and not kd.teacher and teacher is None:
        raise ConfigError("kd.teacher: online distillation needs a teacher (checkpoint or HF folder)")
    if c.model.interctc_layers and "ctc" not in terms:
        raise ConfigError("model.interctc_layers is mixed into the ctc term, but kd.weights.ctc is 0: "
                          "give the ctc term a weight, or drop interctc_layers")
    frame_level = set(FRAME_TERMS) & set(terms)
    if kd.teacher_mode == "cache" and frame_level and list(a.speed_factors or [1.0]) != [1.0]:
        raise ConfigError(
            f"augment.speed_factors is {a.speed_factors}: speed perturbation changes the audio's length, "
            f"so the student's frames would not line up with the teacher's cached ones "
            f"({', '.join(sorted(frame_level))} KD); set augment.speed_factors: [1.0] (noise, band-limiting "
            "and SpecAugment are fine), or use kd.teacher_mode: online"
        )


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


# How to go on past bad audio lines, said by every refusal of them.
_SKIP_INSTEAD = "set data.on_bad_audio: skip to leave them out, count them and list them in the run folder"


@dataclass
class _CheckedData:
    """The pre-flight of data.train and data.dev (`asrkd.data.preflight`), and where their bad
    lines go: ``log`` None refuses them (``data.on_bad_audio: error``), else it lists them
    (``skip``; rank 0 writes it to the run folder)."""

    train: list[CheckedSource]
    dev: CheckedSource | None
    log: SkipLog | None

    def too_short_for_ctc(self, utts: list[Utterance], tokenizer: Tokenizer, ctc_frame_rate: float) -> list[BadItem]:
        """Those of ``utts`` too short for CTC on their text at the model's ``ctc_frame_rate``
        (output frames per second): their CTC loss is zero (``zero_infinity``), unnoticed."""
        bad, places = [], self.places
        for u in utts:
            text = normalize_text(u.text) if u.text else ""
            if not text or tokenizer.unknown_characters(text, normalize=False):  # unknown: AudioDataset names them
                continue
            why = ctc_shortfall(text, u.duration, tokenizer, ctc_frame_rate)
            if why is not None:
                manifest, line = places.get(u.utt_id, ("", 0))
                bad.append(BadItem(manifest, line, u.audio_filepath, u.utt_id, "ctc_infeasible", why))
        return bad

    def set_aside(self, utts: list[Utterance], bad: list[BadItem]) -> list[Utterance]:
        """``utts`` without ``bad`` (`too_short_for_ctc`): refused (``error``), else left out and listed."""
        if self.log is None:
            refuse(bad, _SKIP_INSTEAD)
            return utts
        self.log.before += bad
        ids = {b.utt_id for b in bad}
        kept = [u for u in utts if u.utt_id not in ids]
        if not kept:
            self.report()
            raise ConfigError(f"data.train: every line was left out as bad audio; see {self.log.path}")
        return kept

    @property
    def places(self) -> dict[str, tuple[str, int]]:
        """utt_id -> (manifest, line) of every training utterance kept by the pre-flight."""
        return {u.utt_id: (c.source, line) for c in self.train for u, line in zip(c.utterances, c.lines, strict=True)}

    def report(self) -> None:
        """Under ``skip``: write the run's ``skipped.jsonl`` and say how many lines were left out."""
        if self.log is None:
            return
        self.log.write()
        if self.log.before:
            print(f"data.on_bad_audio: skip: left out {summary(self.log.before)}; listed in {self.log.path}")


def _checked_sources(config: TrainConfig, is_main: bool) -> _CheckedData:
    """Read data.train and data.dev with the pre-flight's audio checks; refuse their bad lines
    (``data.on_bad_audio: error``, before anything is written) or set them aside (``skip``)."""
    train = [preflight(source) for source in config.data.train]
    dev = preflight(config.data.dev) if config.data.dev else None
    bad = [b for c in (*train, dev) if c is not None for b in c.bad]
    checked = _CheckedData(train, dev, None)
    if config.data.on_bad_audio == "error":
        refuse(bad, _SKIP_INSTEAD)
    else:
        path = Path(config.run.out_dir) / SKIPPED_FILE if is_main else None
        checked.log = SkipLog(path, checked.places, bad)
        if not any(c.utterances for c in train):
            checked.report()
            raise ConfigError(f"data.train: every line was left out as bad audio; see {path}")
    if dev is not None and not any(normalize_text(u.text or "") for u in dev.utterances):
        left_out = f" ({len(dev.bad)} left out as bad audio)" if dev.bad else ""
        raise ManifestError(f"{dev.source}: no line has a reference text to score the dev WER against{left_out}; "
                            "give its lines their 'text', or leave data.dev unset")
    return checked


def _check_labelled(utts: list[Utterance], places: dict[str, tuple[str, int]]) -> None:
    """Plain CTC training needs every transcript: name the first line without one."""
    unlabelled = [u for u in utts if u.text is None]
    if unlabelled:
        manifest, line = places.get(unlabelled[0].utt_id, ("data.train", 0))
        raise ManifestError(
            f"{manifest}:{line}: no 'text' ({len(unlabelled)} of {len(utts)} line(s) have none); `asrkd train` "
            "needs a transcript on every line: add them, or use `asrkd distill` with a teacher's cache, which "
            "gives unlabelled lines pseudo-labels"
        )


def _tokenizer(config: TrainConfig, utts: list[Utterance]):
    """data.tokens, else the init_from checkpoint's vocabulary, else the training texts' characters."""
    if config.data.tokens:
        return load_tokenizer(config.data.tokens)
    if config.model.init_from:  # keep the vocabulary the initial weights were trained with
        return load_checkpoint(resolve_checkpoint(config.model.init_from)).tokenizer
    texts = [u.text for u in utts if u.text]
    if not texts:
        raise ConfigError("data.train: no transcripts to build a vocabulary from; give data.tokens")
    return CharTokenizer.from_texts(texts)


def _dev_lexicon(config: TrainConfig) -> Lexicon | None:
    path = config.data.dev_lexicon
    if path is None:
        return None
    if not config.data.dev:
        raise ConfigError("data.dev_lexicon is set but data.dev is not: there is no dev set to decode")
    try:
        return Lexicon.from_file(path)
    except LexiconError as e:
        raise ConfigError(f"data.dev_lexicon: {e}") from None


def _waveform_augmentation(config: TrainConfig, sample_rate: int) -> Compose | None:
    """The ``augment`` section's waveform transforms, at the front end's ``sample_rate``."""
    a = config.augment
    parts = []
    if a.speed_factors and list(a.speed_factors) != [1.0]:
        parts.append(SpeedPerturb(tuple(a.speed_factors), sample_rate=sample_rate))
    if a.breath_prob > 0:  # before band-limiting: the noise is band-passed like the speech
        parts.append(BreathNoise(level_db=tuple(a.breath_db), band_hz=tuple(a.breath_hz), prob=a.breath_prob,
                                 sample_rate=sample_rate))
    if a.bandlimit_prob > 0:
        parts.append(BandLimit(prob=a.bandlimit_prob, cutoff_hz=tuple(a.bandlimit_hz), sample_rate=sample_rate))
    if a.noise_prob > 0:
        parts.append(AddNoise(snr_db=tuple(a.snr_db), prob=a.noise_prob, sample_rate=sample_rate))
    if a.gain_prob > 0:
        parts.append(Gain(gain_db=tuple(a.gain_db), prob=a.gain_prob))
    return Compose(parts) if parts else None


def _batches_in_epoch(sampler: BucketingBatchSampler, epoch: int) -> int:
    current = sampler.epoch
    sampler.set_epoch(epoch)
    n = len(sampler)
    sampler.set_epoch(current)
    return n


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------


def _dynamic_chunks(config: TrainConfig, model: ConformerCTC, frontend: FrontendConfig) -> DynamicChunks | None:
    """The training chunkings of a causal model (None: the model's own chunking, every batch).
    Refuses dynamic chunks for a model that cannot stream, and a front end that cannot stream
    for a causal model (what it learns could not be run on a stream)."""
    m, dynamic = config.model, config.model.dynamic_chunks
    if not model.config.causal:
        if dynamic.enabled:
            raise ConfigError(f"model.dynamic_chunks.enabled: model.preset {m.preset!r} is not causal, so its "
                              "attention cannot be chunked; use a streaming preset (student-stream) or "
                              "model.overrides: {causal: true}, or turn dynamic_chunks off")
        return None
    problems = frontend_streaming_problems(frontend)
    if problems:
        raise ConfigError(f"model.preset {m.preset!r} is causal (a streaming model), but its front end needs the "
                          "whole utterance: " + "; ".join(problems))
    if not dynamic.enabled:
        return None
    return DynamicChunks(dynamic.max_chunk_size, dynamic.full_context_prob, dynamic.max_left_chunks,
                         seed=config.run.seed)


def _init_weights(model: ConformerCTC, tokenizer, path: str, is_main: bool) -> None:
    """Copy the weights of checkpoint ``path``; its model shape and vocabulary must match
    (dropout, which has no weights, may differ: fine-tuning often changes it)."""
    init = load_checkpoint(resolve_checkpoint(path))
    if dataclasses.replace(init.model.config, dropout=model.config.dropout) != model.config:
        raise ConfigError(
            f"model.init_from: {init.path} is a {init.model.config} but this run builds "
            f"{model.config}; use the same preset and overrides"
        )
    if init.tokenizer.fingerprint() != tokenizer.fingerprint():
        raise ConfigError(
            f"model.init_from: {init.path} was trained with another vocabulary than data.tokens "
            f"gives; leave data.tokens unset to reuse the checkpoint's"
        )
    model.load_state_dict(init.model.state_dict())
    if is_main:
        print(f"initialised from {init.path} (step {init.config.get('step')})")


# ---------------------------------------------------------------------------------------------
# distillation
# ---------------------------------------------------------------------------------------------


def _target_source(config: TrainConfig, utts: list[Utterance], teacher: Teacher | None) -> TargetSource:
    """kd.cache (checked against the manifests and, if known, the teacher) or the online teacher."""
    kd = config.kd
    with torch.random.fork_rng():  # building the teacher must not move the student's seed
        if kd.teacher_mode == "cache":
            cache = open_cache(kd.cache)
            check_teacher = teacher or (load_teacher(kd.teacher) if kd.teacher else None)
            cache.check(utts, teacher=check_teacher)
            return CachedTargets(cache)
        label = kd.teacher if teacher is None else None
        return OnlineTargets(teacher or load_teacher(kd.teacher), top_k=kd.top_k, label=label)


def _pseudo_labelled(config: TrainConfig, utts: list[Utterance], source: TargetSource):
    """Unlabelled utterances with the teacher's best cached hypothesis as text: (kept
    utterances, the student's tokenizer, drop records)."""
    if not isinstance(source, CachedTargets):
        raise ConfigError("data.train has utterances without text: their pseudo-labels come from the teacher's "
                          "N-best in a posterior cache; build one (asrkd cache build) and set kd.cache")
    settings = config.kd.pseudo_label
    kept, drops = pseudo_label(utts, source.cache, settings)
    if config.data.tokens or config.model.init_from:
        tokenizer = _tokenizer(config, kept)  # given, or the initial checkpoint's
    else:
        tokenizer = tokenizer_from_cache(source.cache)
    kept, unspellable = drop_unspellable(kept, tokenizer, source.cache, settings)
    return kept, tokenizer, drops + unspellable


def _kd_loss(config: TrainConfig, source: TargetSource, model: ConformerCTC, tokenizer, frontend: LogMel,
             ctc: CTCLoss) -> KDLoss:
    kd = config.kd
    try:
        return KDLoss(source, model, tokenizer, frontend.config, weights=kd.weights, temperature=kd.temperature,
                      blank_mode=kd.blank_mode, blank_weight=kd.blank_weight, seq_temperature=kd.seq_temperature,
                      layer_map=kd.layer_map, frame_delay=kd.frame_delay, ctc=ctc)
    except KDSettingError as e:
        raise ConfigError(f"kd.{e}") from None


def _report_kd(loss: KDLoss, drops: list[dict], out_dir: str) -> None:
    print(f"distilling from {loss.source}; terms {loss.terms}; teacher/student frame ratio {loss.ratio}")
    if loss.vmap is not None and not loss.vmap.identity:
        print(f"vocabulary: teacher symbols without a student token (their mass joins the residual): "
              f"{loss.vmap.unmapped_teacher[:10]}; student tokens the teacher lacks: {loss.vmap.uncovered_student[:10]}")
    if drops:
        print(f"pseudo-labels: dropped {len(drops)} utterance(s), see {out_dir}/{PSEUDO_LABEL_DROPS}")
    if getattr(loss.source, "skipped_hypotheses", 0):
        print(f"sequence KD: {loss.source.skipped_hypotheses} teacher hypotheses use characters the student "
              "lacks; left out")
