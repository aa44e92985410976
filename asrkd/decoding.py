"""CTC decoding: greedy, prefix beam search, and an utterance confidence score.

All functions take CTC log-posteriors (``log_softmax`` output, blank = `asrkd.contract.BLANK_ID`
unless told otherwise) as torch tensors or numpy arrays, so they serve the PyTorch model and the
exported runtimes (ONNX Runtime, LiteRT, ExecuTorch) alike.
"""

from __future__ import annotations

import heapq
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from asrkd.contract import BLANK_ID, NBEST, NBEST_BEAM
from asrkd.errors import AsrkdError

NEG_INF = float("-inf")

Hypothesis = tuple[list[int], float]  # token ids (blank-free, collapsed), total log-probability


def _as_tensor(x) -> Tensor:
    return x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _valid_frames(lens: Tensor, max_len: int) -> Tensor:
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


def greedy_decode(log_probs: Tensor, lens: Tensor, blank: int = BLANK_ID) -> list[list[int]]:
    """Best path: per frame argmax, repeats collapsed, blanks dropped.

    log_probs [B, T, V] (any monotone scores work), lens [B] -> one token-id list per utterance.
    """
    log_probs, lens = _as_tensor(log_probs), _as_tensor(lens).to(torch.long)
    ids = log_probs.argmax(dim=-1)  # [B, T]
    prev = torch.cat([torch.full_like(ids[:, :1], blank), ids[:, :-1]], dim=1)
    keep = (ids != blank) & (ids != prev) & _valid_frames(lens, ids.size(1))
    return [row[k].tolist() for row, k in zip(ids, keep, strict=True)]


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


class LexiconError(AsrkdError, ValueError):
    """A lexicon file or word list is malformed; the message names the file and line."""


class Lexicon:
    """The words a hypothesis may contain, for closed-vocabulary recognition (digits, commands).

    ``Lexicon(["zero", "one", ...])`` or ``Lexicon.from_file("words.txt")`` (one word per line,
    ``#`` starts a comment). Words are normalised like transcripts (`asrkd.text.normalize_text`).
    It constrains `prefix_beam_search`: every finished word of a prefix must be a lexicon word and
    the word being spelled a prefix of one, so a decoder that would greedily write "sixh" or
    "zro" has to choose between real words instead (what a lexicon or a grammar FST does in
    WeNet's TLG or icefall's HLG decoding, without the FST). It does not rescore: among lexicon
    words the acoustic model still decides.
    """

    def __init__(self, words, source: str = "lexicon"):
        from asrkd.text import normalize_text

        kept = set()
        for i, word in enumerate(words, 1):
            norm = normalize_text(word)
            if not norm:
                continue
            if " " in norm:
                raise LexiconError(f"{source}:{i}: {word!r} is more than one word; give one word per line")
            kept.add(norm)
        if not kept:
            raise LexiconError(f"{source}: no words")
        self.words = frozenset(kept)
        self.source = source
        self.prefixes = frozenset(w[:n] for w in kept for n in range(len(w) + 1))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Lexicon:
        """Read a word list: one word per line, ``#`` starts a comment, blank lines skipped."""
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise LexiconError(f"{path}: cannot read the lexicon ({e})") from None
        return cls((line.split("#", 1)[0].strip() for line in lines), source=str(path))

    @classmethod
    def coerce(cls, lexicon: str | os.PathLike | Lexicon | None) -> Lexicon | None:
        """A `Lexicon` as it is, a path read with `from_file`, None as None."""
        if lexicon is None or isinstance(lexicon, Lexicon):
            return lexicon
        return cls.from_file(lexicon)

    def __len__(self) -> int:
        return len(self.words)

    def allows(self, text: str, final: bool) -> bool:
        """Whether ``text`` (a decoded prefix) can still become a hypothesis made of lexicon
        words; with ``final`` whether it already is one. The empty text is allowed (silence)."""
        words = text.split()
        if not words:
            return True
        if any(w not in self.words for w in words[:-1]):
            return False
        return words[-1] in (self.words if final else self.prefixes)

    def constraint(self, tokenizer) -> LexiconConstraint:
        """This lexicon on the token ids of ``tokenizer`` (what `prefix_beam_search` takes)."""
        return LexiconConstraint(self, tokenizer)


