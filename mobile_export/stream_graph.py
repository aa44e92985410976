"""The streaming export graph: one chunk of PCM and the stream's state in, the chunk's CTC
log-probs and the next state out, with fixed shapes (one static graph for every chunk).

    pcm [1, chunk_samples] ─┐
    samples [1, n_fft - hop] ┴► buffer ─► LogMel (no padding: the overlap is in the state)
                                          feats [1, chunk_size x subsampling, n_mels]
        feature_frames [1] (the chunk's frames that are the utterance's: all but in the last call),
        features, attention, convolution, frames ─► ConformerCTC.step ─► log_probs [1, chunk_size, V]
    outputs: log_probs, next_samples, next_features, next_attention, next_convolution, next_frames

Geometry (``S`` = chunk_samples = chunk_size x subsampling x hop, ``pad`` = the front end's left
padding, ``n_fft // 2`` with centred frames): chunk ``k`` holds feature frames ``[k M, (k+1) M)``,
``M = chunk_size x subsampling``, which read the samples ``[k S - pad, (k+1) S + lookahead)``,
``lookahead = n_fft - hop - pad`` (40 samples, 2.5 ms, with the default 25 ms / 10 ms frames).
So call ``k`` takes the samples ``[k S + lookahead, (k+1) S + lookahead)`` and the ``samples``
state holds the ``n_fft - hop`` before them. A fresh stream's ``samples`` is ``pad`` zeros (the
left edge) followed by the utterance's first ``lookahead`` samples; everything else starts at zero.
Which cache slots hold frames, and whether the subsampling front sees the left edge, follow from
the ``frames`` counter (`asrkd.models.conformer.ConformerCTC.step`), not from a Python branch.

End of an utterance of ``N`` samples: it has ``F = feature_frames(N)`` frames and
``ceil(F / subsampling)`` output frames; push zeros after the last sample until
``ceil(F / M)`` calls have run (``lookahead + ceil(F / M) S - N`` zeros), with ``feature_frames = F - k M`` in the last
call ``k`` (``M`` in every other), and keep the first ``ceil(F / subsampling)`` log-prob frames.
The zeros are what the offline front end pads the right edge with, so every frame is the offline
one, and the frames past ``F`` are masked (subsampling front and attention keys), so every chunk,
the last included, equals `asrkd.streaming.StreamingTranscriber`'s to float rounding.

Only a front end that streams (``normalize: none``, `asrkd.streaming.streamable_frontend`) and a
model with a bounded chunking (``causal``, ``chunk_size > 0``, ``left_chunks >= 0``) export;
anything else is a `asrkd.streaming.StreamingError` naming the field. The chunking is the model
config's: `at_chunking` gives the same weights at the one an export asks for (``asrkd export
--chunk-size N --left-chunks L``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from asrkd.contract import Contract
from asrkd.features import LogMel
from asrkd.inference import ChunkingError
from asrkd.models.conformer import ConformerCTC
from asrkd.streaming import StreamingError, frontend_streaming_problems, lookahead_samples
from eval.streaming_runners import StreamStepper

INPUT = "pcm"
VALID_INPUT = "feature_frames"  # of the chunk's feature frames, how many are the utterance's
OUTPUT = "log_probs"
NEXT_PREFIX = "next_"  # the output that holds state X for the next call is next_X
STATE_DTYPES = {"samples": "float32", "features": "float32", "attention": "float32",
                "convolution": "float32", "frames": "int32"}
STATE_MEANINGS = {
    "samples": "the front end's sample overlap: the n_fft - hop samples before this call's pcm "
    "(at the start: pad zeros, then the utterance's first lookahead_samples samples)",
    "features": "the subsampling front's left context: the last subsampling feature frames of the "
    "previous chunk (zeros at the start)",
    "attention": "per block, the rotated keys (first half of the last axis) and values (second half) "
    "of the last left_context_frames encoder frames, oldest first (zeros at the start; slots before "
    "the first frame are masked inside the graph)",
    "convolution": "per block, the depthwise convolution's inputs of the last conv_kernel - 1 "
    "encoder frames (zeros at the start)",
    "frames": "encoder frames emitted so far (0 at the start): positions, cache validity and the "
    "first chunk's left edge derive from it",
}
STATE_NAMES = tuple(STATE_DTYPES)


def streaming_problems(model: ConformerCTC, frontend: LogMel) -> list[str]:
    """Why ``model`` with ``frontend`` cannot be exported as a stream (empty if it can)."""
    c = model.config
    problems = list(frontend_streaming_problems(frontend.config))
    if not c.causal or c.chunk_size < 1:
        problems.append(f"the model is not a streaming one (model.causal={c.causal}, model.chunk_size="
                        f"{c.chunk_size}); train it with preset student-stream (causal: true, chunk_size > 0)")
    elif c.left_chunks < 0:
        problems.append(f"model.left_chunks={c.left_chunks} (unlimited) makes the attention cache grow "
                        "without bound; a streaming artifact needs left_chunks >= 0")
    f = frontend.config
    pad = f.n_fft // 2 if f.center else 0
    if f.n_fft - f.hop_length < pad:
        problems.append(f"frontend.hop_length={f.hop_length} is more than half of n_fft={f.n_fft}")
    return problems


def is_streaming(model: ConformerCTC) -> bool:
    """Whether ``model``'s config is a streaming one (causal, chunked): what decides that an export
    makes streaming artifacts by default."""
    return model.config.causal and model.config.chunk_size > 0


def at_chunking(model: ConformerCTC, frontend: LogMel, chunk_size: int | None = None,
                left_chunks: int | None = None, where: str = "the model") -> ConformerCTC:
    """``model`` at the chunking an export asks for: ``chunk_size`` encoder frames per chunk and
    ``left_chunks`` chunks of left context (`mobile_export.options.ExportOptions`; None: the
    model config's). A copy with the same weights whose config states that chunking, so that
    everything sized or masked by the config follows it: `StreamGraph` (chunk samples, the
    attention state's ``left_chunks x chunk_size`` frames, contract.json's ``streaming``), the
    whole-utterance graph's chunk mask and the PyTorch reference. ``model`` itself when the
    chunking is its own.

    Raises `asrkd.inference.ChunkingError` (as ``asrkd eval --chunk-size`` does), naming the option
    (and ``where``: the checkpoint), for a checkpoint that cannot run chunk by chunk
    (not causal, a front end that needs the whole utterance) and for a chunking the fixed-size
    state cannot hold (the checkpoint's own ``chunk_size -1`` or ``left_chunks -1`` where the
    option leaves it). Nothing else limits it: RoPE has no maximum position and the caches are
    sized from the config; a chunking the model was not trained at runs, only as well as dynamic
    chunk training (docs/STREAMING.md) made it.
    """
    c = model.config
    options = "/".join(flag for flag, value in (("--chunk-size", chunk_size), ("--left-chunks", left_chunks))
                       if value is not None)
    try:
        choice = model.chunking(chunk_size, left_chunks)  # None: the config's
    except ValueError as e:
        raise ChunkingError(f"{options}: {e}") from None
    if choice == model.chunking():
        return model
    if not c.causal:
        raise ChunkingError(f"{options}: {where} is not a streaming checkpoint (model.causal=false: its convolution reads "
                            "later frames, so no chunk can be computed before the next has arrived); leave "
                            f"{options} out, or export a streaming checkpoint (preset student-stream)")
    if choice.chunk_size < 1:
        raise ChunkingError(f"--left-chunks {left_chunks}: the checkpoint's model.chunk_size is {c.chunk_size} "
                            "(full context); give --chunk-size N (encoder frames per chunk) too")
    if choice.left_chunks < 0:
        raise ChunkingError(f"--chunk-size {chunk_size}: the checkpoint's model.left_chunks is {c.left_chunks} "
                            "(unlimited), which no fixed-size attention state holds; give --left-chunks L "
                            "(chunks of left context) too")
    chunked = copy.deepcopy(model).eval()  # deepcopy: no weight initialisation, no global RNG draw
    chunked.config = dataclasses.replace(c, chunk_size=choice.chunk_size, left_chunks=choice.left_chunks)
    problems = streaming_problems(chunked, frontend)
    if problems:
        raise ChunkingError(f"{options}: cannot export a streaming artifact: " + "; ".join(problems))
    return chunked


class StreamGraph(nn.Module):
    """LogMel + `ConformerCTC.step` on one chunk (module docstring), positional I/O:
    ``forward(pcm, feature_frames, samples, features, attention, convolution, frames)`` ->
    ``(log_probs, next_samples, next_features, next_attention, next_convolution, next_frames)``."""

    def __init__(self, frontend: LogMel, model: ConformerCTC):
        super().__init__()
        problems = streaming_problems(model, frontend)
        if problems:
            raise StreamingError("cannot export a streaming artifact: " + "; ".join(problems))
        config = frontend.config
        self.pad = frontend.pad
        # The same filterbank and DFT basis with no padding: the overlap state carries the edges.
        self.frontend = LogMel(dataclasses.replace(config, center=False)).to(frontend.mel_fb.device).eval()
        self.model = model.eval()
        c = model.config
        self.contract = Contract.from_parts(config, c)
        self.chunk_frames = c.chunk_size
        self.chunk_feature_frames = c.chunk_size * c.subsampling
        self.chunk_samples = self.chunk_feature_frames * config.hop_length
        self.overlap_samples = config.n_fft - config.hop_length
        self.lookahead_samples = lookahead_samples(frontend)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The names of `forward`'s inputs, in order: ``pcm``, ``feature_frames``, each state."""
        return (INPUT, VALID_INPUT, *STATE_NAMES)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The names of `forward`'s outputs, in order: ``log_probs``, ``next_<state>`` for each state."""
        return (OUTPUT, *(NEXT_PREFIX + n for n in STATE_NAMES))

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every state tensor's shape, in input order."""
        return {"samples": (1, self.overlap_samples), **self.model.fixed_state_shapes()}

    def zero_state(self) -> dict[str, Tensor]:
        """Every state tensor at zero (a fresh stream's state before the utterance's first
        ``lookahead_samples`` samples are written into ``samples``; contract.json ``start``)."""
        return {n: torch.zeros(s, dtype=getattr(torch, STATE_DTYPES[n])) for n, s in self.state_shapes().items()}

    def example_inputs(self) -> tuple[Tensor, ...]:
        """Inputs to trace with: speech-level noise as the chunk, a mid-stream state (non-zero frame
        counter and caches, so that no constant folding sees the first chunk only)."""
        gen = torch.Generator().manual_seed(0)
        state = self.zero_state()
        for name, t in state.items():
            if t.is_floating_point():
                state[name] = 0.1 * torch.randn(t.shape, generator=gen)
        state["frames"] = torch.full((1,), 3 * self.chunk_frames, dtype=torch.int32)
        valid = torch.full((1,), self.chunk_feature_frames, dtype=torch.int32)
        return (0.1 * torch.randn(1, self.chunk_samples, generator=gen), valid, *state.values())

    def forward(self, pcm: Tensor, feature_frames: Tensor, samples: Tensor, features: Tensor,
                attention: Tensor, convolution: Tensor, frames: Tensor) -> tuple[Tensor, ...]:
        """pcm [1, chunk_samples] float32, feature_frames [1] int32 (the chunk's frames that are
        the utterance's: chunk_feature_frames but in the last call) and the state (`state_shapes`)
        -> log_probs [1, chunk_size, V] and the next state."""
        buffer = torch.cat([samples, pcm], dim=1)
        lengths = torch.full((1,), self.overlap_samples + self.chunk_samples, dtype=torch.long, device=pcm.device)
        feats, _ = self.frontend(buffer, lengths)  # [1, chunk_size x subsampling, n_mels]
        feats = feats.to(self.model.ctc_head.weight.dtype)
        log_probs, features, attention, convolution, frames = self.model.step(
            feats, feature_frames, features, attention, convolution, frames)
        return log_probs, buffer[:, self.chunk_samples :], features, attention, convolution, frames

    def streaming_contract(self) -> dict[str, Any]:
        """contract.json's ``streaming`` section: how an app drives a streaming artifact."""
        c = self.contract
        shapes = self.state_shapes()
        return {
            "chunk_frames": self.chunk_frames,
            "chunk_ms": 1000.0 * self.chunk_samples / c.sample_rate,
            "chunk_samples": self.chunk_samples,
            "chunk_feature_frames": self.chunk_feature_frames,
            "left_chunks": self.model.config.left_chunks,
            "left_context_frames": self.model.config.left_chunks * self.chunk_frames,
            "sample_overlap": self.overlap_samples,
            "left_padding_samples": self.pad,
            "lookahead_samples": self.lookahead_samples,
            "start": "every state tensor as `states` says (zeros, frames 0); then write the utterance's "
            "first lookahead_samples samples into samples[0, left_padding_samples:]",
            "call": "call k (k = 0, 1, ...) takes pcm = the next chunk_samples samples (the utterance's "
            "samples [k chunk_samples + lookahead_samples, (k+1) chunk_samples + lookahead_samples)), "
            "feature_frames = [chunk_feature_frames] (see flush) and the state; it returns the "
            "chunk's log_probs [1, chunk_frames, vocab] and next_X for each "
            "state X, which is X for the next call",
            "flush": "after the utterance's last sample (N samples in all) push zeros until "
            "ceil(F / chunk_feature_frames) calls have run, F = the utterance's feature frames (1 + N // "
            "hop_length with centred frames); the last call's feature_frames input is F - k "
            "chunk_feature_frames (k: the calls before it), the frames it pads are masked; keep the "
            "first ceil(F / subsampling) log-prob frames of the utterance (the others are padding); "
            "reset the state for the next utterance. Zeros pushed: lookahead_samples + calls x "
            "chunk_samples - N, calls = ceil(F / chunk_feature_frames)",
            "decoding": "greedy CTC over the log-probs so far: per frame the argmax, collapse repeats "
            "(across chunks too), drop blank_id",
            "inputs": {INPUT: {"shape": [1, self.chunk_samples], "dtype": "float32",
                               "meaning": "the chunk's PCM, mono float32 in [-1, 1]"},
                       VALID_INPUT: {"shape": [1], "dtype": "int32",
                                     "meaning": "how many of the chunk's chunk_feature_frames feature "
                                     "frames are the utterance's (all of them but in the last call)"},
                       **{n: {"shape": list(shapes[n]), "dtype": STATE_DTYPES[n]} for n in STATE_NAMES}},
            "outputs": {OUTPUT: {"shape": [1, self.chunk_frames, c.vocab_size], "dtype": "float32",
                                 "meaning": "the chunk's CTC log-posteriors (log_softmax, blank = blank_id)"},
                        **{NEXT_PREFIX + n: {"shape": list(shapes[n]), "dtype": STATE_DTYPES[n]}
                           for n in STATE_NAMES}},
            "states": [
                {"name": n, "output": NEXT_PREFIX + n, "shape": list(shapes[n]), "dtype": STATE_DTYPES[n],
                 "initial": 0, "meaning": STATE_MEANINGS[n]}
                for n in STATE_NAMES
            ],
        }


class TorchStreamStepper(StreamStepper):
    """A `StreamGraph` in PyTorch driven exactly as the exported artifacts are (the same
    `eval.streaming_runners.StreamStepper` loop over the same contract section)."""

    format = "torch-stream"

    def __init__(self, graph: StreamGraph):
        self.graph = graph
        contract = {**graph.contract.to_dict(), "streaming": graph.streaming_contract()}
        super().__init__("", contract)

    @torch.no_grad()
    def _call(self, feeds):
        outputs = self.graph(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.graph.input_names))
        return {n: t.numpy() for n, t in zip(self.graph.output_names, outputs, strict=True)}

    def io_specs(self):
        specs = self.graph.streaming_contract()
        return {side: {n: (t["shape"], t["dtype"]) for n, t in specs[side].items()} for side in ("inputs", "outputs")}
