"""How well confidence predicts correctness: per-utterance outcomes, ECE before and after
calibration, the fallback threshold's coverage, and the reliability diagram (PNG).

    outcome = confidence_outcomes(transcripts, tokenizer, refs)        # one runner, one set
    cal = Calibration.fit(outcome.scores["entropy"], outcome.correct, "entropy")
    summary = calibration_summary(cal, outcome)                       # ECE before / after, bins
    reliability_diagram(summary, "reliability.png")

An utterance is *correct* when its greedy transcript equals the normalised reference word for
word (utterance WER 0): the event an app's fallback decision is about.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asrkd.confidence import (
    MEASURES,
    Calibration,
    expected_calibration_error,
    kept_stats,
    reliability_bins,
    utterance_scores,
)
from eval.report import Transcripts


@dataclass
class ConfidenceOutcomes:
    """One runner on one set: raw scores [N] of every measure of `asrkd.confidence.MEASURES`,
    and 0/1 outcomes [N] (None for an unlabelled set, e.g. out-of-scope speech)."""

    scores: dict[str, np.ndarray]
    correct: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.scores.values())))


def confidence_outcomes(transcripts: Transcripts, tokenizer,
                        refs: Sequence[str] | None = None) -> ConfidenceOutcomes:
    """Scores of ``transcripts`` (log-probs [T, V] per utterance) and, given the normalised
    ``refs``, whether each transcript is exactly right."""
    rows = [utterance_scores(lp, tokenizer, blank=tokenizer.blank_id) for lp in transcripts.log_probs]
    scores = {m: np.array([r[m] for r in rows], dtype=np.float64) for m in MEASURES}
    correct = None
    if refs is not None:
        correct = np.array([h.split() == r.split() for h, r in zip(transcripts.texts, refs, strict=True)],
                           dtype=np.float64)
    return ConfidenceOutcomes(scores, correct)


def calibration_summary(cal: Calibration, outcome: ConfidenceOutcomes) -> dict[str, Any]:
    """On ``outcome`` (a labelled set): the share ``correct``, and the ECE and reliability bins of
    the raw measure (read as a probability) and of the calibrated confidence."""
    raw = outcome.scores[cal.measure]
    calibrated = cal.apply(raw)
    return {
        "utterances": len(raw), "correct": float(outcome.correct.mean()),
        "ece_raw": expected_calibration_error(raw, outcome.correct),
        "ece_calibrated": expected_calibration_error(calibrated, outcome.correct),
        "bins_raw": reliability_bins(raw, outcome.correct),
        "bins_calibrated": reliability_bins(calibrated, outcome.correct),
    }


def at_threshold(cal: Calibration, outcome: ConfidenceOutcomes, threshold: float) -> dict[str, Any]:
    """What the fallback threshold does on a set: ``coverage`` (share kept) and ``accuracy``
    (share of the kept that are right) on a labelled one, ``rejection`` (share falling back) on
    an unlabelled one (out-of-scope speech), and the calibrated confidence's median."""
    calibrated = cal.apply(outcome.scores[cal.measure])
    d: dict[str, Any] = {"utterances": len(calibrated),
                         "median_confidence": float(np.median(calibrated)) if len(calibrated) else None}
    if outcome.correct is None:
        d["rejection"] = float((calibrated < threshold).mean()) if len(calibrated) else None
    else:
        d["coverage"], d["accuracy"] = kept_stats(calibrated, outcome.correct, threshold)
    return d


def reliability_diagram(summary: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Reliability diagram PNG: accuracy against mean confidence per bin, raw and calibrated,
    with the diagonal (perfect calibration); the legend gives each ECE."""
    from eval.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfectly calibrated")
    for key, label, colour in (("raw", "raw", "#b22222"), ("calibrated", "calibrated", "#2e8b57")):
        bins = summary[f"bins_{key}"]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=colour,
                label=f"{label} (ECE {summary[f'ece_{key}']:.3f})")
        for b in bins:
            ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7, color=colour,
                        textcoords="offset points", xytext=(3, 3))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (bin mean)", ylabel="share of utterances exactly right",
           title=title or "Reliability (numbers: utterances per bin)")
    ax.legend(loc="upper left", fontsize=8)
    path = _save(fig, Path(path))
    plt.close(fig)
    return path