class LexiconConstraint:
    """A `Lexicon` applied to token-id prefixes of one tokenizer (memoised per prefix)."""

    def __init__(self, lexicon: Lexicon, tokenizer):
        self.lexicon, self.tokenizer = lexicon, tokenizer
        # A character tokenizer's separator ends a word: it may only follow a complete one.
        self.word_sep_id = getattr(tokenizer, "word_sep_id", None)
        self._seen: dict[tuple[tuple[int, ...], bool], bool] = {}

    def allows(self, ids: tuple[int, ...], final: bool = False) -> bool:
        """`Lexicon.allows` for the text that the token ids ``ids`` decode to."""
        key = (ids, final)
        if key not in self._seen:
            sep = self.word_sep_id is not None and bool(ids) and ids[-1] == self.word_sep_id
            if sep and (len(ids) == 1 or ids[-2] == self.word_sep_id):
                self._seen[key] = False  # no leading or doubled separator: no word before it
            else:
                self._seen[key] = self.lexicon.allows(self.tokenizer.decode(ids), final or sep)
        return self._seen[key]


def prefix_beam_search(
    log_probs: Tensor | np.ndarray,
    beam: int = NBEST_BEAM,
    nbest: int = NBEST,
    prune_logp: float = -10.0,
    blank: int = BLANK_ID,
    constraint: LexiconConstraint | None = None,
) -> list[Hypothesis]:
    """CTC prefix beam search over one utterance.

    log_probs [T, V] (log-posteriors of the valid frames only) -> up to ``nbest`` hypotheses
    ``(token_ids, log_prob)``, best first, where ``log_prob`` is the log of the total probability
    of all alignments that collapse to ``token_ids`` (summed, not max: Hannun et al. 2014).

    Every prefix carries two scores: the probability of alignments ending in blank and ending in
    a non-blank. Per frame each prefix may (a) emit blank, (b) repeat its last token (collapses
    into the same prefix), (c) extend by a token c (if c is its last token, only from the
    blank-ending alignments). Only tokens among the frame's ``beam`` best with log-prob
    >= ``prune_logp`` are tried as extensions; blank and repeats are always scored. The
    ``beam`` most probable prefixes survive each frame. With ``beam`` at least the number of
    distinct prefixes and ``prune_logp=-inf`` the search is exact.

    ``constraint`` (`Lexicon.constraint(tokenizer)`): extensions that leave the lexicon are not
    made, every token above ``prune_logp`` is a candidate (not only the top ``beam``: the token a
    lexicon word needs is often not among the frame's best), and hypotheses that end inside a
    word rank after complete ones (they are returned only when nothing complete survived).
    """
    if beam < 1 or nbest < 1:
        raise ValueError(f"beam ({beam}) and nbest ({nbest}) must be >= 1")
    lp = _as_tensor(log_probs).float().cpu().numpy()
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be [T, V] for one utterance, got shape {lp.shape}")
    n_cand = lp.shape[1] if constraint is not None else min(beam, lp.shape[1])
    # Extension candidates for all frames at once: the top-`beam` tokens, pruned by log-prob.
    top = np.argpartition(-lp, n_cand - 1, axis=1)[:, :n_cand] if n_cand < lp.shape[1] else None
    rows = lp.tolist()

    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}
    for t, row in enumerate(rows):
        tokens = top[t].tolist() if top is not None else range(len(row))
        cands = [c for c in tokens if c != blank and row[c] >= prune_logp]
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
        for prefix, (p_blank, p_token) in beams.items():
            p_total = _logaddexp(p_blank, p_token)
            same = nxt[prefix]
            same[0] = _logaddexp(same[0], p_total + row[blank])
            if prefix:
                same[1] = _logaddexp(same[1], p_token + row[prefix[-1]])
            for c in cands:
                if constraint is not None and not constraint.allows(prefix + (c,)):
                    continue
                ext = nxt[prefix + (c,)]
                # A repeated token needs a blank in between, else it collapses (case b).
                src = p_blank if prefix and c == prefix[-1] else p_total
                ext[1] = _logaddexp(ext[1], src + row[c])
        best = heapq.nlargest(beam, nxt.items(), key=lambda kv: _logaddexp(*kv[1]))
        beams = {prefix: (pb, pt) for prefix, (pb, pt) in best}

    ranked = sorted(((list(p), _logaddexp(*s)) for p, s in beams.items()), key=lambda h: -h[1])
    if constraint is not None:  # complete hypotheses first (a stable sort keeps the score order)
        ranked.sort(key=lambda h: not constraint.allows(tuple(h[0]), final=True))
    return ranked[:nbest]


