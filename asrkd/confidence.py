"""Confidence from CTC output, calibrated so that it reads as P(the utterance is right).

    scores = utterance_scores(log_probs, tokenizer)          # {"entropy": .., "word_min": .., ...}
    cal = Calibration.fit(raw, correct, measure="word_min")  # on a labelled dev set
    p = cal.apply(raw)                                       # ≈ probability the transcript is exact
    fallback = threshold_for_precision(p, correct, 0.95)     # keep p >= fallback.threshold

Three layers, as in NeMo's confidence estimation (Laptev & Ginsburg, 2023) and Riva's greedy CTC
confidences:

- **frame** confidence of one output frame's posterior p_t [V]: ``entropy`` = 1 - H(p_t) / log V,
  or ``max_prob`` = (V max(p_t) - 1) / (V - 1) (NeMo's rescaled maximum). Both are 1 for a
  one-hot frame and 0 for a uniform one;
- **token** confidence of one emitted token of the greedy path (its run of frames whose argmax
  is that token): the minimum of its frames; **word** confidence: the minimum over the word's
  tokens (a word is as doubtful as its most doubtful piece). Blank frames belong to no token;
- **utterance** measures (`MEASURES`): ``entropy`` (asrkd's existing
  `asrkd.decoding.batch_confidence`, unchanged: mean entropy confidence of the non-blank frames),
  ``word_min`` and ``word_mean`` (min / mean word confidence over ``max_prob`` frames). An empty
  hypothesis has no word: it scores the mean frame confidence of all valid frames, so a
  confident silence scores high and a hesitant one low (blank-aware).

A raw measure is a ranking, not a probability. `Calibration` maps it onto the observed accuracy
of a labelled set: ``temperature`` (logistic in the logit of the score: a temperature and a
bias, two numbers an app or a graph applies in one line) or ``isotonic`` (a monotone
piecewise-linear table fitted by pool-adjacent-violators). `expected_calibration_error` measures
the result; `threshold_for_precision` chooses the fallback threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from asrkd.contract import BLANK_ID
from asrkd.decoding import utterance_confidence
from asrkd.text import WORD_SEP

MEASURES = ("entropy", "word_min", "word_mean")
METHODS = ("temperature", "isotonic")
ECE_BINS = 10
# Scores are clipped this far from 0 and 1 before a logit: a one-hot frame gives exactly 1.
CALIBRATION_EPS = 1e-6  # calibrate clips confidence to [eps, 1 - eps]; the export graph too


def frame_confidence(log_probs: np.ndarray, measure: str = "max_prob") -> np.ndarray:
    """Per-frame confidence in [0, 1]: log_probs [T, V] -> [T] (module docstring)."""
    lp = np.asarray(log_probs, dtype=np.float64)
    vocab = lp.shape[-1]
    p = np.exp(lp)
    if measure == "entropy":
        entropy = -(p * np.where(p > 0, lp, 0.0)).sum(axis=-1)
        conf = 1.0 - entropy / math.log(vocab)
    elif measure == "max_prob":
        conf = (vocab * p.max(axis=-1) - 1.0) / (vocab - 1.0)
    else:
        raise ValueError(f"unknown frame measure {measure!r}; choose 'entropy' or 'max_prob'")
    return np.clip(conf, 0.0, 1.0)


@dataclass
class Span:
    """A token or a word of the greedy hypothesis: its text, confidence in [0, 1], and the
    output frames ``[start, end)`` it was emitted on."""

    text: str
    confidence: float
    start: int
    end: int


def token_spans(log_probs: np.ndarray, tokenizer, frame_measure: str = "max_prob",
                blank: int = BLANK_ID) -> list[Span]:
    """The greedy path's emitted tokens with their confidence: log_probs [T, V] (valid frames
    only) -> one `Span` per token (a run of frames with the same non-blank argmax; the text is
    the token's symbol from ``tokenizer.tokens``)."""
    lp = np.asarray(log_probs)
    ids = lp.argmax(axis=-1)
    conf = frame_confidence(lp, frame_measure)
    spans: list[Span] = []
    start = 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or ids[t] != ids[start]:
            if ids[start] != blank:
                spans.append(Span(tokenizer.tokens[int(ids[start])], float(conf[start:t].min()), start, t))
            start = t
    return spans


def word_spans(log_probs: np.ndarray, tokenizer, frame_measure: str = "max_prob",
               blank: int = BLANK_ID) -> list[Span]:
    """The greedy hypothesis' words with their confidence (the minimum of their tokens').

    A token whose symbol starts with the word separator ``▁`` starts a word (both asrkd
    tokenizers mark words so); the character tokenizer's bare ``▁`` belongs to no word.
    Words are spelled from the token symbols, as the greedy transcript is."""
    words: list[Span] = []
    fresh = True
    for tok in token_spans(log_probs, tokenizer, frame_measure, blank):
        piece = tok.text
        if piece.startswith(WORD_SEP):
            fresh, piece = True, piece[len(WORD_SEP):]
        if not piece:
            continue
        if fresh or not words:
            words.append(Span(piece, tok.confidence, tok.start, tok.end))
        else:
            last = words[-1]
            last.text += piece
            last.confidence, last.end = min(last.confidence, tok.confidence), tok.end
        fresh = False
    return words


def utterance_scores(log_probs: np.ndarray, tokenizer, blank: int = BLANK_ID) -> dict[str, float]:
    """Every utterance measure of `MEASURES` for one utterance: log_probs [T, V] (valid frames)."""
    lp = np.asarray(log_probs)
    words = [w.confidence for w in word_spans(lp, tokenizer, blank=blank)]
    if words:
        word_min, word_mean = min(words), float(np.mean(words))
    else:  # no word: how sure the model is of the silence
        word_min = word_mean = float(frame_confidence(lp).mean()) if len(lp) else 0.0
    return {"entropy": utterance_confidence(lp, blank=blank), "word_min": word_min, "word_mean": word_mean}


# ------------------------------------------------------------------------------ calibration
def _logit(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float64), CALIBRATION_EPS, 1.0 - CALIBRATION_EPS)
    return np.log(x) - np.log1p(-x)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def _fit_logistic(z: np.ndarray, y: np.ndarray, ridge: float = 1e-3, steps: int = 50) -> tuple[float, float]:
    """(a, b) minimising the log-loss of sigmoid(a z + b) against y (Newton's method; a small
    ridge keeps it finite when the set is separable)."""
    w = np.zeros(2)
    x = np.stack([z, np.ones_like(z)], axis=1)
    for _ in range(steps):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) + ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def _fit_isotonic(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: knots (mean score, mean accuracy) of the monotone blocks."""
    xs, inverse = np.unique(x, return_inverse=True)  # equal scores form one block from the start
    counts = np.bincount(inverse).astype(float)
    blocks: list[list[float]] = []  # [sum_x, sum_y, n]
    for xi, yi, n in zip(xs * counts, np.bincount(inverse, weights=y), counts, strict=True):
        blocks.append([float(xi), float(yi), float(n)])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            sx, sy, n_last = blocks.pop()
            blocks[-1] = [blocks[-1][0] + sx, blocks[-1][1] + sy, blocks[-1][2] + n_last]
    return [b[0] / b[2] for b in blocks], [b[1] / b[2] for b in blocks]


@dataclass
class Calibration:
    """A map from one raw utterance measure to P(utterance correct), fitted on a labelled set.

    ``measure``: which of `MEASURES` it takes. ``method`` ``temperature``:
    ``p = sigmoid((logit(s) + bias) / temperature)`` with s clipped to [1e-6, 1 - 1e-6];
    ``isotonic``: ``p = interp(s, knots_x, knots_y)`` (linear between knots, flat outside).
    ``fitted_on``: how many utterances, and how many of them were correct.
    """

    measure: str
    method: str
    temperature: float | None = None
    bias: float | None = None
    knots_x: list[float] | None = None
    knots_y: list[float] | None = None
    fitted_on: dict[str, int] | None = None

    @classmethod
    def fit(cls, raw, correct, measure: str = "word_min", method: str = "temperature") -> Calibration:
        """Fit on raw scores [N] of ``measure`` and 0/1 outcomes [N] (1: transcript exact)."""
        if measure not in MEASURES:
            raise ValueError(f"unknown confidence measure {measure!r}; choose from {MEASURES}")
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; choose from {METHODS}")
        x = np.asarray(raw, dtype=np.float64)
        y = np.asarray(correct, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
            raise ValueError(f"need >= 2 scores and as many outcomes, got {x.shape} and {y.shape}")
        fitted_on = {"utterances": len(y), "correct": int(y.sum())}
        if method == "isotonic":
            kx, ky = _fit_isotonic(x, y)
            return cls(measure, method, knots_x=kx, knots_y=ky, fitted_on=fitted_on)
        a, b = _fit_logistic(_logit(x), y)
        # a <= 0 would invert the ranking (the score says nothing); keep it monotone and flat.
        a = max(a, 1e-6)
        return cls(measure, method, temperature=1.0 / a, bias=b / a, fitted_on=fitted_on)

    def apply(self, raw) -> np.ndarray:
        """Calibrated confidence [N] in [0, 1] for raw scores [N] of ``measure``."""
        x = np.asarray(raw, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(x, self.knots_x, self.knots_y)
        return _sigmoid((_logit(x) + self.bias) / self.temperature)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (what contract.json holds)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**d)


def expected_calibration_error(confidence, correct, n_bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of (share of utterances) x |accuracy -
    mean confidence| (Guo et al., 2017). 0 is perfectly calibrated."""
    return sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(
        confidence, correct, n_bins)) / max(len(np.asarray(confidence)), 1)


