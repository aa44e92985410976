"""Where a batch's teacher targets come from: a posterior cache, a teacher run online, or memory.

`asrkd.kd.KDLoss` asks its target source for one batch at a time::

    source.fetch(batch, hidden_layers=[7], posteriors=True, nbest_tokenizer=tokenizer)
        -> TeacherBatch(targets=TeacherTargets at the TEACHER's ids and frame rate,
                        nbest=[per utterance: [(STUDENT token ids, log-probability), ...]])

and converts the posteriors to the student's vocabulary, frame rate and length itself
(`asrkd.losses`). Every source states the teacher's ``vocabulary``, ``frame_shift`` (seconds per
teacher frame), ``blank_id`` and whether it has posteriors at all (a text-only teacher has only
an N-best). Three sources:

* `CachedTargets`: read by ``utt_id`` from a posterior cache (`asrkd cache build`); computed once,
  on clean audio.
* `OnlineTargets`: an `asrkd.teacher.Teacher` run on every batch, on the audio the student hears.
* `InMemoryTargets`: your own targets, ``{utt_id: TeacherTargets}`` (or teacher log-probs, or a
  function of the batch's utterance ids), for a teacher that is not an asrkd one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from asrkd.cache import CacheError, PosteriorCache, TeacherTargets, open_cache, top_k_posteriors
from asrkd.contract import BLANK_ID, NBEST, NBEST_BEAM, TOP_K
from asrkd.decoding import prefix_beam_search
from asrkd.teacher import Teacher
from asrkd.text import UnknownCharactersError

__all__ = ["CachedTargets", "InMemoryTargets", "NBest", "OnlineTargets", "TargetSource", "TeacherBatch",
           "stack_targets"]

NBest = list[list[tuple[list[int], float]]]
"""Per utterance of a batch, the teacher's hypotheses as (student token ids, total log-probability)."""


@dataclass
class TeacherBatch:
    """The teacher's side of one batch. ``targets``: posteriors [B, T_teacher, K] at the teacher's
    token ids and frame rate (None when not asked for); ``nbest``: `NBest` (None when not asked for)."""

    targets: TeacherTargets | None = None
    nbest: NBest | None = None


class TargetSource:
    """Base class: the teacher's vocabulary and frame shift, and `fetch` for a batch."""

    vocabulary: list[str]
    frame_shift: float  # seconds per teacher frame
    blank_id: int = BLANK_ID
    has_posteriors: bool = True  # False: a text-only teacher (N-best and pseudo-labels only)
    # Sample rate of the audio `fetch` must be given (the student's batch), or None when the
    # source does not read the batch's audio (a cache, in-memory targets).
    sample_rate: int | None = None

    def hidden_size(self, layer: int) -> int:
        """Width D of the teacher's hidden states at ``layer`` (0-based), for feature-KD projections."""
        raise NotImplementedError(f"{self} gives no hidden states")

    def fetch(self, batch: dict, hidden_layers: Sequence[int] = (), posteriors: bool = True,
              nbest_tokenizer=None) -> TeacherBatch:
        """The teacher's targets for ``batch`` (an asrkd collated batch: ``utt_ids``, ``wavs`` [B, N],
        ``wav_lens`` [B]); hidden states of ``hidden_layers`` with the posteriors; the N-best in
        ``nbest_tokenizer``'s ids when one is given."""
        raise NotImplementedError


def _encode_hypotheses(texts_scores: Sequence[tuple[str, float]], tokenizer) -> tuple[list[tuple[list[int], float]], int]:
    """(text, score) pairs -> (student ids, score), leaving out texts the student cannot spell;
    also returns how many were left out."""
    out, skipped = [], 0
    for text, score in texts_scores:
        try:
            out.append((tokenizer.encode(text), score))
        except UnknownCharactersError:
            skipped += 1
    return out, skipped


