"""Confidence from CTC output (asrkd.confidence): frame, token, word and utterance measures, the
calibration that turns them into P(correct), ECE, and the fallback threshold search."""

import numpy as np
import pytest

from asrkd.confidence import (
    MEASURES,
    Calibration,
    expected_calibration_error,
    frame_confidence,
    kept_stats,
    reliability_bins,
    threshold_for_precision,
    token_spans,
    utterance_scores,
    word_spans,
)
from asrkd.decoding import utterance_confidence
from asrkd.text import CharTokenizer
from eval.calibration import calibration_summary, confidence_outcomes, reliability_diagram
from eval.report import Transcripts

TOKENIZER = CharTokenizer.default_english()


def frames(symbols, peak):
    """Log-probs [T, V]: frame t puts ``peak[t]`` on ``symbols[t]`` ("" = blank), the rest spread
    evenly over the other tokens."""
    v = TOKENIZER.vocab_size
    lp = np.empty((len(symbols), v))
    for t, (sym, p) in enumerate(zip(symbols, peak, strict=True)):
        lp[t] = np.log((1.0 - p) / (v - 1))
        lp[t, TOKENIZER.tokens.index(sym) if sym else TOKENIZER.blank_id] = np.log(p)
    return lp


def test_frame_confidence_is_one_for_one_hot_and_zero_for_uniform():
    v = TOKENIZER.vocab_size
    lp = np.stack([np.log(np.full(v, 1.0 / v)), np.log(np.eye(v)[3] + 1e-30)])
    for measure in ("entropy", "max_prob"):
        assert frame_confidence(lp, measure) == pytest.approx([0.0, 1.0], abs=1e-6)


def test_tokens_and_words_of_the_greedy_path_carry_their_least_confident_frame():
    # "ab c": blank, a a, b, ▁, blank, c — the frames of "b" are the least sure of word "ab".
    lp = frames(["", "a", "a", "b", "\u2581", "", "c"], [0.99, 0.9, 0.99, 0.6, 0.95, 0.99, 0.97])
    tokens = token_spans(lp, TOKENIZER)
    assert [(t.text, t.start, t.end) for t in tokens] == [("a", 1, 3), ("b", 3, 4), ("\u2581", 4, 5), ("c", 6, 7)]
    conf = frame_confidence(lp, "max_prob")
    assert tokens[0].confidence == pytest.approx(conf[1])  # min of its two frames
    words = word_spans(lp, TOKENIZER)
    assert [(w.text, w.start, w.end) for w in words] == [("ab", 1, 4), ("c", 6, 7)]
    assert words[0].confidence == pytest.approx(conf[3]) and words[1].confidence == pytest.approx(conf[6])
    scores = utterance_scores(lp, TOKENIZER)
    assert scores["word_min"] == pytest.approx(conf[3])
    assert scores["word_mean"] == pytest.approx((conf[3] + conf[6]) / 2)
    assert scores["entropy"] == utterance_confidence(lp)  # asrkd's existing value, unchanged


def test_an_empty_hypothesis_scores_how_sure_the_model_is_of_silence():
    sure, unsure = frames(["", ""], [0.99, 0.99]), frames(["", ""], [0.3, 0.3])
    assert word_spans(sure, TOKENIZER) == []
    assert utterance_scores(sure, TOKENIZER)["word_min"] > 0.9 > 0.5 > utterance_scores(unsure, TOKENIZER)["word_min"]


def planted_model(n, rng):
    """A miscalibrated CTC model on ``n`` utterances: each one's token frames peak at 0.80-0.999
    (raw confidence high), but it is right only with probability min(1, 5 (peak - 0.8)): far less
    often than its confidence says. Returns its `ConfidenceOutcomes`."""
    log_probs, texts, refs = [], [], []
    for _ in range(n):
        peak = rng.uniform(0.8, 0.999)
        right = rng.random() < min(1.0, 5 * (peak - 0.8))
        log_probs.append(frames(["", "a", "", "b", ""], [0.99, peak, 0.99, peak, 0.99]))
        texts.append("ab")
        refs.append("ab" if right else "abc")
    return confidence_outcomes(Transcripts(log_probs, texts, [1] * n), TOKENIZER, refs)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