def reliability_bins(confidence, correct, n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """The non-empty equal-width bins of [0, 1]: ``lo``, ``hi``, ``count``, mean ``confidence``
    and ``accuracy`` of the utterances in each (a reliability diagram's bars)."""
    c = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    index = np.minimum((c * n_bins).astype(int), n_bins - 1)
    bins = []
    for i in range(n_bins):
        m = index == i
        if m.any():
            bins.append({"lo": i / n_bins, "hi": (i + 1) / n_bins, "count": int(m.sum()),
                         "confidence": float(c[m].mean()), "accuracy": float(y[m].mean())})
    return bins


# ------------------------------------------------------------------------------ fallback
@dataclass
class Fallback:
    """The fallback threshold: keep a transcript when its calibrated confidence is >=
    ``threshold``, fall back otherwise. ``precision`` (accuracy of the kept) and ``coverage``
    (share kept) as measured on the set it was chosen on; ``reached``: whether ``precision`` >=
    ``target_precision`` (if not, ``threshold`` is the one with the best precision)."""

    threshold: float
    target_precision: float
    precision: float | None
    coverage: float
    reached: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kept_stats(confidence, correct, threshold: float) -> tuple[float, float | None]:
    """(coverage, accuracy of the kept) at ``threshold``; accuracy None when nothing is kept."""
    c = np.asarray(confidence, dtype=np.float64)
    keep = c >= threshold
    if not keep.any():
        return 0.0, None
    return float(keep.mean()), float(np.asarray(correct, dtype=np.float64)[keep].mean())


def threshold_for_precision(confidence, correct, target: float) -> Fallback:
    """The lowest threshold (so the most utterances kept) at which the kept ones, those with
    confidence >= threshold, are correct at least ``target`` of the time."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    c = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if len(c) == 0:
        raise ValueError("no utterances to choose a threshold on")
    order = np.argsort(-c, kind="stable")
    cs, ys = c[order], y[order]
    # Candidates: cut after the last utterance of each run of equal confidences.
    ends = np.flatnonzero(np.append(cs[1:] != cs[:-1], True))
    precision = np.cumsum(ys)[ends] / (ends + 1)
    ok = np.flatnonzero(precision >= target - 1e-12)
    best = ok[-1] if len(ok) else int(np.flatnonzero(precision == precision.max())[-1])
    threshold = float(cs[ends[best]])
    coverage, accuracy = kept_stats(c, y, threshold)
    return Fallback(threshold, target, accuracy, coverage, reached=bool(len(ok)))