class CachedTargets(TargetSource):
    """Targets read from a posterior cache (`asrkd.cache.PosteriorCache`) by utterance id.

    N-best hypotheses keep the teacher's ids when the student's vocabulary is the teacher's, and
    are re-spelled from their text otherwise (those with characters the student lacks are left
    out and counted in ``skipped_hypotheses``).
    """

    def __init__(self, cache: PosteriorCache | str | os.PathLike | Sequence[str | os.PathLike]):
        self.cache = cache if isinstance(cache, PosteriorCache) else open_cache(cache)
        self.vocabulary = self.cache.vocabulary
        self.frame_shift = self.cache.frame_shift
        self.blank_id = self.cache.blank_id
        self.has_posteriors = self.cache.has_posteriors
        self.skipped_hypotheses = 0
        self._nbest: dict[str, list[tuple[list[int], float]]] = {}

    def __str__(self) -> str:
        """The cache and the teacher that built it (said once per run: when no teacher was given
        to check the cache with, this is the only word on where its targets came from)."""
        checked = "" if self.cache.teacher_checked else "; not checked against a teacher (kd.teacher unset)"
        return f"cache {self.cache.folder} (built by {self.cache.teacher_identity()}{checked})"

    def hidden_size(self, layer: int) -> int:
        sizes = self.cache.hidden_sizes
        if layer not in sizes:
            raise CacheError(f"{self.cache.folder}: teacher layer {layer} (kd.layer_map) is not cached "
                             f"(cached: {sorted(sizes)}); rebuild with --hidden-layers {layer}")
        return sizes[layer]

    def nbest(self, utt_ids: Sequence[str], tokenizer) -> NBest:
        """The cached N-best of each utterance in ``tokenizer``'s ids (converted once per utterance)."""
        same = self.vocabulary == list(tokenizer.tokens)
        for u in utt_ids:
            if u not in self._nbest:
                hyps = self.cache.nbest(u)
                if same:
                    self._nbest[u] = [(h.ids, h.score) for h in hyps]
                else:
                    self._nbest[u], skipped = _encode_hypotheses([(h.text, h.score) for h in hyps], tokenizer)
                    self.skipped_hypotheses += skipped
        return [self._nbest[u] for u in utt_ids]

    def fetch(self, batch: dict, hidden_layers: Sequence[int] = (), posteriors: bool = True,
              nbest_tokenizer=None) -> TeacherBatch:
        return TeacherBatch(
            targets=self.cache.targets(batch["utt_ids"], hidden_layers) if posteriors else None,
            nbest=self.nbest(batch["utt_ids"], nbest_tokenizer) if nbest_tokenizer is not None else None,
        )


class OnlineTargets(TargetSource):
    """A teacher (`asrkd.teacher.Teacher`) run on every batch, on the same (augmented) audio as the
    student: its ``top_k`` posteriors per frame and, when asked, its N-best (prefix beam search of
    width `NBEST_BEAM`, `NBEST` hypotheses, re-spelled in the student's tokens from their text)."""

    def __init__(self, teacher: Teacher, top_k: int = TOP_K, label: str | None = None):
        self.teacher = teacher
        self.top_k = top_k
        self.label = label or str(teacher)
        self.vocabulary = list(teacher.vocabulary)
        self.frame_shift = teacher.frame_shift
        self.blank_id = teacher.blank_id
        self.has_posteriors = teacher.has_posteriors
        self.sample_rate = teacher.sample_rate

    def __str__(self) -> str:
        return f"online teacher {self.label}"

    def hidden_size(self, layer: int) -> int:
        size = self.teacher.hidden_size()
        if size is None:
            raise ValueError(f"{self}: the teacher does not state the width of its hidden states; "
                             "give it one (CallableTeacher(..., hidden_size=D)) for feature KD")
        return size

    def fetch(self, batch: dict, hidden_layers: Sequence[int] = (), posteriors: bool = True,
              nbest_tokenizer=None) -> TeacherBatch:
        if not posteriors and nbest_tokenizer is None:
            return TeacherBatch()
        out = self.teacher(batch["wavs"], batch["wav_lens"], return_hidden=bool(hidden_layers))
        targets = nbest = None
        if posteriors:
            targets = top_k_posteriors(out.log_probs, out.lengths, self.top_k)
            targets.hidden = {layer: out.hidden[layer].float() for layer in hidden_layers}
        if nbest_tokenizer is not None:
            nbest = []
            for b in range(len(batch["utt_ids"])):
                n = int(out.lengths[b])
                hyps = prefix_beam_search(out.log_probs[b, :n], beam=NBEST_BEAM, nbest=NBEST,
                                          blank=self.teacher.blank_id)
                texts = [(self.teacher.decode(ids), score) for ids, score in hyps]
                nbest.append(_encode_hypotheses(texts, nbest_tokenizer)[0])
        return TeacherBatch(targets=targets, nbest=nbest)


