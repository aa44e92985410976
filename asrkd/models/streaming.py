"""Chunked (streaming) Conformer: the chunk mask, dynamic chunk sizes, the encoder's stream state.

A streaming Conformer (WeNet's U2 recipe) splits the encoder frames into chunks of ``chunk_size``
frames. A frame attends to every frame of its own chunk and of the ``left_chunks`` chunks before
it (all earlier chunks when ``left_chunks < 0``), never to a later chunk; the depthwise
convolution is causal and the subsampling front is chunk-bounded (``subsampling.py``). So the
log-probs of a chunk depend on no audio after it, and a stream can compute them as soon as the
chunk's audio has arrived:

* offline, over a whole utterance: ``model(feats, lens, chunk_size=C, left_chunks=L)`` masks the
  attention with `chunk_attention_mask` (what training and chunked offline decoding run);
* online, one chunk at a time: ``model.forward_chunk(feats, state)`` with an `EncoderState`
  that carries each block's keys and values and convolution inputs, and the front's last frames.

Both give the same log-probs (to float rounding): the attention reads the same keys, rotated by
the same absolute positions, and the convolutions read the same frames.

Dynamic chunk training (U2): `draw_chunk_size` picks a chunk size (and left context) per batch,
sometimes full context, so one set of weights serves every chunk size and full-context decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FULL_CONTEXT = -1
"""``chunk_size`` (and ``left_chunks``) meaning "no limit": the whole utterance is one chunk."""


def chunk_attention_mask(num_frames: int, chunk_size: int, left_chunks: int = FULL_CONTEXT,
                         device: torch.device | None = None) -> Tensor:
    """``[T, T]`` bool, True where query frame ``t`` may read key frame ``s``: ``s`` is in ``t``'s
    chunk or one of the ``left_chunks`` chunks before it (any earlier chunk if ``left_chunks < 0``).

    >>> chunk_attention_mask(5, 2, left_chunks=0).int().tolist()
    [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    """
    chunk = torch.arange(num_frames, device=device) // chunk_size
    visible = chunk[None, :] <= chunk[:, None]
    if left_chunks >= 0:
        visible = visible & (chunk[None, :] >= chunk[:, None] - left_chunks)
    return visible


def padded_chunk_mask(valid: Tensor, chunk_size: int, left_chunks: int = FULL_CONTEXT) -> Tensor:
    """The attention mask of a padded batch, ``valid [B, T]`` bool -> ``[B, T, T]``: the chunk mask
    and the key-padding mask. Padded query rows read their whole chunk window (padding included)
    instead of the valid keys only, so that no row is empty; their outputs are unspecified anyway."""
    chunks = chunk_attention_mask(valid.size(1), chunk_size, left_chunks, valid.device)
    # logical_or, not `|`: coremltools converts no aten::__or__ (the Core ML export of a chunked model).
    return chunks[None] & torch.logical_or(valid[:, None, :], ~valid[:, :, None])


@dataclass(frozen=True)
class ChunkChoice:
    """The chunking of one batch: ``chunk_size`` encoder frames (`FULL_CONTEXT`: none) and
    ``left_chunks`` chunks of left context (`FULL_CONTEXT`: unlimited)."""

    chunk_size: int
    left_chunks: int


def draw_chunk_size(generator: torch.Generator, max_chunk_size: int = 25, full_context_prob: float = 0.5,
                    max_left_chunks: int | None = None) -> ChunkChoice:
    """Dynamic chunk training (U2): the chunking of one training batch.

    With probability ``full_context_prob`` the whole utterance (what full-context decoding runs);
    otherwise a chunk size drawn uniformly from ``1 .. max_chunk_size`` and, when
    ``max_left_chunks`` is given, a left context drawn uniformly from ``0 .. max_left_chunks``
    (else unlimited). Draws from ``generator`` only, so a training run stays reproducible; pass
    the result to ``model(feats, lens, chunk_size=..., left_chunks=...)``. U2's full-context
    branch depends on the batch length (a chunk drawn from ``1 .. T`` above ``T / 2``); here it
    is an explicit probability, so short and long batches train full context equally often.

    >>> draw_chunk_size(torch.Generator().manual_seed(0), max_left_chunks=4)
    ChunkChoice(chunk_size=-1, left_chunks=-1)
    """
    if max_chunk_size < 1 or not 0.0 <= full_context_prob <= 1.0:
        raise ValueError(
            f"draw_chunk_size: max_chunk_size={max_chunk_size} must be >= 1 and "
            f"full_context_prob={full_context_prob} in [0, 1]"
        )
    if torch.rand((), generator=generator).item() < full_context_prob:
        return ChunkChoice(FULL_CONTEXT, FULL_CONTEXT)
    chunk_size = int(torch.randint(1, max_chunk_size + 1, (), generator=generator))
    left_chunks = FULL_CONTEXT
    if max_left_chunks is not None:
        left_chunks = int(torch.randint(0, max_left_chunks + 1, (), generator=generator))
    return ChunkChoice(chunk_size, left_chunks)


@dataclass
class EncoderState:
    """What a streaming encoder carries from one chunk to the next, for a batch of B streams.

    * ``features [B, subsampling, n_mels]``: the last feature frames of the previous chunk (the
      subsampling front's left context; zeros before the first chunk);
    * ``attention[i] [B, n_heads, Tc, 2 * head_dim]``: block i's rotated keys and values (last
      dimension: keys then values) of the ``Tc <= left_chunks * chunk_size`` frames the next
      chunk may read (all earlier frames with unlimited left context);
    * ``convolution[i] [B, d_model, conv_kernel - 1]``: block i's depthwise-convolution inputs of
      the frames before the next chunk;
    * ``frames``: encoder frames emitted so far (the next chunk's first position).

    Build a fresh one with ``ConformerCTC.initial_state``; ``forward_chunk`` returns the next.
    """

    features: Tensor
    attention: list[Tensor]
    convolution: list[Tensor]
    frames: int = 0
