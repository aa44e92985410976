"""Real-time factor: compute seconds per audio second, measured the same way for every runner.

    timing = measure(lambda: open_runner("onnx", path, threads=1), pcms, contract.sample_rate)
    timing.rtf            # median over repeats of (time to run every pcm) / (their total duration)

Speed (``measure``, in the calling process):
1. ``load_seconds``: wall time of the runner's load (``open_runner``: read + prepare the
   artifact, session/interpreter/method creation) in a process that already loaded others.
2. ``warmup`` passes over all inputs, untimed (allocators, kernel caches, XNNPACK weight packing).
3. ``repeats`` timed passes over all inputs; ``rtf`` = median pass time / total audio seconds.
   A median, not a mean or a best, because a shared machine adds one-sided noise: compare
   artifacts within one run, as ratios.
4. ``peak_rss_delta_bytes``: growth of the peak resident set (Linux ``VmHWM``, reset through
   ``/proc/self/clear_refs`` before the load) over the resident set before it. In a process
   that ran other artifacts before, memory they freed is reused without growing the resident
   set, so this is a lower bound: ``measure_cold`` gives the real figure.

Cold start (``measure_cold``, in a fresh Python process per artifact, what an app sees at launch):
the runtime library is imported first (not timed), then ``load_seconds`` times the first load
(one-time runtime initialisation included), ``first_run_seconds`` the first inference on the
given input, and ``peak_rss_delta_bytes`` is the process's peak resident set after both minus
its resident set before the load: weights, runtime arenas, activations, code paged in by the
load. The file is in the OS page cache (it was just written), so disk reads are not included.
Peak memory is null where ``/proc`` is not available (macOS).

Threads are set by the runner (eval/runners.py); ``measure_threads`` runs the speed protocol at
one thread and at all cores, and ``measure_speed`` gives what the export report records of a
runner: both, then the cold start.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eval.runners import RUNNERS, open_runner


@dataclass
class Timing:
    """One ``measure``: the load, the median pass over the inputs and the RTF it gives."""

    threads: int
    load_seconds: float
    median_seconds: float
    audio_seconds: float
    rtf: float
    repeats: int
    pass_seconds: list[float]
    peak_rss_delta_bytes: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(load: Callable[[], object], pcms: Sequence[np.ndarray], sample_rate: int,
            repeats: int = 5, warmup: int = 1, threads: int = 1) -> Timing:
    """Time ``load()`` and then ``runner.run(pcm)`` over ``pcms`` (see the module docstring)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not pcms:
        raise ValueError("measure() needs at least one input")
    resettable = _reset_peak_rss()
    rss_before = _proc_status("VmRSS")
    start = time.perf_counter()
    runner = load()
    load_seconds = time.perf_counter() - start
    for _ in range(warmup):
        for pcm in pcms:
            runner.run(pcm)
    peak = _proc_status("VmHWM")
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for pcm in pcms:
            runner.run(pcm)
        passes.append(time.perf_counter() - start)
    audio = sum(len(p) for p in pcms) / sample_rate
    median = statistics.median(passes)
    delta = peak - rss_before if resettable and peak is not None and rss_before is not None else None
    return Timing(threads=threads, load_seconds=load_seconds, median_seconds=median,
                  audio_seconds=audio, rtf=median / audio, repeats=repeats,
                  pass_seconds=passes, peak_rss_delta_bytes=delta)


def all_threads() -> int:
    """Cores this process may run on (the "all threads" setting)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def measure_threads(open_runner: Callable[[int], object], pcms: Sequence[np.ndarray],
                    sample_rate: int, repeats: int = 5, warmup: int = 1,
                    threads_all: int | None = None) -> dict[str, Timing]:
    """``measure`` at 1 thread and at ``threads_all`` (default ``all_threads()``):
    ``{"1thread": ..., "all_threads": ...}`` (the second is omitted when that is 1).
    ``open_runner(threads)`` loads the artifact."""
    out = {"1thread": measure(lambda: open_runner(1), pcms, sample_rate, repeats, warmup, threads=1)}
    n = threads_all or all_threads()
    if n > 1:
        out["all_threads"] = measure(lambda: open_runner(n), pcms, sample_rate, repeats, warmup, threads=n)
    return out


@dataclass
class Speed:
    """A runner's speed as the export report records it: warm RTF at one thread and at all
    threads (``measure_threads``), and ``measure_cold``'s dict when the cold start was measured."""

    rtf_1thread: float | None = None
    rtf_all_threads: float | None = None
    cold: dict | None = None


