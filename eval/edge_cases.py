"""The edge-case suite: the evaluation set under conditions an app meets and training may not.

    for cond in edge_case_conditions(sample_rate):
        pcms, refs = cond.apply(eval_pcms, eval_refs, np.random.default_rng(0))
        ...  # run a model on pcms, score against refs

Each condition maps a labelled set (float32 PCM [N] per utterance, normalised references) to the
set the model is scored on:

| condition | what it does | references |
|---|---|---|
| ``noise_20db`` / ``10db`` / ``0db`` | adds noise at that SNR over the whole utterance: asrkd's white/pink noise, or crops of the noise files given | unchanged |
| ``speed_0.9`` / ``speed_1.1`` | plays the audio 0.9x / 1.1x as fast (pitch moves too; length N / factor) | unchanged |
| ``level_-30db`` | 30 dB quieter | unchanged |
| ``clipping`` | 20 dB louder, hard-clipped to [-1, 1] (an overdriven input) | unchanged |
| ``telephone_8khz`` | band-limited to 4 kHz (resampled to 8 kHz and back), as telephony | unchanged |
| ``silence_padding`` | 1 s of digital silence before and 2 s after | unchanged |
| ``long_concatenation`` | the utterances joined, 0.3 s apart and repeated as needed, into one of at least 60 s (the long-audio path) | joined the same way |
| ``silence_only`` | one 1 s and one 5 s recording of digital silence | empty: any output is an error |

The transforms reuse the training augmentations of `asrkd.data.augment` with their randomness
pinned (one SNR, one speed factor, one cutoff), so a condition means the same thing in training
and in the suite. All randomness comes from the ``rng`` given to ``apply``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrkd.audio import resample
from asrkd.data.augment import AddNoise, SpeedPerturb

NOISE_SNRS_DB = (20.0, 10.0, 0.0)
SPEEDS = (0.9, 1.1)
QUIET_DB = -30.0
CLIPPING_DRIVE_DB = 20.0
TELEPHONE_RATE = 8000
LEAD_SILENCE_S, TRAIL_SILENCE_S = 1.0, 2.0
LONG_MIN_SECONDS, LONG_GAP_S = 60.0, 0.3
SILENCE_ONLY_S = (1.0, 5.0)


def add_noise(pcm: np.ndarray, snr_db: float, rng: np.random.Generator, sample_rate: int,
              noise: Sequence[str | Path] | None = None) -> np.ndarray:
    """``pcm`` [N] plus noise scaled to ``snr_db`` over the whole utterance -> [N]."""
    return AddNoise(snr_db=(snr_db, snr_db), noise=noise, prob=1.0, sample_rate=sample_rate)(pcm, rng)


def change_speed(pcm: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """``pcm`` [N] played ``factor`` times as fast -> [round(N / factor)]."""
    return SpeedPerturb(factors=(factor,), sample_rate=sample_rate)(pcm, np.random.default_rng(0))


def change_level(pcm: np.ndarray, gain_db: float) -> np.ndarray:
    """``pcm`` [N] scaled by ``gain_db`` and clipped to [-1, 1] (float PCM's range) -> [N]."""
    return np.clip(pcm * 10.0 ** (gain_db / 20.0), -1.0, 1.0).astype(np.float32)


def band_limit(pcm: np.ndarray, sample_rate: int, rate: int = TELEPHONE_RATE) -> np.ndarray:
    """``pcm`` [N] resampled to ``rate`` and back (nothing above rate / 2 survives) -> [N]."""
    out = resample(resample(pcm, sample_rate, rate), rate, sample_rate)
    n = len(pcm)
    return out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))


def pad_silence(pcm: np.ndarray, sample_rate: int, lead_s: float, trail_s: float) -> np.ndarray:
    """``pcm`` [N] with ``lead_s`` and ``trail_s`` seconds of zeros around it."""
    return np.pad(pcm, (round(lead_s * sample_rate), round(trail_s * sample_rate))).astype(np.float32)


