"""Training losses, each on padded batches. Shapes: B utterances, T frames, V tokens, U target
tokens, K top-k entries, D hidden size.

Two layers:

* **loss terms** (functions): `ctc_loss` and the distillation terms `frame_kd_loss`,
  `sequence_kd_loss`, `feature_kd_loss`, `relation_kd_loss`. Every term is summed over the frames
  (or hypotheses) of an utterance and averaged over the utterances of the batch, so the weights
  of different terms are on one scale.
* **loss objects** (`TrainingLoss`): what `asrkd.train.TrainingLoop` calls on every batch.
  `CTCLoss` is plain CTC (with intermediate CTC); `asrkd.kd.KDLoss` adds the teacher's terms.

Teacher posteriors arrive compressed (``asrkd.cache.TeacherTargets``): per frame the K most
probable tokens and the log of the mass outside them (the *residual* bucket). Before the loss they
are brought to the student's terms:

1. vocabulary: `VocabularyMap` turns teacher token ids into student ids (identical vocabularies,
   or two character vocabularies matched symbol by symbol); teacher mass on a symbol the student
   lacks joins the residual bucket (`map_targets`);
2. frame rate: `pool_frames` averages the probabilities of the r teacher frames that fall in one
   student frame (teacher 20 ms, student 40 ms: r = 2); `frame_ratio` refuses a ratio that is not
   a whole number;
3. length: `align_to_student` crops or pads the teacher frames to the student's, refusing a length
   difference that shows the two did not see the same audio;
4. delay (a streaming student, which emits later than a full-context teacher): `delay_frames`
   pairs student frame t with teacher frame t - delay for the frame-by-frame terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from asrkd.cache import TeacherTargets
from asrkd.config import BLANK_MODES
from asrkd.contract import BLANK_ID
from asrkd.errors import AsrkdError
from asrkd.teacher import is_char_vocabulary
from asrkd.text import BLANK

__all__ = [
    "BLANK_MODES",
    "CTCLoss",
    "FrameRateError",
    "ModelOutput",
    "TrainingLoss",
    "VocabularyMap",
    "VocabularyMismatchError",
    "align_to_student",
    "ctc_loss",
    "delay_frames",
    "feature_kd_loss",
    "frame_kd_loss",
    "frame_ratio",
    "frame_weights",
    "map_targets",
    "nbest_weights",
    "pool_frames",
    "pool_hidden",
    "relation_kd_loss",
    "sequence_kd_loss",
]

# A residual bucket below this probability counts as empty: the teacher's is rounding noise of
# 1 - sum(top-k), the student's is clamped here so that its log stays finite.
RESIDUAL_FLOOR = 1e-6
_LOG_FLOOR = math.log(RESIDUAL_FLOOR)


class VocabularyMismatchError(AsrkdError, ValueError):
    """Teacher and student vocabularies cannot be matched token by token (frame KD impossible)."""


class FrameRateError(AsrkdError, ValueError):
    """Teacher and student frame rates (or lengths) do not line up."""


# ---------------------------------------------------------------------------------------------
# CTC, and the loss objects the training loop calls
# ---------------------------------------------------------------------------------------------

ModelOutput = tuple[Tensor, Tensor, "list[Tensor] | None"]
"""What ``ConformerCTC.forward`` returns: log_probs [B, T, V], out_lens [B], hidden (one
[B, T, D] per block, or None without ``return_hidden``)."""


def ctc_loss(log_probs: Tensor, out_lens: Tensor, targets: Tensor, target_lens: Tensor) -> Tensor:
    """Mean over the batch of per-utterance CTC negative log-likelihood.

    log_probs [B, T, V], out_lens [B], targets [B, U] (padded with -1), target_lens [B].
    Utterances too short for their transcript contribute 0 (``zero_infinity``) instead of NaN.
    """
    return F.ctc_loss(
        log_probs.transpose(0, 1),
        targets.clamp(min=0),
        out_lens,
        target_lens,
        blank=BLANK_ID,
        reduction="sum",
        zero_infinity=True,
    ) / log_probs.shape[0]


class TrainingLoss:
    """What `asrkd.train.TrainingLoop` asks of a loss object.

    ``loss(out, batch, step) -> (total, terms)``: ``out`` is the student's `ModelOutput`, ``batch``
    an asrkd collated batch (`asrkd.data.collate`), ``step`` the optimiser step about to be taken
    (weights may follow a schedule); ``total`` is the scalar to minimise, ``terms`` the named
    floats logged beside it. ``needs_hidden(step)`` says whether the model must return its hidden
    states. A loss with trainable modules of its own (KD projections) returns their parameters
    from `parameters` (for the optimiser) and their state from `state_dict` (for checkpoints).
    """

    def needs_hidden(self, step: int = 0) -> bool:
        """Whether the model must be called with ``return_hidden=True`` at ``step``."""
        return False

    def __call__(self, out: ModelOutput, batch: dict, step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """(total loss, logged terms) of one batch; see the class docstring."""
        raise NotImplementedError

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters the loss owns (none by default)."""
        return []

    def state_dict(self) -> dict[str, Tensor]:
        """State of the loss's own modules, saved with each checkpoint's trainer state."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore `state_dict` (a resume)."""
        if state:
            raise ValueError(f"{type(self).__name__} has no state to load, got keys {sorted(state)[:5]}")


