"""Front-end speed: asrkd's LogMel against librosa's log-mel on the same audio, one thread.

    python bench/bench_frontend.py [--seconds 60] [--repeats 15]

Uses 60 s of real speech (FSDD recordings, resampled to 16 kHz, end to end) when
../shared/data/fsdd is present, else a synthetic chirp plus noise; speed does not depend on the
content. Both sides compute mel power and a floored log; LogMel also normalises (its default).
Timing noise on a shared machine is large: compare the two within one run, as a ratio.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch load their thread pools

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from asrkd.audio import load_audio  # noqa: E402
from asrkd.contract import SAMPLE_RATE  # noqa: E402
from asrkd.features import FrontendConfig, LogMel  # noqa: E402

FSDD_CONNECTED = (
    Path(__file__).resolve().parents[1].parent / "shared/data/fsdd/audio/fsdd_connected"
)


def bench_audio(seconds: float) -> tuple[np.ndarray, str]:
    """``float32 [seconds * SAMPLE_RATE]`` of speech if FSDD is here, else a synthetic signal."""
    n = round(seconds * SAMPLE_RATE)
    pieces, total = [], 0
    for path in sorted(FSDD_CONNECTED.glob("*/*.wav")):
        if total >= n:
            break
        pieces.append(load_audio(path))
        total += len(pieces[-1])
    if total >= n:
        return np.concatenate(pieces)[:n], f"FSDD speech ({len(pieces)} files)"
    rng = np.random.default_rng(0)
    chirp = librosa.chirp(fmin=50, fmax=7900, sr=SAMPLE_RATE, duration=seconds)[:n]
    signal = 0.3 * chirp + 0.01 * rng.standard_normal(n)
    return signal.astype(np.float32), "synthetic chirp + noise"


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocations, librosa's first-call work
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio length (default 60)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per method (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    wav, source = bench_audio(args.seconds)
    config = FrontendConfig()
    module = LogMel(config).eval()
    batch, lengths = torch.from_numpy(wav)[None], torch.tensor([len(wav)])
    # The same audio as a batch of 8 chunks, the shape a training step hands the front end.
    chunks = torch.from_numpy(wav).reshape(8, -1) if len(wav) % 8 == 0 else None

    def logmel_one() -> None:
        with torch.inference_mode():
            module(batch, lengths)

    def logmel_batch() -> None:
        with torch.inference_mode():
            module(chunks, torch.full((8,), chunks.shape[1]))

    def librosa_logmel() -> None:
        mel = librosa.feature.melspectrogram(
            y=wav, sr=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
            win_length=config.win_length, n_mels=config.n_mels, power=2.0, center=True,
            pad_mode="constant",
        )  # fmt: skip
        np.log(np.maximum(mel, config.log_floor))

    audio_seconds = len(wav) / SAMPLE_RATE
    one = f"asrkd LogMel, 1 x {audio_seconds:g} s"
    runs = {one: logmel_one}
    if chunks is not None:
        runs[f"asrkd LogMel, 8 x {audio_seconds / 8:g} s"] = logmel_batch
    runs["librosa melspectrogram + log"] = librosa_logmel

    print(
        f"log-mel front end on {audio_seconds:.1f} s of {source} at {SAMPLE_RATE} Hz; "
        f"1 thread, median of {args.repeats}; torch {torch.__version__}, librosa {librosa.__version__}"
    )
    print(f"{'':32s}{'ms per 60 s':>12s}{'audio s / wall s':>18s}")
    seconds = {}
    for name, fn in runs.items():
        seconds[name] = median_seconds(fn, args.repeats)
        per_60 = seconds[name] * 1e3 * 60 / audio_seconds
        print(f"{name:32s}{per_60:12.1f}{audio_seconds / seconds[name]:18.0f}")
    ratio = seconds["librosa melspectrogram + log"] / seconds[one]
    print(f"librosa time / LogMel time (1 utterance): {ratio:.2f}")


if __name__ == "__main__":
    main()