def measure_speed(fmt: str, path: str | Path | None, pcms: Sequence[np.ndarray], sample_rate: int,
                  repeats: int, threads_all: int, cold_start: bool,
                  load: Callable[[int], object] | None = None) -> Speed:
    """Warm RTF of the ``fmt`` artifact at ``path`` at one thread and at ``threads_all`` (one
    measurement, recorded as all threads, for a runtime that picks its own threads: Core ML), then
    with ``cold_start`` its cold start on the longest of ``pcms``. ``repeats`` 0 measures
    nothing; ``load(threads)`` replaces ``open_runner`` for the warm runs (e.g. a model already in
    memory); without a ``path`` there is no cold start to measure."""
    speed = Speed()
    if repeats == 0:
        return speed
    load = load or (lambda n: open_runner(fmt, path, n))
    if RUNNERS[fmt].sets_threads:
        timings = measure_threads(load, pcms, sample_rate, repeats, threads_all=threads_all)
        speed.rtf_1thread = timings["1thread"].rtf
        if "all_threads" in timings:
            speed.rtf_all_threads = timings["all_threads"].rtf
    else:
        speed.rtf_all_threads = measure(lambda: load(threads_all), pcms, sample_rate, repeats).rtf
    if cold_start and path is not None:
        speed.cold = measure_cold(fmt, path, max(pcms, key=len))
    return speed


# What each runner imports, so a cold measurement does not time the Python import itself.
_RUNTIME_MODULES = {
    "torch": ("torch", "asrkd.inference", "asrkd.checkpoint"),
    "onnx": ("onnxruntime",),
    "tflite": ("ai_edge_litert.interpreter",),
    "executorch": ("torch", "executorch.runtime", "executorch.extension.pybindings.portable_lib"),
    "coreml": ("coremltools",),
    "sherpa-onnx": ("sherpa_onnx", "onnx"),
}


def measure_cold(fmt: str, path: str | Path, pcm: np.ndarray, timeout: float = 600) -> dict:
    """Load + first inference of an artifact in a fresh Python process (module docstring).

    Returns ``{"load_seconds", "first_run_seconds", "peak_rss_delta_bytes"}``; raises
    ``RuntimeError`` with the child's error output if it fails.
    """
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "pcm.npy"
        np.save(audio, np.asarray(pcm, dtype=np.float32))
        proc = subprocess.run(
            [sys.executable, "-m", "eval.rtf", fmt, str(path), str(audio)],
            capture_output=True, text=True, timeout=timeout,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start measurement of {path} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cold_main(argv: list[str]) -> int:
    """Child of ``measure_cold``: ``python -m eval.rtf FORMAT PATH PCM.npy`` -> one JSON line."""
    import importlib

    fmt, path, audio = argv
    for module in _RUNTIME_MODULES[fmt]:
        importlib.import_module(module)
    pcm = np.load(audio)
    resettable = _reset_peak_rss()
    rss_before = _proc_status("VmRSS")
    start = time.perf_counter()
    runner = open_runner(fmt, path, threads=1)
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    runner.run(pcm)
    first_run = time.perf_counter() - start
    peak = _proc_status("VmHWM")
    delta = peak - rss_before if resettable and peak is not None and rss_before is not None else None
    print(json.dumps({"load_seconds": load_seconds, "first_run_seconds": first_run,
                      "peak_rss_delta_bytes": delta}))
    return 0


if __name__ == "__main__":
    sys.exit(_cold_main(sys.argv[1:]))
