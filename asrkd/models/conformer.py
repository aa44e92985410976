"""Conformer-CTC: the student (and the in-house teacher) of asrkd.

    feats [B, T, n_mels] ─► ConvSubsampling (x4 | x8) ─► n_layers x ConformerBlock ─► Linear ─► log_softmax
                                                          (hidden states, one per block, for feature KD)

A block is Macaron-style (Gulati et al. 2020):
    x = x + 1/2 FF(x);  x = x + MHSA(LN(x));  x = x + Conv(x);  x = x + 1/2 FF(x);  x = LN(x)
with rotary positions in the attention (see ``attention.py``) and LayerNorm in the convolution
module (see ``convolution.py``). Padded frames are masked wherever frames mix (subsampling convs,
attention keys, depthwise conv), so one utterance gives the same log-probs alone or in a padded
batch. Values on padded output frames are unspecified: read them through ``out_lens``.

``forward`` has no data-dependent Python control flow: it traces and exports with a dynamic time
axis. Checked with the student preset (torch 2.13): ``torch.export`` and the ONNX dynamo exporter
with a dynamic T (onnxruntime within 1.5e-6 of eager at other lengths), ``torch.jit.trace`` +
coremltools 9 with a ``RangeDim`` T, litert-torch at a fixed T with a shorter ``feat_lens``
(within 1.5e-6). For ``torch.export`` give T as ``Dim.DYNAMIC`` (or make the batch dynamic too): a
named ``Dim`` range with a static batch trips the shape solver, which cannot prove T' != 1.

Streaming (``causal=True``, preset ``student-stream``; see ``streaming.py``): the depthwise
convolution is causal and ``forward(..., chunk_size=C, left_chunks=L)`` limits the attention to
chunks, so ``forward_chunk`` can run the same weights on one chunk at a time. ``chunk_size=-1``
runs the same weights with full context. The non-streaming presets compute exactly what they
computed before streaming existed (same parameters, same operations).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrkd.models.attention import RotarySelfAttention
from asrkd.models.convolution import ConvolutionModule
from asrkd.models.streaming import FULL_CONTEXT, ChunkChoice, EncoderState, padded_chunk_mask
from asrkd.models.subsampling import (
    SUBSAMPLING_FACTORS,
    ConvSubsampling,
    num_stages,
    stage_length,
    subsampled_lengths,
    time_mask,
)

__all__ = [
    "PRESETS",
    "ConformerBlock",
    "ConformerCTC",
    "ConformerConfig",
    "build_preset",
    "count_parameters",
    "flops_per_second",
    "subsampled_lengths",
]


@dataclass
class ConformerConfig:
    """Shape of a Conformer-CTC model. The defaults are the default student (``PRESETS["student"]``).

    The model maps ``n_mels`` features per frame to ``vocab_size`` log-probs per output frame, one
    output frame per ``subsampling`` feature frames, through ``n_layers`` blocks of width
    ``d_model``. Stored in every checkpoint's config.json (``model``); see `build_preset`.
    """

    vocab_size: int  # including the CTC blank at id asrkd.contract.BLANK_ID
    n_mels: int = 80  # must equal the front end's FrontendConfig.n_mels
    d_model: int = 80
    n_heads: int = 4
    n_layers: int = 4
    ff_mult: int = 4  # feed-forward hidden size = ff_mult * d_model
    conv_kernel: int = 15  # depthwise kernel, in encoder frames (odd)
    subsampling: int = 4  # 4 or 8
    subsampling_channels: int = 64
    dropout: float = 0.1
    rope_base: float = 10000.0
    # Streaming (see asrkd.models.streaming): a causal depthwise convolution, and the chunking that
    # `ConformerCTC.forward` and `forward_chunk` use when not told otherwise: chunk_size encoder
    # frames (-1: full context) with left_chunks chunks of left context (-1: unlimited).
    causal: bool = False
    chunk_size: int = FULL_CONTEXT
    left_chunks: int = FULL_CONTEXT

    def __post_init__(self):
        problems = []
        if self.vocab_size < 2:
            problems.append(f"vocab_size={self.vocab_size} must be >= 2 (blank + one token)")
        if self.subsampling not in SUBSAMPLING_FACTORS:
            problems.append(f"subsampling={self.subsampling} must be one of {SUBSAMPLING_FACTORS}")
        if self.n_heads < 1 or self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        elif (self.d_model // self.n_heads) % 2:
            problems.append(
                f"head dimension d_model / n_heads = {self.d_model // self.n_heads} must be even (RoPE)"
            )
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            problems.append(f"conv_kernel={self.conv_kernel} must be a positive odd number")
        for name in ("n_mels", "n_layers", "ff_mult", "subsampling_channels"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout} must be in [0, 1)")
        problems += _chunking_problems(self.chunk_size, self.left_chunks)
        if self.chunk_size != FULL_CONTEXT and not self.causal:
            problems.append(
                f"chunk_size={self.chunk_size} needs causal=True (a centred convolution reads the "
                "next chunk); set causal: true or chunk_size: -1"
            )
        if problems:
            raise ValueError("invalid ConformerConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """Every field by name (what a checkpoint's config.json stores under ``model``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ConformerConfig:
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"ConformerConfig: unknown key(s) {unknown}; valid keys are {sorted(known)} "
                "(was the config written by a newer asrkd, or misspelt?)"
            )
        return cls(**d)


