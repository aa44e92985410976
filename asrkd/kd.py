"""Knowledge distillation as a loss object: `KDLoss` = weighted CTC + the teacher's terms.

One batch, from the student's output to the loss::

    student(feats) ─► log_probs [B, T, V], out_lens [B], hidden (one [B, T, D] per block)
    target source (asrkd.teacher_targets: cache | online teacher | in memory)
        ─► teacher posteriors at the teacher's ids and rate ─► student ids (VocabularyMap)
        ─► student frame rate (pool_frames) ─► student length (align_to_student)
        ─► a streaming student's delay (delay_frames: student frame t vs teacher frame t - d)
    loss = Σ_term weight_term(step) · term       (each term logged unweighted; asrkd.losses)

Terms: ``ctc`` (the batch's transcripts, with intermediate CTC when the `CTCLoss` has it),
``frame`` (top-k KL with blank handling), ``sequence`` (CTC to each of the teacher's N-best),
``feature`` (hidden states through a learned projection, owned here) and ``relation`` (frame
similarity matrices). Weights are `asrkd.config.TermWeight` (constant, or a linear / cosine ramp
over the optimiser steps). `asrkd.train.TrainingLoop` trains with it like with plain CTC: the
projections' parameters join the optimiser (`parameters`) and their state the checkpoints'
trainer state (`state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from torch import Tensor, nn

from asrkd.cache import TeacherTargets
from asrkd.config import KD_TERMS, KDWeights, TermWeight
from asrkd.contract import Contract
from asrkd.errors import AsrkdError
from asrkd.features import FrontendConfig
from asrkd.losses import (
    CTCLoss,
    FrameRateError,
    ModelOutput,
    TrainingLoss,
    VocabularyMap,
    VocabularyMismatchError,
    align_to_student,
    delay_frames,
    feature_kd_loss,
    frame_kd_loss,
    frame_ratio,
    frame_weights,
    map_targets,
    pool_frames,
    relation_kd_loss,
    sequence_kd_loss,
)
from asrkd.teacher_targets import TargetSource
from asrkd.text import BLANK, vocabulary_sha256

__all__ = ["FRAME_TERMS", "KDLoss", "KDSettingError"]

FRAME_TERMS = ("frame", "feature", "relation")
"""Terms that compare teacher and student frame by frame (they need the two frame rates to line up)."""


class KDSettingError(AsrkdError, ValueError):
    """An argument of `KDLoss` is invalid. The message starts with the argument's name, which is
    also the key of the ``kd:`` config section (`asrkd.config.KDConfig`)."""


class KDLoss(TrainingLoss):
    """CTC plus distillation terms from a teacher, weighted per optimiser step.

    ``targets``: where the teacher's targets come from (`asrkd.teacher_targets`). ``model``: the
    student (`ConformerCTC`; its config gives the blocks and width of the feature projections),
    ``tokenizer``: the student's, ``frontend``: the student's front-end config (with the model's
    subsampling, the student's frame shift; `asrkd.contract.Contract`). The keyword arguments are
    the ``kd:`` config section's: ``weights`` (`KDWeights`, or ``{term: number | TermWeight}``;
    unnamed terms weigh 0), ``temperature`` (frame KD, loss scaled by tau^2), ``blank_mode`` and
    ``blank_weight`` (`asrkd.losses.frame_weights`), ``seq_temperature`` (N-best weights),
    ``layer_map`` ({student block: teacher layer}, 0-based, for feature / relation KD),
    ``frame_delay`` (student frames a streaming student emits later than the teacher: its frame t
    is compared with the teacher's frame t - frame_delay in the frame, feature and relation
    terms; its first frame_delay frames get no target; `asrkd.losses.delay_frames`). ``ctc``:
    the ctc term (default: `CTCLoss` without intermediate CTC).

    Raises `KDSettingError` for inconsistent arguments, `VocabularyMismatchError` when frame KD
    is asked across vocabularies that cannot be matched or share too few symbols
    (`MIN_SHARED_SYMBOLS`: a foreign vocabulary, even of the same size), `FrameRateError` when
    the frame rates do not line up; both name the target source (a cache names its teacher).

    >>> kd = KDLoss(CachedTargets("runs/kd_cache"), model, tokenizer,
    ...             weights={"ctc": 1.0, "frame": 1.0}, temperature=2.0)      # doctest: +SKIP
    >>> out = model(feats, feat_lens, return_hidden=kd.needs_hidden(step))    # doctest: +SKIP
    >>> loss, terms = kd(out, batch, step)                                     # doctest: +SKIP
    """

    def __init__(self, targets: TargetSource, model: nn.Module, tokenizer, frontend: FrontendConfig | None = None, *,
                 weights: KDWeights | Mapping[str, float | TermWeight] | None = None, temperature: float = 1.0,
                 blank_mode: str = "all", blank_weight: float = 0.1, seq_temperature: float = 1.0,
                 layer_map: Mapping[int, int] | None = None, frame_delay: int = 0, ctc: CTCLoss | None = None):
        self.source = targets
        self.tokenizer = tokenizer
        self.weights = _as_weights(weights)
        self.terms = [t for t in KD_TERMS if getattr(self.weights, t).enabled]
        self.temperature = temperature
        self.blank_mode = blank_mode
        self.blank_weight = blank_weight
        self.seq_temperature = seq_temperature
        self.layer_map = {int(s): int(t) for s, t in (layer_map or {}).items()}
        if isinstance(frame_delay, bool) or not isinstance(frame_delay, int) or frame_delay < 0:
            raise KDSettingError(f"frame_delay: {frame_delay!r} must be a whole number of student frames >= 0")
        self.frame_delay = frame_delay
        self.ctc = ctc or CTCLoss(model)
        hidden_terms = {"feature", "relation"} & set(self.terms)
        if hidden_terms and not self.layer_map:
            raise KDSettingError("layer_map: feature/relation KD needs {student_block: teacher_layer}, e.g. {3: 7}")
        if not targets.has_posteriors and "frame" in self.terms:
            raise KDSettingError(f"weights: {targets} has no posteriors (a sequence-level teacher such as "
                                 "Whisper, or a text-only one), so frame KD cannot use it; the ctc (pseudo-label) "
                                 "and sequence terms can, and feature/relation KD where it gives hidden states")
        self.layers = sorted(set(self.layer_map.values())) if hidden_terms else []
        self.vmap: VocabularyMap | None = None
        try:
            self.vmap = VocabularyMap.build(targets.vocabulary, tokenizer.tokens)
        except VocabularyMismatchError:
            if "frame" in self.terms:
                raise
        if self.vmap is not None and "frame" in self.terms:
            _check_shared_symbols(targets, tokenizer, self.vmap)
        blank = targets.blank_id
        if self.vmap is not None and targets.vocabulary[blank] != BLANK:
            raise VocabularyMismatchError(f"{targets}: the teacher's blank (id {blank}) is "
                                          f"{targets.vocabulary[blank]!r}, not {BLANK!r}")
        student = Contract.from_parts(frontend or FrontendConfig(), model.config)
        if targets.sample_rate is not None and targets.sample_rate != student.sample_rate:
            raise KDSettingError(f"{targets} expects {targets.sample_rate} Hz audio, but it would be fed the "
                                 f"student's batches at {student.sample_rate} Hz (frontend.sample_rate); use a "
                                 "posterior cache (built at the teacher's rate) or a student front end at the "
                                 "teacher's rate")
        student_shift = student.output_frame_shift
        try:
            self.ratio = frame_ratio(targets.frame_shift, student_shift) if set(FRAME_TERMS) & set(self.terms) else 1
        except FrameRateError as e:  # say which teacher (which cache) the frames came from
            raise FrameRateError(f"{targets}: {e}") from None
        self.projections = self._projections(model)

    def _projections(self, model: nn.Module) -> nn.ModuleDict:
        """Linear(student d_model -> teacher width) per mapped student block, for feature KD;
        created in block order (their initial weights come from the global torch RNG)."""
        projections = nn.ModuleDict()
        if "feature" not in self.terms:
            return projections
        n_layers = model.config.n_layers
        for s_layer, t_layer in sorted(self.layer_map.items()):
            if s_layer >= n_layers:
                raise KDSettingError(f"layer_map: student block {s_layer} does not exist "
                                     f"(the student has {n_layers}, 0-based)")
            projections[str(s_layer)] = nn.Linear(model.config.d_model, self.source.hidden_size(t_layer))
        return projections

    # -------------------------------------------------------------- TrainingLoss
    def parameters(self) -> list[nn.Parameter]:
        """The feature projections' parameters (trained with the student)."""
        return list(self.projections.parameters())

    def state_dict(self) -> dict[str, Tensor]:
        """The feature projections' weights, ``{"<block>.weight": [D_t, D_s], "<block>.bias": [D_t]}``."""
        return self.projections.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the feature projections' weights (`state_dict`'s keys)."""
        self.projections.load_state_dict(state)

    def weights_at(self, step: int) -> dict[str, float]:
        """The enabled terms' weights at optimiser step ``step``."""
        return {t: getattr(self.weights, t).at(step) for t in self.terms}

    def needs_hidden(self, step: int = 0) -> bool:
        """Hidden states are read at ``step`` by feature / relation KD and intermediate CTC."""
        w = self.weights_at(step)
        return (w.get("feature", 0) > 0 or w.get("relation", 0) > 0
                or (w.get("ctc", 0) > 0 and self.ctc.needs_hidden(step)))

    def __call__(self, out: ModelOutput, batch: dict, step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """out: the student's (log_probs [B, T, V], out_lens [B], hidden); batch: an asrkd collated
        batch (``targets`` [B, U] for the ctc term, ``utt_ids``, ``wavs``/``wav_lens`` for an online
        teacher). Returns the weighted total and the logged terms: each term unweighted, the ctc
        term's parts (``ctc``, ``interctc``) and ``w_<term>`` for scheduled weights."""
        log_probs, out_lens, hidden = out
        w = self.weights_at(step)
        losses: dict[str, Tensor] = {}
        ctc_parts: dict[str, float] = {}
        if w.get("ctc", 0) > 0:
            if batch["targets"] is None:
                raise ValueError("a batch without transcripts reached the ctc term")
            losses["ctc"], ctc_parts = self.ctc(out, batch, step)
        teacher = self.source.fetch(
            batch, self.layers, posteriors=any(w.get(t, 0) > 0 for t in FRAME_TERMS),
            nbest_tokenizer=self.tokenizer if w.get("sequence", 0) > 0 else None)
        targets = None if teacher.targets is None else self.student_view(teacher.targets, out_lens, log_probs.shape[1])
        # The frame-by-frame terms pair student frame d + j with teacher frame j (d = frame_delay).
        d = self.frame_delay
        frame_log_probs, frame_hidden = log_probs, hidden
        if targets is not None and d:
            targets = delay_frames(targets, out_lens, d)
            frame_log_probs = log_probs[:, d:]
            frame_hidden = None if hidden is None else [h[:, d:] for h in hidden]
        if w.get("frame", 0) > 0:
            weights = frame_weights(targets, self.blank_mode, self.blank_weight)
            losses["frame"] = frame_kd_loss(frame_log_probs, targets, weights, self.temperature)
        if w.get("sequence", 0) > 0:
            losses["sequence"] = sequence_kd_loss(log_probs, out_lens, teacher.nbest, self.seq_temperature)
        if w.get("feature", 0) > 0:
            losses["feature"] = sum(
                feature_kd_loss(frame_hidden[s], targets.hidden[t], targets.lengths, self.projections[str(s)])
                for s, t in self.layer_map.items()) / len(self.layer_map)
        if w.get("relation", 0) > 0:
            losses["relation"] = sum(
                relation_kd_loss(frame_hidden[s], targets.hidden[t], targets.lengths)
                for s, t in self.layer_map.items()) / len(self.layer_map)
        total = sum(w[name] * value for name, value in losses.items())
        terms = {name: value.item() for name, value in losses.items()}
        terms.update(ctc_parts)  # with intermediate CTC: `ctc` of the output alone and `interctc`
        terms.update({f"w_{t}": w[t] for t in self.terms if getattr(self.weights, t).schedule != "constant"})
        return total, terms

    def student_view(self, targets: TeacherTargets, student_lens: Tensor, max_t: int) -> TeacherTargets:
        """Teacher targets [B, T_teacher, K] -> the student's token ids, frame rate and length
        [B, max_t, K] (``student_lens`` [B]: the student's valid frames)."""
        targets = replace(targets, lengths=targets.lengths.to(student_lens.device))
        vocab_size = len(self.source.vocabulary)
        if self.vmap is not None:
            targets = map_targets(targets, self.vmap)
            vocab_size = self.vmap.student_size
        return align_to_student(pool_frames(targets, self.ratio, vocab_size), student_lens, max_t)


# Frame KD across two vocabularies maps the teacher's symbols onto the student's by name. When
# the student has less than this share of its symbols in the teacher's vocabulary, the vocabulary
# is foreign (another language, another tokenizer of the same size): most of the teacher's mass
# would land in the residual and the student would learn to emit nothing it can spell.
MIN_SHARED_SYMBOLS = 0.5


def _check_shared_symbols(targets: TargetSource, tokenizer, vmap: VocabularyMap) -> None:
    """Refuse frame KD between a teacher and a student whose vocabularies share too few symbols,
    naming both (`MIN_SHARED_SYMBOLS`)."""
    student = [t for t in tokenizer.tokens if t != BLANK]
    missing = set(vmap.uncovered_student)
    shared = sum(t not in missing for t in student)
    if vmap.identity or shared >= MIN_SHARED_SYMBOLS * len(student):
        return
    raise VocabularyMismatchError(
        f"{targets}: the teacher's vocabulary ({_vocabulary_words(targets.vocabulary)}) and the student's "
        f"({_vocabulary_words(tokenizer.tokens)}) share only {shared} of the student's {len(student)} symbols: "
        "frame KD would teach the student nothing it can spell. Train the student on the teacher's tokens "
        "(data.tokens), use a cache or teacher built for this student's vocabulary, or set kd.weights.frame: 0"
    )


def _vocabulary_words(tokens) -> str:
    """A vocabulary in an error message: size, hash and a few symbols."""
    examples = ", ".join(repr(t) for t in [t for t in tokens if t != BLANK][:6])
    return f"{len(tokens)} tokens, sha256 {vocabulary_sha256(tokens)[:12]}, e.g. {examples}"


def _as_weights(weights: KDWeights | Mapping[str, float | TermWeight] | None) -> KDWeights:
    """``{term: number | TermWeight}`` -> `KDWeights` (terms not named weigh 0)."""
    if weights is None or isinstance(weights, KDWeights):
        return weights or KDWeights()
    unknown = sorted(set(weights) - set(KD_TERMS))
    if unknown:
        raise KDSettingError(f"weights: unknown term(s) {unknown}; terms are {list(KD_TERMS)}")
    return KDWeights(**{t: TermWeight(0.0) for t in KD_TERMS} | {
        t: w if isinstance(w, TermWeight) else TermWeight(float(w)) for t, w in weights.items()})