def batch_prefix_beam_search(
    log_probs: Tensor | np.ndarray,
    lens: Tensor | np.ndarray,
    beam: int = NBEST_BEAM,
    nbest: int = NBEST,
    prune_logp: float = -10.0,
    blank: int = BLANK_ID,
    constraint: LexiconConstraint | None = None,
) -> list[list[Hypothesis]]:
    """``prefix_beam_search`` on each utterance of log_probs [B, T, V] up to its length in lens [B]."""
    log_probs, lens = _as_tensor(log_probs), _as_tensor(lens)
    return [
        prefix_beam_search(lp[: int(n)], beam=beam, nbest=nbest, prune_logp=prune_logp, blank=blank,
                           constraint=constraint)
        for lp, n in zip(log_probs, lens.tolist(), strict=True)
    ]


def batch_confidence(log_probs: Tensor | np.ndarray, lens: Tensor | np.ndarray, blank: int = BLANK_ID) -> Tensor:
    """Utterance confidence in [0, 1] (higher = more confident) for log_probs [B, T, V], lens [B] -> [B].

    Definition (entropy-based, as NeMo's frame confidence; Laptev & Ginsburg 2023):
    - frame confidence = 1 - H(p_t) / log V, with H the Shannon entropy of the frame's posterior:
      1 for a one-hot frame, 0 for a uniform one. Unlike the max posterior it also drops when the
      mass that is not on the winner is spread over many tokens, and its range is a true [0, 1]
      (the max posterior never goes below 1 / V);
    - utterance confidence = mean frame confidence over the valid frames whose argmax is not
      blank. CTC posteriors are dominated by confident blank frames, which would push every
      utterance towards 1 and hide the frames where tokens are decided (NeMo's
      ``exclude_blank``). If every frame is blank-dominant (empty hypothesis), all valid frames
      are averaged instead, so a confident silence scores high and a hesitant one low;
    - an utterance with no valid frames scores 0.
    """
    lp = _as_tensor(log_probs).float()
    lens = _as_tensor(lens).to(lp.device, torch.long)
    vocab = lp.size(-1)
    entropy = torch.special.entr(lp.exp()).sum(dim=-1)  # [B, T]; entr(0) = 0, no 0 * -inf
    frame_conf = (1.0 - entropy / math.log(vocab)).clamp(0.0, 1.0)
    valid = _valid_frames(lens, lp.size(1))
    non_blank = valid & (lp.argmax(dim=-1) != blank)
    use = torch.where(non_blank.any(dim=1, keepdim=True), non_blank, valid)
    return (frame_conf * use).sum(dim=1) / use.sum(dim=1).clamp(min=1)


def utterance_confidence(log_probs: Tensor | np.ndarray, length: int | None = None, blank: int = BLANK_ID) -> float:
    """``batch_confidence`` for one utterance: log_probs [T, V], its first ``length`` frames
    (all if None) -> float in [0, 1]."""
    lp = _as_tensor(log_probs)
    n = lp.size(0) if length is None else int(length)
    return float(batch_confidence(lp[None], torch.tensor([n]), blank=blank)[0])