class CTCLoss(TrainingLoss):
    """CTC of the output against the batch's transcripts, mixed with intermediate CTC.

    With ``interctc_layers`` (1-based blocks below the last; Lee & Watanabe, ICASSP 2021) the
    loss is ``(1 - w) CTC(output) + w mean_k CTC(block k)``, each block read through ``model``'s
    own CTC head (`ConformerCTC.ctc_log_probs`: no weights are added). Logged terms: ``ctc`` (the
    output's alone) and ``interctc`` (the mean of the blocks').

    >>> loss_fn = CTCLoss(model, interctc_layers=[2])                               # doctest: +SKIP
    >>> loss, terms = loss_fn(model(feats, feat_lens, return_hidden=True), batch)   # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module | None = None, interctc_layers: Sequence[int] = (),
                 interctc_weight: float = 0.3):
        self.model = model
        self.interctc_layers = list(interctc_layers)
        self.interctc_weight = interctc_weight
        if self.interctc_layers:
            if model is None:
                raise ValueError("interctc_layers: intermediate CTC reads blocks through the model's CTC head; "
                                 "pass the model")
            last = model.config.n_layers
            if any(k >= last or k < 1 for k in self.interctc_layers):
                raise ValueError(
                    f"interctc_layers {self.interctc_layers}: blocks are 1..{last}, and block {last} is the "
                    f"model's output, already trained by CTC; give blocks 1..{last - 1}"
                )

    def needs_hidden(self, step: int = 0) -> bool:
        return bool(self.interctc_layers)

    def __call__(self, out: ModelOutput, batch: dict, step: int = 0) -> tuple[Tensor, dict[str, float]]:
        """out: (log_probs [B, T, V], out_lens [B], hidden); batch["targets"] [B, U] (padded with -1),
        batch["target_lens"] [B]. Returns the scalar loss and its logged parts."""
        log_probs, out_lens, hidden = out
        loss = ctc_loss(log_probs, out_lens, batch["targets"], batch["target_lens"])
        if not self.interctc_layers:
            return loss, {"ctc": loss.item()}
        inter = sum(
            ctc_loss(self.model.ctc_log_probs(hidden[k - 1]), out_lens, batch["targets"], batch["target_lens"])
            for k in self.interctc_layers
        ) / len(self.interctc_layers)
        w = self.interctc_weight
        return (1 - w) * loss + w * inter, {"ctc": loss.item(), "interctc": inter.item()}


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------


@dataclass
class VocabularyMap:
    """``ids[teacher_id] = student_id`` or -1 (no such symbol in the student vocabulary)."""

    ids: Tensor  # [V_teacher] int64
    student_size: int
    unmapped_teacher: list[str]  # teacher symbols whose mass goes to the residual bucket
    uncovered_student: list[str]  # student symbols the teacher never names

    @classmethod
    def build(cls, teacher_tokens: Sequence[str], student_tokens: Sequence[str]) -> VocabularyMap:
        teacher_tokens, student_tokens = list(teacher_tokens), list(student_tokens)
        same = teacher_tokens == student_tokens
        if not same and not (is_char_vocabulary(teacher_tokens) and is_char_vocabulary(student_tokens)):
            kind_t = "characters" if is_char_vocabulary(teacher_tokens) else "word pieces"
            kind_s = "characters" if is_char_vocabulary(student_tokens) else "word pieces"
            raise VocabularyMismatchError(
                f"frame-level KD needs the teacher's tokens to be the student's: the teacher has "
                f"{len(teacher_tokens)} {kind_t} (e.g. {_examples(teacher_tokens)}), the student "
                f"{len(student_tokens)} {kind_s} (e.g. {_examples(student_tokens)}), and only two "
                "character vocabularies can be matched symbol by symbol. Frame KD is refused; sequence-level "
                "KD (kd.weights.sequence), pseudo-labels and feature/relation KD work across vocabularies: "
                "set kd.weights.frame to 0, or train the student on the teacher's tokens (data.tokens)"
            )
        if BLANK not in teacher_tokens or BLANK not in student_tokens:
            raise VocabularyMismatchError(f"both vocabularies need the CTC blank {BLANK!r}")
        position = {t: i for i, t in enumerate(student_tokens)}
        ids = torch.tensor([position.get(t, -1) for t in teacher_tokens], dtype=torch.long)
        return cls(
            ids=ids,
            student_size=len(student_tokens),
            unmapped_teacher=[t for t in teacher_tokens if t not in position],
            uncovered_student=[t for t in student_tokens if t not in set(teacher_tokens)],
        )

    @property
    def identity(self) -> bool:
        return len(self.ids) == self.student_size and bool(
            torch.equal(self.ids, torch.arange(self.student_size))
        )


def _examples(tokens: Sequence[str]) -> str:
    picks = [t for t in tokens if t not in (BLANK,)][:4]
    return ", ".join(repr(t) for t in picks)


def map_targets(targets: TeacherTargets, vmap: VocabularyMap) -> TeacherTargets:
    """Teacher ids -> student ids; the probability of unmapped entries is added to the residual.

    topk_ids [B, T, K] (teacher ids, -1 = empty entry) -> student ids (-1 = empty or unmapped).
    """
    if vmap.identity:
        return targets
    ids = targets.topk_ids
    mapped = torch.where(ids >= 0, vmap.ids.to(ids.device)[ids.clamp(min=0)], -1)
    lost = (ids >= 0) & (mapped < 0)
    if lost.any():
        lost_logp = targets.topk_logp.masked_fill(~lost, -math.inf)
        residual = torch.logsumexp(torch.cat([targets.residual[..., None], lost_logp], -1), -1)
    else:
        residual = targets.residual
    return replace(targets, topk_ids=mapped, topk_logp=targets.topk_logp.masked_fill(mapped < 0, -math.inf),
                   residual=residual)


# ---------------------------------------------------------------------------------------------
# Frame rate and length
# ---------------------------------------------------------------------------------------------


def frame_ratio(teacher_shift: float, student_shift: float) -> int:
    """Teacher frames per student frame. Teacher 0.02 s, student 0.04 s -> 2.

    A ratio that is not a whole number >= 1 is refused: frames would straddle student frames.
    """
    r = student_shift / teacher_shift
    if r < 1 - 1e-6 or abs(r - round(r)) > 1e-6:
        raise FrameRateError(
            f"teacher frames of {teacher_shift * 1000:g} ms and student frames of "
            f"{student_shift * 1000:g} ms do not line up (ratio {r:.4g}); frame-level KD needs the "
            "student's frame shift to be a whole multiple of the teacher's (change the student's "
            "subsampling or hop_length)"
        )
    return round(r)


def pool_frames(targets: TeacherTargets, ratio: int, vocab_size: int) -> TeacherTargets:
    """Average the probabilities of each run of ``ratio`` teacher frames: [B, T] -> [B, ceil(T / r)].

    Student frame s gets the mean of teacher frames r*s .. r*s + r - 1 (the last group: of the
    frames the utterance has). Known probabilities are averaged token by token and the K largest
    kept; everything else (the frames' residual buckets, and tokens that fall out of the top K)
    averages into the residual. A token outside one frame's top-k contributes nothing from that
    frame (its mass there is inside that frame's residual), so the result is exact when the
    frames share their top-k tokens. ``vocab_size``: the size of the id space of ``topk_ids``.
    """
    if ratio == 1:
        return targets
    b, t, k = targets.topk_ids.shape
    t_out = -(-t // ratio)
    pad = t_out * ratio - t
    ids = F.pad(targets.topk_ids, (0, 0, 0, pad), value=-1)
    probs = F.pad(targets.topk_logp, (0, 0, 0, pad), value=-math.inf).exp()
    res = F.pad(targets.residual, (0, pad), value=-math.inf).exp()
    frames_valid = torch.arange(t_out * ratio, device=ids.device)[None, :] < targets.lengths[:, None]
    n = frames_valid.view(b, t_out, ratio).sum(-1).clamp(min=1).to(probs.dtype)  # [B, T']
    probs = probs * (ids >= 0) * frames_valid[..., None]
    dense = torch.zeros(b, t_out, vocab_size + 1, dtype=probs.dtype, device=probs.device)
    # id -1 is sent to the extra last column, which is dropped
    dense.scatter_add_(2, torch.where(ids >= 0, ids, vocab_size).view(b, t_out, ratio * k),
                       probs.view(b, t_out, ratio * k))
    dense = dense[..., :vocab_size] / n[..., None]
    top_p, top_ids = dense.topk(min(k, vocab_size), dim=-1)
    residual = (res * frames_valid).view(b, t_out, ratio).sum(-1) / n + (dense.sum(-1) - top_p.sum(-1))
    return replace(
        targets,
        topk_logp=torch.where(top_p > 0, top_p.log(), -math.inf),
        topk_ids=torch.where(top_p > 0, top_ids, -1),
        residual=torch.where(residual > RESIDUAL_FLOOR, residual.clamp(min=1e-30).log(), -math.inf),
        lengths=-(-targets.lengths // ratio),
        hidden={layer: pool_hidden(h, ratio, targets.lengths) for layer, h in targets.hidden.items()},
    )


def pool_hidden(hidden: Tensor, ratio: int, lengths: Tensor) -> Tensor:
    """Mean of each run of ``ratio`` valid frames: hidden [B, T, D] -> [B, ceil(T / r), D]."""
    if ratio == 1:
        return hidden
    b, t, d = hidden.shape
    t_out = -(-t // ratio)
    valid = (torch.arange(t_out * ratio, device=hidden.device)[None, :] < lengths[:, None]).to(hidden.dtype)
    h = F.pad(hidden, (0, 0, 0, t_out * ratio - t)) * valid[..., None]
    n = valid.view(b, t_out, ratio).sum(-1).clamp(min=1)
    return h.view(b, t_out, ratio, d).sum(2) / n[..., None]


def align_to_student(targets: TeacherTargets, student_lens: Tensor, max_t: int,
                     tolerance_frames: int = 2, tolerance_ratio: float = 0.02) -> TeacherTargets:
    """Crop or pad teacher frames (already at the student's rate) to the student's ``max_t``.

    Front ends round lengths differently (a 10 ms-hop Conformer and wav2vec2's conv stack differ by
    a frame or two), so a difference up to ``max(tolerance_frames, tolerance_ratio * length)`` is
    accepted: the frames both have are compared, the others get no frame target. A larger
    difference means the teacher saw other audio (speed perturbation, the wrong manifest) and is
    refused.
    """
    diff = (targets.lengths.to(student_lens.device) - student_lens).abs()
    allowed = torch.clamp(student_lens.float() * tolerance_ratio, min=tolerance_frames)
    if (diff.float() > allowed).any():
        b = int(torch.argmax(diff.float() - allowed))
        raise FrameRateError(
            f"teacher and student lengths disagree: utterance {b} of the batch has "
            f"{int(targets.lengths[b])} teacher frames (at the student's rate) and "
            f"{int(student_lens[b])} student frames; the teacher's posteriors were computed on "
            "other audio (speed perturbation must be off with cached targets) or another manifest"
        )
    t = targets.topk_ids.shape[1]

    def fit(x: Tensor, value: float) -> Tensor:
        if t >= max_t:
            return x[:, :max_t]
        return F.pad(x, (0, 0) * (x.dim() - 2) + (0, max_t - t), value=value)

    return replace(
        targets,
        topk_logp=fit(targets.topk_logp, -math.inf),
        topk_ids=fit(targets.topk_ids, -1),
        residual=fit(targets.residual, -math.inf),
        lengths=torch.minimum(targets.lengths.to(student_lens.device), student_lens),
        hidden={layer: fit(h, 0.0) for layer, h in targets.hidden.items()},
    )


def delay_frames(targets: TeacherTargets, student_lens: Tensor, delay: int) -> TeacherTargets:
    """Targets for a student that emits ``delay`` frames later than its teacher: teacher frame j
    becomes the target of student frame j + delay.

    ``targets``: aligned to the student (`align_to_student`, [B, T, K]); ``student_lens`` [B].
    Returns the teacher's frames 0 .. T - delay - 1 ([B, max(T - delay, 0), K]; hidden
    [B, ., D] alike), to be compared with the student's frames delay .. T - 1 (``x[:, delay:]``
    of its log-probs and hidden states); lengths ``min(teacher, student - delay)``, at least 0.
    The student's first ``delay`` frames get no frame target (the teacher said nothing that is
    due there yet), and the teacher's last ``delay`` frames, due after the student's end, are
    dropped. ``delay`` 0 returns ``targets`` as they are.
    """
    if delay == 0:
        return targets
    kept = max(targets.topk_ids.shape[1] - delay, 0)
    lengths = torch.minimum(targets.lengths, student_lens.to(targets.lengths.device) - delay).clamp(min=0)
    return replace(
        targets,
        topk_logp=targets.topk_logp[:, :kept],
        topk_ids=targets.topk_ids[:, :kept],
        residual=targets.residual[:, :kept],
        lengths=lengths,
        hidden={layer: h[:, :kept] for layer, h in targets.hidden.items()},
    )


# ---------------------------------------------------------------------------------------------
# Frame-level KD
# ---------------------------------------------------------------------------------------------


def frame_weights(targets: TeacherTargets, mode: str = "all", blank_weight: float = 0.1,
                  blank_id: int = BLANK_ID) -> Tensor:
    """Weight of each frame in frame KD, [B, T] float, 0 beyond ``targets.lengths``.

    A frame is *blank* when the teacher's most probable token is the blank.

    - ``all``: every frame 1;
    - ``downweight``: blank frames ``blank_weight``, others 1;
    - ``nonblank``: only non-blank frames (blank elimination);
    - ``symmetric``: every non-blank frame, plus as many blank frames as there are non-blank
      ones, taken nearest to the non-blank frames first: the blank frames at distance 1 from a
      non-blank frame (left and right), then distance 2, ...; among equally distant frames the
      earlier one first. Deterministic; an utterance without a non-blank frame gets none.
      (Our reading of the symmetric selection of Hilmes et al. 2025, "Analyzing the Importance of
      Blank for CTC-Based Knowledge Distillation": as many blank as non-blank frames. Which blank
      frames the paper picks we could not check; we take those that border the tokens, where the
      teacher's timing of emissions is decided.)
    """
    if mode not in BLANK_MODES:
        raise ValueError(f"blank mode {mode!r} is not one of {BLANK_MODES}")
    b, t = targets.topk_ids.shape[:2]
    pos = torch.arange(t, device=targets.topk_ids.device)
    valid = pos[None, :] < targets.lengths[:, None]
    blank = targets.topk_ids[..., 0] == blank_id
    if mode == "all":
        return valid.float()
    if mode == "downweight":
        return torch.where(blank, blank_weight, 1.0) * valid
    nonblank = valid & ~blank
    if mode == "nonblank":
        return nonblank.float()
    big = 2 * t + 1
    pos_b = pos.expand(b, t)
    left = torch.cummax(torch.where(nonblank, pos_b, -big), dim=1).values
    right = torch.cummin(torch.where(nonblank, pos_b, big).flip(1), dim=1).values.flip(1)
    distance = torch.minimum(pos_b - left, right - pos_b)
    candidate = valid & blank & (distance < big)
    key = torch.where(candidate, distance * (t + 1) + pos_b, big * (t + 1) * 2)
    rank = torch.empty_like(key).scatter_(1, key.argsort(dim=1), pos_b)
    chosen = candidate & (rank < nonblank.sum(1, keepdim=True))
    return (nonblank | chosen).float()


def frame_kd_loss(student_log_probs: Tensor, targets: TeacherTargets, weights: Tensor,
                  temperature: float = 1.0) -> Tensor:
    """tau^2 * sum_t w_t KL(teacher_t || student_t), summed over frames, averaged over utterances.

    student_log_probs [B, T, V] (log_softmax), targets at the student's ids, rate and length
    (topk_logp / topk_ids [B, T, K], residual [B, T]), weights [B, T] (`frame_weights`).

    The KL is over K + 1 buckets: the teacher's top-K tokens and the residual (everything else).
    The student's buckets are its probabilities of those K tokens and the rest of its mass
    (``log(1 - sum)``, computed as a log-sum-exp over the other tokens, so it is exact and keeps
    its gradient). The temperature softens both K+1-bucket distributions alike
    (``log_softmax(log p / tau)``); at tau = 1 this is the exact KL of the two distributions
    coarse-grained to the buckets.
    """
    ids = targets.topk_ids
    has = ids >= 0
    safe = ids.clamp(min=0)
    s_top = student_log_probs.gather(-1, safe).masked_fill(~has, -math.inf)
    in_top = torch.zeros_like(student_log_probs, dtype=torch.int32).scatter_add_(-1, safe, has.int()) > 0
    s_res = torch.logsumexp(student_log_probs.masked_fill(in_top, -math.inf), -1).clamp(min=_LOG_FLOOR)
    t_res = torch.where(targets.residual > _LOG_FLOOR, targets.residual, -math.inf)
    t_buckets = torch.cat([targets.topk_logp.float(), t_res.float()[..., None]], -1)  # [B, T, K+1]
    s_buckets = torch.cat([s_top, s_res[..., None]], -1)
    t_has = torch.isfinite(t_buckets)
    q_t = torch.log_softmax(t_buckets.masked_fill(~t_has, -1e4) / temperature, -1)
    q_s = torch.log_softmax(s_buckets / temperature, -1)
    p_t = q_t.exp() * t_has
    kl = torch.where(t_has, p_t * (q_t - q_s), 0.0).sum(-1)  # [B, T]
    kl = kl * (t_has.any(-1))  # frames with no teacher entry (padding) give 0
    return temperature**2 * (kl * weights).sum() / student_log_probs.shape[0]


# ---------------------------------------------------------------------------------------------
# Sequence-level KD
# ---------------------------------------------------------------------------------------------


def nbest_weights(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """w_n = softmax(score_n / T_seq) over one utterance's N-best: [N] -> [N], sums to 1."""
    return torch.softmax(torch.as_tensor(scores, dtype=torch.float64) / temperature, dim=0).float()


def sequence_kd_loss(student_log_probs: Tensor, lengths: Tensor,
                     nbest: Sequence[Sequence[tuple[Sequence[int], float]]],
                     temperature: float = 1.0) -> Tensor:
    """sum_n w_n CTC(student, hyp_n) per utterance, averaged over the batch.

    student_log_probs [B, T, V], lengths [B]; ``nbest[b]``: the teacher's hypotheses of utterance
    b as (student token ids, total log-probability), weighted by `nbest_weights`. An utterance
    with no hypothesis contributes 0.
    """
    rows, hyps, weights = [], [], []
    for b, hyp_list in enumerate(nbest):
        if not hyp_list:
            continue
        w = nbest_weights(torch.tensor([s for _, s in hyp_list]), temperature)
        for (ids, _), wn in zip(hyp_list, w.tolist(), strict=True):
            rows.append(b)
            hyps.append(list(ids))
            weights.append(wn)
    if not rows:
        return student_log_probs.sum() * 0.0
    device = student_log_probs.device
    index = torch.tensor(rows, device=device)
    target_lens = torch.tensor([len(h) for h in hyps], device=device)
    targets = torch.zeros(len(hyps), max(1, int(target_lens.max())), dtype=torch.long, device=device)
    for i, h in enumerate(hyps):
        targets[i, : len(h)] = torch.tensor(h, dtype=torch.long)
    per_hyp = F.ctc_loss(student_log_probs[index].transpose(0, 1), targets, lengths[index], target_lens,
                         blank=BLANK_ID, reduction="none", zero_infinity=True)
    return (per_hyp * torch.tensor(weights, device=device)).sum() / student_log_probs.shape[0]


# ---------------------------------------------------------------------------------------------
# Hidden-state KD
# ---------------------------------------------------------------------------------------------


def _valid(lengths: Tensor, t: int) -> Tensor:
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def feature_kd_loss(student_hidden: Tensor, teacher_hidden: Tensor, lengths: Tensor,
                    projection: torch.nn.Module) -> Tensor:
    """L1 + cosine distance between projected student and teacher hidden states.

    student_hidden [B, T, D_s], teacher_hidden [B, T, D_t] (same T: pooled and aligned),
    lengths [B], projection: a learned ``Linear(D_s, D_t)``. Per frame:
    ``mean_d |P h_s - h_t| + (1 - cos(P h_s, h_t))``; summed over valid frames, averaged over
    utterances.
    """
    proj = projection(student_hidden)
    teacher_hidden = teacher_hidden.to(proj.dtype)
    per_frame = (proj - teacher_hidden).abs().mean(-1) + 1.0 - F.cosine_similarity(proj, teacher_hidden, dim=-1)
    return (per_frame * _valid(lengths, proj.shape[1])).sum() / proj.shape[0]


def relation_kd_loss(student_hidden: Tensor, teacher_hidden: Tensor, lengths: Tensor) -> Tensor:
    """MSE between the frame-to-frame cosine-similarity matrices of student and teacher.

    student_hidden [B, T, D_s], teacher_hidden [B, T, D_t], lengths [B]. For each utterance of
    L valid frames: ``sum_{i,j < L} (S_s[i, j] - S_t[i, j])^2 / L`` (the per-row mean squared error
    summed over frames), averaged over utterances. No projection: the matrices are [T, T] on
    both sides whatever the hidden sizes.
    """
    s = F.normalize(student_hidden.float(), dim=-1)
    t = F.normalize(teacher_hidden.float(), dim=-1)
    sim_s = s @ s.transpose(1, 2)
    sim_t = t @ t.transpose(1, 2)
    valid = _valid(lengths, s.shape[1])
    pair = valid[:, :, None] & valid[:, None, :]
    per_utt = ((sim_s - sim_t) ** 2 * pair).sum((1, 2)) / lengths.clamp(min=1)
    return per_utt.sum() / s.shape[0]
