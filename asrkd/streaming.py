"""Streaming transcription: PCM pieces in as they arrive, partial text out, final text at the end.

    samples ─► StreamingFrontend (log-mel frames as soon as their window is complete)
            ─► chunks of chunk_size x subsampling frames ─► ConformerCTC.forward_chunk (caches)
            ─► log-probs ─► greedy CTC ─► partial text;  finalize(): flush, last chunk, final text

The stream's state is explicit and resettable (`StreamState`): the front end's sample overlap
(`FrontendState`), the feature frames waiting for a full chunk, the encoder's caches
(`asrkd.models.streaming.EncoderState`: keys and values per block, convolution inputs per block,
the subsampling front's last frames) and the log-probs emitted so far.

However the audio is split (10 ms pieces, 1 s pieces, all at once), the log-probs equal those of
the model's chunked forward over the whole utterance, ``model(frontend(wav), chunk_size=C,
left_chunks=L)``, to float rounding, and so does the text.

The front end in a stream
-------------------------
`LogMel` frame ``t`` (``center=True``) reads samples ``t * hop - n_fft // 2`` to
``t * hop + n_fft // 2 - 1``, zeros before the first sample. A stream starts with those
``n_fft // 2`` zeros in its buffer, emits a frame as soon as its last sample has arrived, and keeps
the ``n_fft - hop`` samples that the next frame shares with it; `StreamingTranscriber.finalize`
appends the ``n_fft // 2`` zeros of the right edge and emits the last frames. So a chunk of
``C`` encoder frames (``C * subsampling * hop`` samples) is ready ``n_fft // 2 - hop`` samples
(2.5 ms with the default 25 ms window and 10 ms hop) after its nominal end.

Whatever needs the whole utterance cannot stream: per-utterance mean/std normalisation
(``normalize: per_feature``), per-utterance level normalisation (``level: rms``) and Kaldi framing
(the right edge mirrors the last samples). A streaming student is trained with
``frontend: {normalize: none}`` (`streamable_frontend`), and `StreamingTranscriber` refuses a
checkpoint whose front end needs the whole utterance.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from asrkd.checkpoint import load_checkpoint, resolve_checkpoint
from asrkd.contract import Contract
from asrkd.decoding import greedy_decode, utterance_confidence
from asrkd.errors import AsrkdError
from asrkd.features import FrontendConfig, LogMel
from asrkd.inference import Hypothesis
from asrkd.models.conformer import ConformerCTC
from asrkd.models.streaming import FULL_CONTEXT, EncoderState

__all__ = [
    "FrontendState",
    "StreamState",
    "StreamingError",
    "StreamingFrontend",
    "StreamingTranscriber",
    "frontend_streaming_problems",
    "lookahead_samples",
    "streamable_frontend",
]


class StreamingError(AsrkdError, ValueError):
    """A model, front end or call order that streaming cannot work with; the message says why."""


def frontend_streaming_problems(config: FrontendConfig) -> list[str]:
    """Why a front end cannot run on a stream (empty if it can), each naming its field and fix."""
    problems = []
    if config.normalize != "none":
        problems.append(f"frontend.normalize={config.normalize!r} needs the whole utterance's mean and "
                        "std; train the streaming model with frontend.normalize: none")
    if config.level != "none":
        problems.append(f"frontend.level={config.level!r} needs the whole utterance's RMS; "
                        "use frontend.level: none")
    if config.framing != "librosa":
        problems.append(f"frontend.framing={config.framing!r} mirrors the last samples at the end; "
                        "use frontend.framing: librosa")
    return problems


def streamable_frontend(config: FrontendConfig) -> FrontendConfig:
    """``config`` with what needs the whole utterance turned off (see the module docstring): no
    per-utterance normalisation or level, librosa framing. The rest (window, hop, mels, floor) stays."""
    return dataclasses.replace(config, normalize="none", level="none", framing="librosa")


@dataclass
class FrontendState:
    """The front end's part of a stream: ``samples [B, S]``, the samples not yet consumed, the
    first being sample ``frames * hop - pad`` of the utterance (``pad`` = ``n_fft // 2`` with
    ``center``, else 0; before the first sample these are the left padding's zeros); ``frames``
    emitted so far; ``received`` samples of the utterance so far."""

    samples: Tensor
    frames: int = 0
    received: int = 0


def lookahead_samples(frontend: LogMel) -> int:
    """Samples past a chunk's end that the chunk's last frame reads: it is centred on the chunk's
    last hop and reaches ``n_fft - hop - pad`` samples beyond it (40, 2.5 ms, with the default
    25 ms window, 10 ms hop and centred frames). A streaming app waits for them before each call."""
    c = frontend.config
    return max(0, c.n_fft - c.hop_length - frontend.pad)


class StreamingFrontend:
    """`LogMel` on a stream: ``accept`` returns the frames whose window is complete, ``flush`` the
    rest at the end of the utterance. Together they give ``frontend(wav, [len(wav)])``'s frames.

    Frames are computed by the same `LogMel` (the checkpoint's config with the zero padding done
    here instead of inside it), on the buffered samples of each call.
    """

    def __init__(self, frontend: LogMel):
        problems = frontend_streaming_problems(frontend.config)
        if problems:
            raise StreamingError("this front end cannot stream: " + "; ".join(problems))
        self.config = frontend.config
        self.pad = frontend.pad
        # The same filterbank and DFT basis, framing the buffer as it is (padding added by us).
        self.logmel = LogMel(dataclasses.replace(frontend.config, center=False)).to(frontend.mel_fb.device)

    def initial_state(self, batch_size: int = 1) -> FrontendState:
        """A fresh stream: the left padding's zeros in the buffer."""
        return FrontendState(samples=torch.zeros(batch_size, self.pad, device=self.logmel.mel_fb.device))

    def accept(self, state: FrontendState, samples: Tensor) -> tuple[Tensor, FrontendState]:
        """``samples [B, n]`` float32 -> the frames now complete ``[B, t, n_mels]``, the next state."""
        buffer = torch.cat([state.samples, samples.to(state.samples)], dim=1)
        feats, state = self._frames(buffer, self._complete_frames(buffer.size(1)), state)
        return feats, dataclasses.replace(state, received=state.received + samples.size(1))

    def flush(self, state: FrontendState) -> tuple[Tensor, FrontendState]:
        """The frames left at the end of the utterance (right edge padded as offline)."""
        buffer = torch.nn.functional.pad(state.samples, (0, self.pad))
        count = self.config.num_frames(state.received) - state.frames
        return self._frames(buffer, count, state)

    def _complete_frames(self, buffered: int) -> int:
        c = self.config
        return max(0, 1 + (buffered - c.n_fft) // c.hop_length)

    def _frames(self, buffer: Tensor, count: int, state: FrontendState) -> tuple[Tensor, FrontendState]:
        """The first ``count`` frames of ``buffer`` [B, S], and the state with them consumed."""
        hop = self.config.hop_length
        if count <= 0:
            feats = buffer.new_zeros(buffer.size(0), 0, self.config.n_mels)
            return feats, dataclasses.replace(state, samples=buffer)
        span = (count - 1) * hop + self.config.n_fft
        lengths = torch.full((buffer.size(0),), span, dtype=torch.long, device=buffer.device)
        feats, _ = self.logmel(buffer[:, :span], lengths)
        return feats, dataclasses.replace(state, samples=buffer[:, count * hop :], frames=state.frames + count)


@dataclass
class StreamState:
    """One stream's whole state: the front end's (`FrontendState`), ``features [B, t, n_mels]``
    computed but not yet a full chunk, the encoder's (`EncoderState`) and the ``log_probs``
    ``[B, T', V]`` emitted so far."""

    frontend: FrontendState
    features: Tensor
    encoder: EncoderState
    log_probs: Tensor


class StreamingTranscriber:
    """Transcribe one utterance while it arrives, with a streaming (``causal``) checkpoint.

    >>> t = StreamingTranscriber.from_checkpoint("runs/stream/student_kd")   # doctest: +SKIP
    >>> for piece in microphone_pieces():                                       # doctest: +SKIP
    ...     print(t.accept_waveform(piece))        # partial text, grows chunk by chunk
    >>> hyp = t.finalize()                                                      # doctest: +SKIP
    >>> hyp.text, hyp.confidence                                                # doctest: +SKIP
    >>> t.reset()                                   # before the next utterance # doctest: +SKIP

    ``chunk_size`` (encoder frames) and ``left_chunks`` default to the model config's. With
    ``chunk_size=-1`` nothing is decoded before `finalize` (full context). Decoding is greedy CTC.
    Attributes: ``state`` (the `StreamState`), ``partial`` (the latest partial text), ``finished``
    (`finalize` was called; `reset` starts the next utterance).
    """

    def __init__(self, model: ConformerCTC, frontend: LogMel, tokenizer, chunk_size: int | None = None,
                 left_chunks: int | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.chunking = model.chunking(chunk_size, left_chunks)
        if not model.config.causal:
            raise StreamingError("StreamingTranscriber needs a streaming model (model.causal: true, e.g. "
                             "preset student-stream); this checkpoint's convolution reads the future")
        self.frontend = StreamingFrontend(frontend)
        self.contract = Contract.from_parts(frontend.config, model.config, tokenizer)
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, chunk_size: int | None = None,
                        left_chunks: int | None = None) -> StreamingTranscriber:
        """From a checkpoint folder (or a run folder: its best checkpoint)."""
        loaded = load_checkpoint(resolve_checkpoint(path))
        return cls(loaded.model, loaded.frontend, loaded.tokenizer, chunk_size, left_chunks)

    @property
    def sample_rate(self) -> int:
        return self.contract.sample_rate

    @property
    def chunk_samples(self) -> int | None:
        """Samples per chunk (the model's decoding step); None at full context."""
        if self.chunking.chunk_size == FULL_CONTEXT:
            return None
        return self.chunking.chunk_size * self.contract.output_frame_shift_samples

    def reset(self) -> None:
        """Forget the current utterance: a fresh `StreamState`."""
        device = self.model.ctc_head.weight.device
        self.state = StreamState(
            frontend=self.frontend.initial_state(),
            features=torch.zeros(1, 0, self.contract.n_mels, device=device),
            encoder=self.model.initial_state(device=device),
            log_probs=torch.zeros(1, 0, self.contract.vocab_size, device=device),
        )
        self.partial = ""
        self.finished = False

    @torch.no_grad()
    def accept_waveform(self, samples: np.ndarray | Tensor) -> str:
        """Feed the next ``samples`` (1-D float32 at `sample_rate`, any count, even 0) -> the
        partial text: greedy CTC over every chunk decoded so far."""
        if self.finished:
            raise StreamingError("StreamingTranscriber: finalize() ended this utterance; call reset() first")
        samples = torch.as_tensor(np.asarray(samples, dtype=np.float32)).reshape(1, -1)
        feats, frontend = self.frontend.accept(self.state.frontend, samples)
        self.state.frontend = frontend
        if self._decode(torch.cat([self.state.features, feats], dim=1), final=False):
            self.partial = self.tokenizer.decode(self._tokens())
        return self.partial

    @torch.no_grad()
    def finalize(self) -> Hypothesis:
        """End of the utterance: the last frames and chunk -> final text, tokens, confidence."""
        if not self.finished:
            feats, self.state.frontend = self.frontend.flush(self.state.frontend)
            self._decode(torch.cat([self.state.features, feats], dim=1), final=True)
            self.finished = True
        log_probs = self.state.log_probs[0]
        tokens = self._tokens()
        return Hypothesis(self.tokenizer.decode(tokens), tokens,
                          utterance_confidence(log_probs, blank=self.contract.blank_id))

    @property
    def log_probs(self) -> Tensor:
        """``[T', V]`` log-probs of the chunks decoded so far."""
        return self.state.log_probs[0]

    def _decode(self, feats: Tensor, final: bool) -> bool:
        """Run every full chunk of ``feats`` [1, t, n_mels] through the encoder, and with ``final``
        the rest too (at full context: everything, at the end); keep what is left for later.
        Whether any chunk ran."""
        if self.chunk_samples is None:
            step = feats.size(1) if final else 0
        else:
            step = self.chunking.chunk_size * self.contract.subsampling
        start, outputs = 0, [self.state.log_probs]
        while step and start < feats.size(1) and (final or feats.size(1) - start >= step):
            log_probs, self.state.encoder = self.model.forward_chunk(
                feats[:, start : start + step], self.state.encoder, self.chunking.chunk_size,
                self.chunking.left_chunks,
            )
            outputs.append(log_probs)
            start += step
        self.state.features = feats[:, start:]
        if len(outputs) > 1:
            self.state.log_probs = torch.cat(outputs, dim=1)
        return len(outputs) > 1

    def _tokens(self) -> list[int]:
        """Greedy CTC over the log-probs so far."""
        log_probs = self.state.log_probs
        lengths = torch.tensor([log_probs.size(1)])
        return greedy_decode(log_probs, lengths, blank=self.contract.blank_id)[0]