def _chunking_problems(chunk_size: int, left_chunks: int) -> list[str]:
    """What is wrong with a chunking (`ConformerConfig` fields or `forward` arguments), if anything."""
    problems = []
    if chunk_size != FULL_CONTEXT and chunk_size < 1:
        problems.append(f"chunk_size={chunk_size} must be >= 1 encoder frames, or -1 (full context)")
    if left_chunks < FULL_CONTEXT:
        problems.append(f"left_chunks={left_chunks} must be >= 0 chunks, or -1 (unlimited)")
    return problems


# Sized for 2 CPU cores and phones. With a 32-token vocabulary and 10 s utterances:
#   preset       params   forward GFLOP per audio second
#   teacher      7.50 M   0.556   (fwd+bwd of 1 h of audio: 3-12 min on the shared 2-core box)
#   student      0.75 M   0.082   (10x fewer parameters than the teacher)
#   student-xs   0.34 M   0.032
# student-stream is the student's shape with a causal convolution, 8-frame chunks (320 ms at a
# 10 ms hop and x4 subsampling) and 8 chunks (2.56 s) of left context.
# Shapes only: the vocabulary comes from the tokenizer, see ``build_preset``.
PRESETS: MappingProxyType[str, MappingProxyType] = MappingProxyType(
    {
        "teacher": MappingProxyType(
            dict(d_model=192, n_heads=4, n_layers=8, ff_mult=4, conv_kernel=15,
                 subsampling=4, subsampling_channels=128, dropout=0.1)
        ),
        "student": MappingProxyType(
            dict(d_model=80, n_heads=4, n_layers=4, ff_mult=4, conv_kernel=15,
                 subsampling=4, subsampling_channels=64, dropout=0.1)
        ),
        "student-xs": MappingProxyType(
            dict(d_model=64, n_heads=4, n_layers=3, ff_mult=4, conv_kernel=15,
                 subsampling=4, subsampling_channels=32, dropout=0.1)
        ),
        "student-stream": MappingProxyType(
            dict(d_model=80, n_heads=4, n_layers=4, ff_mult=4, conv_kernel=15,
                 subsampling=4, subsampling_channels=64, dropout=0.1,
                 causal=True, chunk_size=8, left_chunks=8)
        ),
    }
)


def build_preset(name: str, vocab_size: int, **overrides) -> ConformerConfig:
    """The config of preset ``name`` for a vocabulary of ``vocab_size`` (blank included),
    with any field replaced by ``overrides`` (e.g. ``n_mels=64``, ``subsampling=8``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ConformerConfig.from_dict({**PRESETS[name], "vocab_size": vocab_size, **overrides})


class FeedForward(nn.Module):
    """LayerNorm -> Linear (d -> ff_mult * d) -> SiLU -> Dropout -> Linear -> Dropout."""

    def __init__(self, d_model: int, ff_mult: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ff_mult * d_model),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T, D] -> [B, T, D]."""
        return self.net(x)


