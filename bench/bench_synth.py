"""Throughput of `asrkd synth`: audio seconds per wall second with 1 and with 2 worker processes.

    python bench/bench_synth.py [--task digits] [--n 200] [--seed 0] [--repeats 3]

Every run synthesises the same request (so the same audio) into a fresh folder and times the whole
`synthesize_corpus` call: planning, starting the workers, espeak-ng, resampling, writing the wavs
and the manifest. Runs with 1 and 2 workers alternate, and the best run of each counts: on a shared
machine other jobs only ever slow a run down, so the fastest is the least disturbed. Compare the
two numbers of one invocation, as a ratio. The CPU time of this process and its workers is printed
too: it does not depend on other jobs, so it shows what a run costs even when the wall clock
cannot show the gain of a second worker (a busy machine has no idle core to give it).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from asrkd.data import read_manifest
from asrkd.synth import TASKS, synthesize_corpus


def _cpu_seconds() -> float:
    """User + system time of this process and of its finished children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(task: str, n: int, seed: int, workers: int, root: Path) -> tuple[float, float, float]:
    """(audio seconds, wall seconds, CPU seconds) of one fresh synthesis."""
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    manifest = synthesize_corpus(
        task, n, root / f"workers{workers}", seed=seed, workers=workers, progress=False
    )
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    return sum(u.duration for u in read_manifest(manifest)), wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="digits")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per worker count")
    args = parser.parse_args()

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for workers in rates:
            with tempfile.TemporaryDirectory() as tmp:
                audio, wall, cpu = measure(args.task, args.n, args.seed, workers, Path(tmp))
            rates[workers].append(audio / wall)
            print(
                f"{args.task} n={args.n} workers={workers}: {audio:.1f} s of audio in "
                f"{wall:.2f} s -> {audio / wall:.1f} audio s per wall s "
                f"({cpu:.2f} CPU s, {audio / cpu:.1f} audio s per CPU s)"
            )
    best = {workers: max(r) for workers, r in rates.items()}
    print(f"best: 1 worker {best[1]:.1f}, 2 workers {best[2]:.1f} audio s per wall s")
    print(f"2 workers / 1 worker: {best[2] / best[1]:.2f}x")


if __name__ == "__main__":
    main()