@pytest.mark.parametrize("measure", MEASURES)
def test_calibration_of_a_planted_miscalibrated_model_reduces_ece(method, measure):
    rng = np.random.default_rng(0)
    fit = planted_model(400, rng)
    held_out = planted_model(400, rng)
    cal = Calibration.fit(fit.scores[measure], fit.correct, measure, method)
    summary = calibration_summary(cal, held_out)
    assert summary["ece_raw"] > 0.2  # planted: confidence far above accuracy
    assert summary["ece_calibrated"] < 0.07 < summary["ece_raw"] / 3
    p = cal.apply(held_out.scores[measure])
    assert np.all((p >= 0) & (p <= 1))
    # Monotone: calibration re-labels the ranking, it never reorders it.
    order = np.argsort(held_out.scores[measure])
    assert np.all(np.diff(p[order]) >= -1e-12)


def test_calibration_round_trips_through_a_dict():
    rng = np.random.default_rng(1)
    raw, correct = rng.random(50), rng.random(50) < 0.5
    for method in ("temperature", "isotonic"):
        cal = Calibration.fit(raw, correct, "word_min", method)
        again = Calibration.from_dict(cal.to_dict())
        assert again == cal and np.array_equal(again.apply(raw), cal.apply(raw))


def test_calibration_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="unknown confidence measure 'nope'"):
        Calibration.fit([0.1, 0.9], [0, 1], "nope")
    with pytest.raises(ValueError, match="unknown calibration method 'platt'"):
        Calibration.fit([0.1, 0.9], [0, 1], "entropy", "platt")
    with pytest.raises(ValueError, match="need >= 2 scores"):
        Calibration.fit([0.1], [0], "entropy")


def test_ece_of_a_calibrated_and_of_an_overconfident_set():
    conf = np.repeat([0.15, 0.55, 0.95], 20)
    correct = np.concatenate([np.arange(20) < 3, np.arange(20) < 11, np.arange(20) < 19])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(np.full(60, 0.95), correct) == pytest.approx(0.95 - 33 / 60)
    assert [b["count"] for b in reliability_bins(conf, correct)] == [20, 20, 20]


def test_threshold_search_hits_the_requested_precision_with_the_most_coverage():
    # 100 utterances, confidence 1.00, 0.99, ...: the top 30 right, then right two times in three.
    conf = 1.0 - np.arange(100) / 100
    correct = np.concatenate([np.ones(30), np.arange(70) % 3 != 2])
    for target in (0.8, 0.9, 0.95, 1.0):
        fb = threshold_for_precision(conf, correct, target)
        assert fb.reached and fb.precision >= target
        assert (fb.coverage, fb.precision) == kept_stats(conf, correct, fb.threshold)
        # Every lower threshold keeps more but misses the target.
        for t in conf[conf < fb.threshold]:
            assert kept_stats(conf, correct, t)[1] < target
    fb = threshold_for_precision(conf, correct, 1.0)
    assert fb.threshold == pytest.approx(0.69) and fb.coverage == pytest.approx(0.32)  # 31st, 32nd right too
    assert threshold_for_precision(conf, correct, 0.9).coverage == pytest.approx(0.44)  # 40 of 44 right


def test_an_unreachable_precision_is_flagged_with_the_best_threshold():
    conf, correct = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 1, 0])
    fb = threshold_for_precision(conf, correct, 0.95)
    assert not fb.reached and fb.threshold == pytest.approx(0.7) and fb.precision == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="target precision must be in"):
        threshold_for_precision(conf, correct, 1.5)


def test_reliability_diagram_is_written(tmp_path):
    rng = np.random.default_rng(2)
    outcome = planted_model(60, rng)
    cal = Calibration.fit(outcome.scores["entropy"], outcome.correct, "entropy")
    path = reliability_diagram(calibration_summary(cal, outcome), tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