class InMemoryTargets(TargetSource):
    """Targets you hold in memory, looked up by the batch's ``utt_ids``.

    ``targets``: ``{utt_id: TeacherTargets}`` with one utterance each (B = 1; padded into a batch
    here), or a function ``utt_ids -> TeacherTargets`` for the whole batch. ``vocabulary`` and
    ``frame_shift`` (seconds per teacher frame) describe the teacher. ``nbest`` (optional, for
    sequence KD): ``{utt_id: [(text, total log-probability), ...]}``. ``hidden_sizes``: the
    hidden width per teacher layer, needed for feature KD with a function (a dict tells it).

    >>> lp = {"utt1": teacher_log_probs_1}                  # [T, V] log-softmax, 20 ms frames  # doctest: +SKIP
    >>> source = InMemoryTargets.from_log_probs(lp, vocabulary=tokens, frame_shift=0.02)       # doctest: +SKIP
    """

    def __init__(self, targets: Mapping[str, TeacherTargets] | Callable[[list[str]], TeacherTargets],
                 vocabulary: Sequence[str], frame_shift: float, blank_id: int = BLANK_ID,
                 nbest: Mapping[str, Sequence[tuple[str, float]]] | None = None,
                 hidden_sizes: Mapping[int, int] | None = None):
        self.targets = targets
        self.vocabulary = list(vocabulary)
        self.frame_shift = float(frame_shift)
        self.blank_id = blank_id
        self.nbest_texts = nbest
        self.hidden_sizes = dict(hidden_sizes or {})
        if not self.hidden_sizes and isinstance(targets, Mapping) and targets:
            first = next(iter(targets.values()))
            self.hidden_sizes = {layer: h.shape[-1] for layer, h in first.hidden.items()}

    @classmethod
    def from_log_probs(cls, log_probs: Mapping[str, Tensor], vocabulary: Sequence[str], frame_shift: float,
                       top_k: int = TOP_K, **kwargs) -> InMemoryTargets:
        """From a teacher's log-posteriors per utterance, ``{utt_id: [T, V] log_softmax}``, keeping
        the ``top_k`` most probable tokens per frame (as the cache does)."""
        targets = {u: top_k_posteriors(lp[None].float(), torch.tensor([lp.shape[0]]), top_k)
                   for u, lp in log_probs.items()}
        return cls(targets, vocabulary, frame_shift, **kwargs)

    def __str__(self) -> str:
        return "in-memory targets"

    def hidden_size(self, layer: int) -> int:
        if layer not in self.hidden_sizes:
            raise ValueError(f"layer_map: in-memory targets have no hidden states of teacher layer {layer} "
                             f"(have: {sorted(self.hidden_sizes)})")
        return self.hidden_sizes[layer]

    def fetch(self, batch: dict, hidden_layers: Sequence[int] = (), posteriors: bool = True,
              nbest_tokenizer=None) -> TeacherBatch:
        utt_ids = list(batch["utt_ids"])
        targets = None
        if posteriors:
            if callable(self.targets):
                targets = self.targets(utt_ids)
            else:
                missing = [u for u in utt_ids if u not in self.targets]
                if missing:
                    raise KeyError(f"in-memory targets: no teacher targets for utterance(s) {missing[:5]}")
                targets = stack_targets([self.targets[u] for u in utt_ids])
            targets.hidden = {layer: targets.hidden[layer] for layer in hidden_layers}
        nbest = None
        if nbest_tokenizer is not None:
            texts = self.nbest_texts or {}
            nbest = [_encode_hypotheses(texts.get(u, []), nbest_tokenizer)[0] for u in utt_ids]
        return TeacherBatch(targets=targets, nbest=nbest)


def stack_targets(items: Sequence[TeacherTargets]) -> TeacherTargets:
    """Targets of single utterances (B = 1 each, any T, one K) -> one batch padded to the longest:
    topk_logp [B, T, K] (-inf), topk_ids (-1), residual [B, T] (-inf), hidden [B, T, D] (0)."""
    b, t, k = len(items), max(x.topk_ids.shape[1] for x in items), items[0].topk_ids.shape[2]
    logp = torch.full((b, t, k), -math.inf)
    ids = torch.full((b, t, k), -1, dtype=torch.long)
    residual = torch.full((b, t), -math.inf)
    hidden = {layer: torch.zeros(b, t, h.shape[-1]) for layer, h in items[0].hidden.items()}
    for row, x in enumerate(items):
        n = x.topk_ids.shape[1]
        logp[row, :n], ids[row, :n], residual[row, :n] = x.topk_logp[0], x.topk_ids[0], x.residual[0]
        for layer, h in x.hidden.items():
            hidden[layer][row, :n] = h[0]
    lengths = torch.cat([x.lengths.reshape(1) for x in items]).long()
    return TeacherTargets(logp, ids, residual, lengths, hidden)