class ConformerBlock(nn.Module):
    """One Macaron Conformer block (see the module docstring): ``[B, T, D]`` in, ``[B, T, D]`` out.

    Half-step feed-forward, rotary self-attention over the valid frames, convolution module,
    half-step feed-forward, final LayerNorm; each with a residual connection.
    """

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        d = cfg.d_model
        self.ff1 = FeedForward(d, cfg.ff_mult, cfg.dropout)
        self.norm_attn = nn.LayerNorm(d)
        self.attn = RotarySelfAttention(d, cfg.n_heads, cfg.dropout, cfg.rope_base)
        self.dropout_attn = nn.Dropout(cfg.dropout)
        self.conv = ConvolutionModule(d, cfg.conv_kernel, cfg.dropout, cfg.causal)
        self.ff2 = FeedForward(d, cfg.ff_mult, cfg.dropout)
        self.norm_out = nn.LayerNorm(d)

    def forward(self, x: Tensor, mask: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x [B, T, D], mask [B, T] bool (True = valid) -> [B, T, D]; ``attn_mask [B, T, T]``: a
        chunk mask (`asrkd.models.streaming.padded_chunk_mask`), else full context."""
        x = x + 0.5 * self.ff1(x)
        x = x + self.dropout_attn(self.attn(self.norm_attn(x), mask, attn_mask))
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm_out(x)

    def forward_chunk(self, x: Tensor, attention: Tensor, convolution: Tensor, offset: int | Tensor,
                      key_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One streaming chunk x [B, C, D] starting at encoder frame ``offset``, with this block's
        caches (`asrkd.models.streaming.EncoderState`) -> [B, C, D], keys and values of the cached
        and new frames, the next convolution cache. ``key_mask [Tc + C]``: the readable keys
        (`RotarySelfAttention.forward_chunk`; None: all)."""
        x = x + 0.5 * self.ff1(x)
        attended, attention = self.attn.forward_chunk(self.norm_attn(x), attention, offset, key_mask)
        x = x + self.dropout_attn(attended)
        convolved, convolution = self.conv.forward_chunk(x, convolution)
        x = x + convolved
        x = x + 0.5 * self.ff2(x)
        return self.norm_out(x), attention, convolution


class ConformerCTC(nn.Module):
    """The acoustic model: log-mel frames in, CTC log-probabilities out.

    ``model(feats [B, T, n_mels], feat_lens [B])`` -> ``(log_probs [B, T', vocab_size],
    out_lens [B], hidden)`` with ``T' = output_lengths(T)`` (``subsampling`` x fewer frames) and
    ``hidden`` each block's output ``[B, T', d_model]`` when asked for (feature KD). Built from a
    `ConformerConfig`; a checkpoint pairs it with its front end and tokenizer
    (`asrkd.checkpoint.LoadedModel`).

    >>> import torch
    >>> model = ConformerCTC(build_preset("student", vocab_size=32))
    >>> log_probs, out_lens, _ = model(torch.zeros(1, 101, 80), torch.tensor([101]))
    >>> tuple(log_probs.shape), out_lens.tolist()
    ((1, 26, 32), [26])
    """

    def __init__(self, config: ConformerConfig):
        super().__init__()
        self.config = config
        self.subsampling = ConvSubsampling(
            config.n_mels, config.d_model, config.subsampling_channels, config.subsampling
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(ConformerBlock(config) for _ in range(config.n_layers))
        self.ctc_head = nn.Linear(config.d_model, config.vocab_size)

    def output_lengths(self, feat_lens: Tensor | int) -> Tensor | int:
        """Encoder frames for ``feat_lens`` input frames (``subsampled_lengths`` at this model's factor)."""
        return subsampled_lengths(feat_lens, self.config.subsampling)

    def forward(
        self, feats: Tensor, feat_lens: Tensor, return_hidden: bool = False,
        chunk_size: int | None = None, left_chunks: int | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor] | None]:
        """feats [B, T, n_mels], feat_lens [B] int64 ->
        log_probs [B, T', V] (log_softmax over V, blank = ``BLANK_ID``), out_lens [B],
        hidden: per block, its output [B, T', d_model] (``return_hidden``), else None.

        ``chunk_size`` encoder frames per attention chunk with ``left_chunks`` chunks of left
        context (`chunking`; None: the config's, -1: full context). Chunked, each chunk's
        log-probs are what `forward_chunk` gives when the utterance is streamed chunk by chunk.
        """
        chunking = self.chunking(chunk_size, left_chunks)
        x, out_lens = self.subsampling(feats, feat_lens)
        x = self.dropout(x)
        mask = time_mask(out_lens, x.size(1))
        attn_mask = None
        if chunking.chunk_size != FULL_CONTEXT:
            attn_mask = padded_chunk_mask(mask, chunking.chunk_size, chunking.left_chunks)
        hidden = []
        for block in self.blocks:
            x = block(x, mask, attn_mask)
            hidden.append(x)
        return self.ctc_log_probs(x), out_lens, (hidden if return_hidden else None)

    def chunking(self, chunk_size: int | None = None, left_chunks: int | None = None) -> ChunkChoice:
        """The chunking to run: the arguments, each None replaced by the config's value."""
        choice = ChunkChoice(
            self.config.chunk_size if chunk_size is None else int(chunk_size),
            self.config.left_chunks if left_chunks is None else int(left_chunks),
        )
        problems = _chunking_problems(choice.chunk_size, choice.left_chunks)
        if problems:
            raise ValueError("ConformerCTC: " + "; ".join(problems))
        return choice

    def initial_state(self, batch_size: int = 1, device: torch.device | str | None = None) -> EncoderState:
        """The `EncoderState` before a stream's first chunk: no cached keys, zeros elsewhere (the
        convolutions' left padding)."""
        c = self.config
        head_dim = c.d_model // c.n_heads
        return EncoderState(
            features=torch.zeros(batch_size, c.subsampling, c.n_mels, device=device),
            attention=[torch.zeros(batch_size, c.n_heads, 0, 2 * head_dim, device=device)
                       for _ in self.blocks],
            convolution=[torch.zeros(batch_size, c.d_model, c.conv_kernel - 1, device=device)
                         for _ in self.blocks],
        )

    def forward_chunk(self, feats: Tensor, state: EncoderState, chunk_size: int | None = None,
                      left_chunks: int | None = None) -> tuple[Tensor, EncoderState]:
        """Stream one chunk: feats [B, n, n_mels], the chunk's feature frames (``n = chunk_size *
        subsampling``; fewer only in a stream's last chunk), and the state after the previous
        chunk -> log_probs [B, ceil(n / subsampling), V] and the next state.

        Run in eval mode (no dropout). Chaining a whole utterance through it gives the log-probs of
        ``forward(..., chunk_size, left_chunks)`` over the whole utterance. Needs ``causal``.
        """
        chunking = self.chunking(chunk_size, left_chunks)
        if not self.config.causal:
            raise ValueError("forward_chunk needs a causal model (ConformerConfig.causal=True, "
                             "e.g. preset student-stream); this one's convolution reads the future")
        limit = chunking.chunk_size * self.config.subsampling
        if chunking.chunk_size != FULL_CONTEXT and feats.size(1) > limit:
            raise ValueError(f"forward_chunk: {feats.size(1)} feature frames, more than one chunk "
                             f"({chunking.chunk_size} x {self.config.subsampling} = {limit})")
        x, features = self.subsampling.forward_chunk(feats, state.features, first=state.frames == 0)
        keep = None
        if FULL_CONTEXT not in (chunking.chunk_size, chunking.left_chunks):
            keep = chunking.left_chunks * chunking.chunk_size
        attention, convolution = [], []
        for block, att_cache, conv_cache in zip(self.blocks, state.attention, state.convolution, strict=True):
            x, kv, conv_cache = block.forward_chunk(x, att_cache, conv_cache, state.frames)
            attention.append(kv if keep is None else kv[:, :, max(0, kv.size(2) - keep):])
            convolution.append(conv_cache)
        return self.ctc_log_probs(x), EncoderState(features, attention, convolution, state.frames + x.size(1))

    def fixed_state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of `step`'s state tensors (one stream): ``features``, ``attention``,
        ``convolution``, ``frames``. Needs a finite chunking (`step`)."""
        c = self.config
        self._check_fixed_chunking()
        cached = c.left_chunks * c.chunk_size
        return {
            "features": (1, c.subsampling, c.n_mels),
            "attention": (c.n_layers, c.n_heads, cached, 2 * (c.d_model // c.n_heads)),
            "convolution": (c.n_layers, c.d_model, c.conv_kernel - 1),
            "frames": (1,),
        }

    def _check_fixed_chunking(self) -> None:
        c = self.config
        if not c.causal or c.chunk_size == FULL_CONTEXT or c.left_chunks == FULL_CONTEXT:
            raise ValueError(
                f"a fixed-size stream state needs causal: true, chunk_size > 0 and left_chunks >= 0 (this "
                f"model: causal={c.causal}, chunk_size={c.chunk_size}, left_chunks={c.left_chunks}); "
                "train with preset student-stream, or set left_chunks to bound the attention cache"
            )

    def step(self, feats: Tensor, valid: Tensor, features: Tensor, attention: Tensor, convolution: Tensor,
             frames: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """`forward_chunk` at the config's chunking with a fixed-size state, for export: one static
        graph serves a stream's first chunk and every later one (no branch on the first chunk, no
        growing cache). One stream (batch 1):

        * feats ``[1, chunk_size * subsampling, n_mels]``, the chunk's feature frames, of which
          ``valid [1]`` int are the utterance's (all but in a stream's last chunk, padded past its
          end: the others are masked out, as `forward_chunk` on the shorter chunk leaves them out);
        * features ``[1, subsampling, n_mels]``: as `EncoderState.features`;
        * attention ``[n_layers, n_heads, K, 2 * head_dim]``, ``K = left_chunks * chunk_size``:
          block i's rotated keys and values (last axis: keys then values) of the last ``K``
          encoder frames, oldest first; the first ``K - min(frames, K)`` slots hold no frame yet
          (zeros at the start) and are masked out;
        * convolution ``[n_layers, d_model, conv_kernel - 1]``: as `EncoderState.convolution`;
        * frames ``[1]`` int32: encoder frames so far (0 at the start; RoPE positions, the
          cache's valid slots and the subsampling front's first-chunk padding derive from it).

        -> log_probs ``[1, chunk_size, V]`` (the first ``ceil(valid / subsampling)`` valid) and the
        next features, attention, convolution, frames. Equals `forward_chunk` on the same valid
        frames (a masked key gets exactly zero weight).
        """
        self._check_fixed_chunking()
        # Sizes from the config, not read from tensors: a traced graph keeps them constants.
        chunk, cached = self.config.chunk_size, self.config.left_chunks * self.config.chunk_size
        x, features = self.subsampling.forward_chunk(feats, features, first=frames == 0, valid=valid)
        # Slot j of the cache holds a frame once frames >= K - j; of the chunk's own keys, those of
        # the utterance's frames.
        positions = torch.arange(max(cached, chunk), device=x.device)
        key_mask = torch.cat([positions[:cached] >= cached - frames,
                              positions[:chunk] < self.output_lengths(valid)])
        next_attention, next_convolution = [], []
        for i, block in enumerate(self.blocks):
            x, kv, conv = block.forward_chunk(x, attention[i : i + 1], convolution[i : i + 1], frames, key_mask)
            next_attention.append(kv[:, :, chunk:])
            next_convolution.append(conv)
        return (self.ctc_log_probs(x), features, torch.cat(next_attention), torch.cat(next_convolution),
                frames + chunk)

    def ctc_log_probs(self, hidden: Tensor) -> Tensor:
        """The CTC head on encoder states [B, T', d_model]: log_softmax over V, in float32. Also
        what intermediate CTC applies to a lower block's output."""
        return F.log_softmax(self.ctc_head(hidden).float(), dim=-1)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as RoPE tables are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_second(config: ConformerConfig, frame_rate: float = 100.0, utterance_seconds: float = 10.0) -> float:
    """Forward-pass FLOPs (2 x multiply-accumulates) per second of audio.

    Counted exactly, at the subsampled lengths of one ``utterance_seconds`` utterance at
    ``frame_rate`` feature frames per second (100 for a 10 ms hop): every convolution (subsampling,
    depthwise, pointwise), every linear layer (subsampling projection, feed-forward, attention
    q/k/v/output, CTC head) and the two attention matmuls (QK^T and attention x V, T'^2 * d_model
    MACs each per layer). Not counted: biases, norms, activations, softmax, RoPE, residual adds
    and masking (all O(T * d_model)), and the log-mel front end.

    Attention grows with utterance length: per audio second it costs about 2 * T'(1 s) * T'(L) *
    d_model MACs per layer for L-second utterances, so it is quoted at ``utterance_seconds``
    (default 10 s, the benchmark's batches); everything else is linear in time. A chunked
    (streaming) model's queries read at most ``(left_chunks + 1) * chunk_size`` keys, but SDPA with
    a mask still computes every score: the count is that of full context either way.
    """
    n_frames = round(frame_rate * utterance_seconds)
    c, d, k = config.subsampling_channels, config.d_model, config.conv_kernel
    t, f = n_frames, config.n_mels
    macs = 0
    for stage in range(num_stages(config.subsampling)):
        t, f = stage_length(t), stage_length(f)
        if stage == 0:
            macs += t * f * c * 9  # Conv2d(1 -> C, 3x3)
        elif config.subsampling == 4:
            macs += t * f * c * c * 9  # Conv2d(C -> C, 3x3)
        else:
            macs += t * f * c * (9 + c)  # depthwise 3x3 + pointwise C -> C
    macs += t * (c * f) * d  # projection to d_model
    per_frame = (
        2 * 2 * config.ff_mult * d * d  # two feed-forward modules, two linears each
        + 4 * d * d  # q, k, v and output projections
        + 2 * d * d + d * k + d * d  # conv module: pointwise in (GLU, 2d), depthwise, pointwise out
    )
    macs += config.n_layers * (t * per_frame + 2 * t * t * d)
    macs += t * d * config.vocab_size  # CTC head
    return 2.0 * macs / utterance_seconds
