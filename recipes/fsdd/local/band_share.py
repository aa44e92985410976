"""Share of energy in 1-4 kHz of each FSDD speaker's isolated "eight" and "six" (docs/TRAINING.md).

    python recipes/fsdd/local/band_share.py [FSDD_DIR]      (default: ../shared/data/fsdd)

Per take: 20 ms frames (Hann window) of the 8 kHz recording (read with asrkd.audio.load_audio); "whole" is over the frames within
30 dB of the take's loudest, "onset" over the first three of them (60 ms). Printed: the mean over
each speaker's takes of the word.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from asrkd.audio import load_audio
from asrkd.data import read_manifest

WORDS = ("eight", "six")
BAND_HZ = (1000.0, 4000.0)
SAMPLE_RATE = 8000  # FSDD's own rate: nothing is resampled


def band_shares(wav: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(whole, onset) 1-4 kHz energy share of one take."""
    n = sample_rate // 50
    frames = wav[: len(wav) // n * n].reshape(-1, n)
    power = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)) ** 2
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    in_band = (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])
    energy_db = 10 * np.log10(power.sum(axis=1) + 1e-12)
    active = np.flatnonzero(energy_db > energy_db.max() - 30)
    whole, onset = power[active], power[active[0] : active[0] + 3]
    return float(whole[:, in_band].sum() / whole.sum()), float(onset[:, in_band].sum() / onset.sum())


def main() -> None:
    fsdd = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/fsdd")
    shares = defaultdict(list)
    for utt in read_manifest(fsdd / "manifests" / "fsdd_isolated.jsonl"):
        if utt.text in WORDS:
            wav = load_audio(utt.audio_filepath, SAMPLE_RATE, offset=utt.offset, duration=utt.duration)
            shares[utt.speaker, utt.text].append(band_shares(wav, SAMPLE_RATE))
    print("speaker          " + "  ".join(f'"{w}": whole / onset' for w in WORDS))
    for speaker in sorted({s for s, _ in shares}):
        cells = [np.mean(shares[speaker, w], axis=0) for w in WORDS]
        print(f"{speaker:16s} " + "  ".join(f"{c[0]:14.2f} / {c[1]:.2f}" for c in cells))


if __name__ == "__main__":
    main()
