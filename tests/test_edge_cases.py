"""The edge-case suite's transforms (eval/edge_cases.py) do what they say: the SNR measured on the
result, lengths, levels, the band limit, silence where it should be."""

import numpy as np
import pytest

from asrkd.audio import write_wav
from asrkd.contract import SAMPLE_RATE
from eval.edge_cases import (
    add_noise,
    band_limit,
    change_level,
    change_speed,
    concatenate,
    edge_case_conditions,
    pad_silence,
    silence,
)

SR = SAMPLE_RATE


def tone(hz=440.0, seconds=1.0, amplitude=0.3):
    t = np.arange(round(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def power(x):
    return float(np.mean(np.square(x, dtype=np.float64)))


def peak_hz(x):
    return float(np.argmax(np.abs(np.fft.rfft(x))) * SR / len(x))


@pytest.mark.parametrize("snr", [20.0, 10.0, 0.0])
def test_noise_is_added_at_the_requested_snr(snr, tmp_path):
    clean = tone()
    noisy = add_noise(clean, snr, np.random.default_rng(0), SR)
    assert noisy.shape == clean.shape
    assert 10 * np.log10(power(clean) / power(noisy - clean)) == pytest.approx(snr, abs=0.01)
    # A noise folder the user names: crops of its files, at the same SNR.
    write_wav(tmp_path / "hum.wav", tone(50.0, 3.0, 0.5), SR)
    hummed = add_noise(clean, snr, np.random.default_rng(0), SR, noise=[tmp_path / "hum.wav"])
    assert 10 * np.log10(power(clean) / power(hummed - clean)) == pytest.approx(snr, abs=0.01)
    assert peak_hz(hummed - clean) == pytest.approx(50.0, abs=1.0)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_duration_and_pitch_by_the_factor(factor):
    clean = tone(seconds=2.0)
    fast = change_speed(clean, factor, SR)
    assert len(fast) == round(len(clean) / factor)
    assert peak_hz(fast) == pytest.approx(440.0 * factor, rel=0.01)


def test_level_and_clipping():
    clean = tone()
    quiet = change_level(clean, -30.0)
    assert 10 * np.log10(power(quiet) / power(clean)) == pytest.approx(-30.0, abs=1e-3)
    clipped = change_level(clean, 20.0)  # 0.3 x 10 = 3: most of each period is cut at +-1
    assert np.abs(clipped).max() == 1.0 and np.mean(np.abs(clipped) == 1.0) > 0.5


def test_telephone_band_limit_removes_everything_above_4_khz():
    white = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    out = band_limit(white, SR)
    assert out.shape == white.shape
    spec_in, spec_out = np.abs(np.fft.rfft(white)) ** 2, np.abs(np.fft.rfft(out)) ** 2
    hz = np.fft.rfftfreq(len(white), 1 / SR)
    assert spec_out[hz > 4100].sum() < 1e-4 * spec_out.sum()
    assert spec_out[hz < 3000].sum() == pytest.approx(spec_in[hz < 3000].sum(), rel=0.02)


def test_silence_padding_keeps_the_speech_between_exact_silences():
    clean = tone()
    padded = pad_silence(clean, SR, 1.0, 2.0)
    assert len(padded) == len(clean) + 3 * SR
    assert not padded[:SR].any() and not padded[SR + len(clean):].any()
    assert np.array_equal(padded[SR:SR + len(clean)], clean)


def test_long_concatenation_lasts_a_minute_and_joins_the_references():
    pcms, refs = [tone(seconds=7.0), tone(660.0, 5.0)], ["one two", "three"]
    long, ref = concatenate(pcms, refs, SR)
    assert len(long) >= 60 * SR
    # 7 + 0.3 + 5 + 0.3 ... : ten pieces reach 60 s (five of each).
    assert ref == " ".join(["one two three"] * 5)
    assert len(long) == 5 * (7 + 5) * SR + 9 * round(0.3 * SR)
    assert np.array_equal(long[: 7 * SR], pcms[0]) and not long[7 * SR: 7 * SR + round(0.3 * SR)].any()
    with pytest.raises(ValueError, match="at least one non-empty utterance"):
        concatenate([], [], SR)


def test_the_suite_names_every_condition_and_is_reproducible():
    conds = {c.name: c for c in edge_case_conditions(SR)}
    assert list(conds) == ["noise_20db", "noise_10db", "noise_0db", "speed_0.9", "speed_1.1", "level_-30db",
                           "clipping", "telephone_8khz", "silence_padding", "long_concatenation", "silence_only"]
    pcms, refs = [tone(), tone(880.0, 0.5)], ["a", "b"]
    for cond in conds.values():
        out, out_refs = cond.apply(pcms, refs, np.random.default_rng(3))
        again, _ = cond.apply(pcms, refs, np.random.default_rng(3))
        assert all(np.array_equal(x, y) for x, y in zip(out, again, strict=True)), cond.name
        assert len(out) == len(out_refs) and all(x.dtype == np.float32 for x in out), cond.name
    quiet, quiet_refs = conds["silence_only"].apply(pcms, refs, np.random.default_rng(0))
    assert conds["silence_only"].expects_empty and quiet_refs == ["", ""]
    assert [len(x) for x in quiet] == [SR, 5 * SR] and not any(x.any() for x in quiet)
    assert np.array_equal(silence(0.5, SR), np.zeros(SR // 2, np.float32))
    assert conds["noise_0db"].apply(pcms, refs, np.random.default_rng(0))[1] == refs