def concatenate(pcms: Sequence[np.ndarray], refs: Sequence[str], sample_rate: int,
                min_seconds: float = LONG_MIN_SECONDS, gap_s: float = LONG_GAP_S) -> tuple[np.ndarray, str]:
    """The utterances in order, ``gap_s`` of silence between them, cycled until the result lasts
    at least ``min_seconds``: (pcm [M], the references joined with spaces)."""
    if not pcms or not any(len(p) for p in pcms):
        raise ValueError("need at least one non-empty utterance to concatenate")
    gap = np.zeros(round(gap_s * sample_rate), dtype=np.float32)
    pieces, words, n, i = [], [], 0, 0
    while n < min_seconds * sample_rate:
        k = i % len(pcms)
        if pieces:
            pieces.append(gap)
            n += len(gap)
        pieces.append(np.asarray(pcms[k], dtype=np.float32))
        words.append(refs[k])
        n += len(pcms[k])
        i += 1
    return np.concatenate(pieces), " ".join(w for w in words if w)


def silence(seconds: float, sample_rate: int) -> np.ndarray:
    """Digital silence: zeros [round(seconds * sample_rate)]."""
    return np.zeros(round(seconds * sample_rate), dtype=np.float32)


Labelled = tuple[list[np.ndarray], list[str]]


@dataclass(frozen=True)
class Condition:
    """One named condition: ``apply(pcms, refs, rng)`` -> the (pcms, refs) to score.
    ``expects_empty``: every correct output is empty (silence only)."""

    name: str
    description: str
    transform: Callable[[list[np.ndarray], list[str], np.random.Generator], Labelled]
    expects_empty: bool = False

    def apply(self, pcms: Sequence[np.ndarray], refs: Sequence[str], rng: np.random.Generator) -> Labelled:
        return self.transform(list(pcms), list(refs), rng)


def _each(fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]):
    """A per-utterance transform as a set transform (references unchanged)."""
    return lambda pcms, refs, rng: ([fn(p, rng) for p in pcms], refs)


def edge_case_conditions(sample_rate: int, noise: Sequence[str | Path] | None = None) -> list[Condition]:
    """The suite (module docstring) for audio at ``sample_rate``; ``noise``: noise files to
    draw from instead of asrkd's generated white/pink noise."""
    source = "the given noise files" if noise else "white or pink noise"
    conds = [Condition(f"noise_{snr:g}db", f"{source} at {snr:g} dB SNR",
                       _each(lambda p, rng, s=snr: add_noise(p, s, rng, sample_rate, noise)))
             for snr in NOISE_SNRS_DB]
    conds += [Condition(f"speed_{f:g}", f"played {f:g}x as fast",
                        _each(lambda p, rng, f=f: change_speed(p, f, sample_rate))) for f in SPEEDS]
    conds += [
        Condition(f"level_{QUIET_DB:g}db", f"{-QUIET_DB:g} dB quieter", _each(lambda p, rng: change_level(p, QUIET_DB))),
        Condition("clipping", f"{CLIPPING_DRIVE_DB:g} dB louder, clipped to [-1, 1]",
                  _each(lambda p, rng: change_level(p, CLIPPING_DRIVE_DB))),
        Condition("telephone_8khz", f"band-limited through {TELEPHONE_RATE} Hz",
                  _each(lambda p, rng: band_limit(p, sample_rate))),
        Condition("silence_padding", f"{LEAD_SILENCE_S:g} s of silence before, {TRAIL_SILENCE_S:g} s after",
                  _each(lambda p, rng: pad_silence(p, sample_rate, LEAD_SILENCE_S, TRAIL_SILENCE_S))),
        Condition("long_concatenation", f"utterances joined into one of >= {LONG_MIN_SECONDS:g} s",
                  lambda pcms, refs, rng: tuple([x] for x in concatenate(pcms, refs, sample_rate))),
        Condition("silence_only", "digital silence of " + " and ".join(f"{s:g} s" for s in SILENCE_ONLY_S),
                  lambda pcms, refs, rng: ([silence(s, sample_rate) for s in SILENCE_ONLY_S],
                                           [""] * len(SILENCE_ONLY_S)),
                  expects_empty=True),
    ]
    return conds
