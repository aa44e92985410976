"""Streaming latency: how long after the speech starts the first token appears, and how long
after the audio ends the final text is ready, on one thread, with audio arriving in real time.

    stepper = TranscriberStepper(StreamingTranscriber.from_checkpoint("runs/stream/student_kd"))
    stats = measure_latency(stepper, waves, sample_rate=16000)
    stats.first_partial.median, stats.final.p95, stats.rtf.median     # seconds, seconds, ratio

Any streaming runtime is measured through the same small protocol, `ChunkStepper` (the PyTorch
`asrkd.streaming.StreamingTranscriber` through `TranscriberStepper`; the exported ONNX and TFLite
artifacts through eval/streaming_runners.py): it is fed the utterance one chunk at a time and
returns the token ids each call emitted.

The simulated clock (one thread, so compute never overlaps)
----------------------------------------------------------
Audio arrives in real time from ``t = 0`` (the utterance's first sample). With ``C`` =
``chunk_samples``, ``L`` = ``lookahead_samples`` (samples past a chunk's end that its last feature
frame reads, 0 unless the stepper declares them) and ``N`` samples in all, call ``k`` gets the
samples ``[k C + L, (k + 1) C + L)`` (the first call also ``[0, L)``; the last, shorter piece ends
at ``N``) and can start once its last sample has arrived:

    arrival_k = min((k + 1) C + L, N) / sample_rate
    start_k   = max(arrival_k, end_{k-1})          # waits for its audio, and for the previous call
    end_k     = start_k + compute_k                # compute_k: the measured wall time of step()
    finish:     start = max(N / sample_rate, end of the last step), end = start + its compute

so a backlog (a call slower than a chunk of audio) delays every later call, as on a device.

Per utterance:
- **speech onset**: the start of the first 10 ms frame whose energy (mean square) is within
  ``onset_db`` (default 30 dB) of the utterance's loudest 10 ms frame; silence or noise before
  the speech does not count as waiting for the model.
- **first-partial latency**: from the speech onset to the end of the call that emitted the first
  token (a `finish` included). Negative if the model emitted a token before the speech started.
  Utterances with no token at all have none (counted in ``no_token``).
- **final latency**: from the end of the audio to the end of `finish` (the final text).
- **compute per chunk**: the wall time of each ``step`` call; **RTF**: all calls' compute
  (``finish`` included) over the audio's duration.

`LatencyStats` gives the median and p95 of each over a set of utterances (compute per chunk
pooled over every call of every utterance).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from asrkd.audio import AudioError
from asrkd.contract import BLANK_ID
from asrkd.data.dataset import AudioDataset
from asrkd.data.manifest import ManifestError, read_manifest
from asrkd.fileio import atomic_write_text
from asrkd.streaming import StreamingError, StreamingTranscriber, lookahead_samples

ONSET_FRAME_SECONDS = 0.010
DEFAULT_ONSET_DB = 30.0


@runtime_checkable
class ChunkStepper(Protocol):
    """A streaming recogniser fed one chunk of PCM at a time (one utterance, one thread).

    ``chunk_samples``: samples per `step` call. ``step(pcm)`` takes float32 mono PCM ``[n]``,
    ``n == chunk_samples`` (``+ lookahead_samples`` in the first call) except for the utterance's
    last piece, which may be shorter (a runtime with a fixed-length input keeps it and processes
    it in `finish`), and returns the token ids
    this call emitted that no earlier call did: greedy CTC, collapsed across chunks (`CtcCollapse`),
    so the concatenation of every call's return value is the utterance's hypothesis. ``finish()``
    ends the utterance (flushes the front end and the last chunk) and returns the last new ids;
    ``reset()`` starts the next utterance.

    Optional attribute ``lookahead_samples`` (int, default 0): samples after the end of chunk ``k``
    that the stepper needs before chunk ``k``'s output is complete; `measure_latency` then feeds
    the first call ``chunk_samples + lookahead_samples`` samples and every later call's audio
    ``lookahead_samples`` later (module docstring).
    """

    chunk_samples: int

    def reset(self) -> None: ...

    def step(self, pcm: np.ndarray) -> list[int]: ...

    def finish(self) -> list[int]: ...


class CtcCollapse:
    """Greedy CTC over log-probs that arrive a chunk at a time: ``push(log_probs [t, V])`` -> the
    token ids these frames add (per-frame argmax, repeats collapsed across chunk boundaries too,
    blanks dropped). The pushes together give `asrkd.decoding.greedy_decode` of all the frames."""

    def __init__(self, blank: int = BLANK_ID):
        self.blank = blank
        self.reset()

    def reset(self) -> None:
        """A new utterance: the frame before the first is a blank."""
        self.last = self.blank

    def push(self, log_probs: np.ndarray | torch.Tensor) -> list[int]:
        """``log_probs [t, V]`` (any monotone scores) -> the new token ids."""
        ids = np.asarray(log_probs).argmax(axis=-1).reshape(-1)
        if ids.size == 0:
            return []
        prev = np.concatenate([[self.last], ids[:-1]])
        self.last = int(ids[-1])
        return [int(i) for i in ids[(ids != self.blank) & (ids != prev)]]


class TranscriberStepper:
    """`asrkd.streaming.StreamingTranscriber` as a `ChunkStepper` (PyTorch, the reference).

    ``lookahead_samples``: what the streaming front end needs past a chunk's end
    (`asrkd.streaming.lookahead_samples`).
    """

    def __init__(self, transcriber: StreamingTranscriber):
        if transcriber.chunk_samples is None:
            raise StreamingError("a full-context StreamingTranscriber (chunk_size -1) emits nothing before "
                                 "finalize(); latency is measured on a chunked one")
        self.transcriber = transcriber
        self.chunk_samples = transcriber.chunk_samples
        self.lookahead_samples = lookahead_samples(transcriber.frontend)
        self.collapse = CtcCollapse(transcriber.contract.blank_id)
        self._frames = 0

    def reset(self) -> None:
        """A new utterance."""
        self.transcriber.reset()
        self.collapse.reset()
        self._frames = 0

    def step(self, pcm: np.ndarray) -> list[int]:
        """``accept_waveform(pcm)`` -> the token ids of the chunks it decoded."""
        self.transcriber.accept_waveform(pcm)
        return self._new_tokens()

    def finish(self) -> list[int]:
        """``finalize()`` -> the token ids of the last chunk."""
        self.transcriber.finalize()
        return self._new_tokens()

    def _new_tokens(self) -> list[int]:
        log_probs = self.transcriber.log_probs
        new = self.collapse.push(log_probs[self._frames :].cpu().numpy())
        self._frames = log_probs.size(0)
        return new


def speech_onset(wave: np.ndarray, sample_rate: int, onset_db: float = DEFAULT_ONSET_DB) -> float:
    """Seconds from the first sample to the start of the first 10 ms frame whose mean square is
    within ``onset_db`` dB of the loudest 10 ms frame's (0 for silence or a wave shorter than a
    frame: the whole wave counts as speech)."""
    frame = max(1, round(ONSET_FRAME_SECONDS * sample_rate))
    n = len(wave) // frame
    if n == 0:
        return 0.0
    energy = np.square(np.asarray(wave[: n * frame], dtype=np.float64)).reshape(n, frame).mean(axis=1)
    peak = energy.max()
    if peak <= 0:
        return 0.0
    return int(np.argmax(energy >= peak * 10 ** (-onset_db / 10))) * frame / sample_rate


@dataclass
class UtteranceLatency:
    """One utterance through `measure_latency` (seconds; ``first_partial`` None if no token)."""

    duration: float
    onset: float
    chunk_compute: list[float]
    finish_compute: float
    first_partial: float | None
    final: float
    rtf: float
    tokens: list[int]


@dataclass
class Spread:
    """The median and the 95th percentile (linear interpolation) of a set of values."""

    median: float
    p95: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        """The spread of ``values``; None if there are none."""
        if not values:
            return None
        return cls(float(np.median(values)), float(np.percentile(values, 95)))


@dataclass
class LatencyStats:
    """`measure_latency` over a set: `Spread` of each figure (seconds; RTF a ratio), counts, and
    the per-utterance records. ``first_partial`` is over the ``utterances - no_token`` utterances
    that emitted a token (None if none did)."""

    chunk_samples: int
    lookahead_samples: int
    sample_rate: int
    utterances: int
    no_token: int
    chunk_compute: Spread
    rtf: Spread
    first_partial: Spread | None
    final: Spread
    per_utterance: list[UtteranceLatency]

    @property
    def chunk_seconds(self) -> float:
        """Seconds of audio per `ChunkStepper.step` call."""
        return self.chunk_samples / self.sample_rate

    def to_dict(self, per_utterance: bool = False) -> dict:
        """Plain data (``asrkd eval``'s ``latency``); the per-utterance records only if asked."""
        d = asdict(self)
        d["chunk_seconds"] = self.chunk_seconds
        if not per_utterance:
            d.pop("per_utterance")
        return d

    def summary_line(self) -> str:
        """One line of milliseconds: first partial, final, compute per chunk, and the RTF."""
        def ms(s: Spread | None) -> str:
            return "-" if s is None else f"{1000 * s.median:.0f} ms (p95 {1000 * s.p95:.0f})"
        return (f"first partial {ms(self.first_partial)}, final {ms(self.final)}, "
                f"compute per {1000 * self.chunk_seconds:.0f} ms chunk {1000 * self.chunk_compute.median:.1f} ms "
                f"(p95 {1000 * self.chunk_compute.p95:.1f}), RTF {self.rtf.median:.3f}; "
                f"{self.utterances} utterances, {self.no_token} without a token")


def _pieces(n: int, chunk: int, lookahead: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each `step` call's samples (module docstring)."""
    bounds = [0, *range(chunk + lookahead, n, chunk), n]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def measure_utterance(stepper: ChunkStepper, wave: np.ndarray, sample_rate: int,
                      onset_db: float = DEFAULT_ONSET_DB,
                      clock: Callable[[], float] = time.perf_counter) -> UtteranceLatency:
    """Run one utterance through ``stepper`` (reset first) on the simulated clock of the module
    docstring; ``clock`` times each call (seconds)."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    lookahead = int(getattr(stepper, "lookahead_samples", 0))
    stepper.reset()
    end, first, tokens, computes = 0.0, None, [], []
    for a, b in _pieces(len(wave), stepper.chunk_samples, lookahead):
        t0 = clock()
        new = stepper.step(wave[a:b])
        computes.append(clock() - t0)
        end = max(b / sample_rate, end) + computes[-1]
        if new and first is None:
            first = end
        tokens += new
    audio_end = len(wave) / sample_rate
    t0 = clock()
    new = stepper.finish()
    finish_compute = clock() - t0
    end = max(audio_end, end) + finish_compute
    if new and first is None:
        first = end
    tokens += new
    onset = speech_onset(wave, sample_rate, onset_db)
    return UtteranceLatency(
        duration=audio_end, onset=onset, chunk_compute=computes, finish_compute=finish_compute,
        first_partial=None if first is None else first - onset, final=end - audio_end,
        rtf=(sum(computes) + finish_compute) / audio_end if audio_end else math.inf, tokens=tokens,
    )


def measure_latency(stepper: ChunkStepper, waves: Sequence[np.ndarray], sample_rate: int,
                    onset_db: float = DEFAULT_ONSET_DB, warmup: int = 1,
                    clock: Callable[[], float] = time.perf_counter) -> LatencyStats:
    """`measure_utterance` over ``waves`` (float32 mono at ``sample_rate``) -> `LatencyStats`.

    The first ``warmup`` waves are run once before, untimed (allocators, kernel caches). Threads
    are the stepper's business: measure on one (``torch.set_num_threads(1)``, a one-thread
    session or interpreter) to compare with a phone's core.
    """
    if not waves:
        raise ValueError("measure_latency() needs at least one wave")
    for wave in waves[:warmup]:
        measure_utterance(stepper, wave, sample_rate, onset_db, clock)
    runs = [measure_utterance(stepper, w, sample_rate, onset_db, clock) for w in waves]
    firsts = [r.first_partial for r in runs if r.first_partial is not None]
    return LatencyStats(
        chunk_samples=stepper.chunk_samples, lookahead_samples=int(getattr(stepper, "lookahead_samples", 0)),
        sample_rate=sample_rate, utterances=len(runs), no_token=len(runs) - len(firsts),
        chunk_compute=Spread.of([c for r in runs for c in r.chunk_compute]),
        rtf=Spread.of([r.rtf for r in runs]), first_partial=Spread.of(firsts),
        final=Spread.of([r.final for r in runs]), per_utterance=runs,
    )


def manifest_waves(manifest: str | os.PathLike, sample_rate: int) -> list[np.ndarray]:
    """The readable audio of a manifest's utterances, float32 ``[N]`` at ``sample_rate`` (an
    unreadable file is left out, as ``asrkd eval`` leaves it out of the score)."""
    dataset = AudioDataset(read_manifest(manifest), sample_rate=sample_rate)
    waves = []
    for i in range(len(dataset)):
        try:
            waves.append(dataset[i]["wav"].numpy())
        except AudioError:
            continue
    return waves


def checkpoint_latency(checkpoint: str | os.PathLike, manifest: str | os.PathLike,
                       chunk_size: int | None = None, left_chunks: int | None = None,
                       onset_db: float = DEFAULT_ONSET_DB) -> LatencyStats:
    """`measure_latency` of a streaming checkpoint in PyTorch (`TranscriberStepper`, one thread) on
    a manifest's audio, at its config's chunking unless ``chunk_size`` / ``left_chunks`` say
    otherwise (``asrkd eval --chunk-size``).

    Raises:
        ManifestError: ``manifest`` cannot be read, or none of its audio can.
    """
    transcriber = StreamingTranscriber.from_checkpoint(checkpoint, chunk_size, left_chunks)
    waves = manifest_waves(manifest, transcriber.sample_rate)
    if not waves:
        raise ManifestError(f"{manifest}: no utterance's audio can be read, so there is no latency to measure "
                            "(`asrkd manifest check` names each problem)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure_latency(TranscriberStepper(transcriber), waves, transcriber.sample_rate, onset_db)
    finally:
        torch.set_num_threads(threads)


def add_checkpoint_latency(summary: dict, json_out: str | os.PathLike | None = None) -> LatencyStats:
    """``asrkd eval`` of a chunked streaming checkpoint: `checkpoint_latency` at the chunking its
    ``summary`` (`asrkd.inference.evaluate_checkpoint`'s) states, stored as ``summary["latency"]``
    (`LatencyStats.to_dict`) and, with ``json_out``, written there with the rest of the summary."""
    stats = checkpoint_latency(summary["checkpoint"], summary["manifest"], summary["chunk_size"],
                               summary["left_chunks"])
    summary["latency"] = stats.to_dict()
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(summary, indent=2) + "\n")
    return stats
