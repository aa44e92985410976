"""Multi-head self-attention with rotary position embedding (RoPE).

Why RoPE and not Transformer-XL relative positions (the original Conformer):
- Both make the attention score depend on the offset between two frames only, which is what
  speech needs (a phone looks the same wherever it occurs in the utterance).
- Relative positions need a [2T-1, D] positional projection, two learned biases and the
  pad/reshape/slice "relative shift", whose reshapes carry T and trip static-shape converters
  (TFLite) and length-baking exporters. RoPE is an elementwise multiply by cos/sin tables and a
  half-swap (chunk + concat) on 4-D tensors: it converts as-is to Core ML, TFLite and ONNX.
- It costs O(T * D) per layer instead of O(T^2 * D) for the positional score term, adds no
  parameters, and has no maximum length: the tables are computed from ``arange(T)`` at run time.
- Li et al. 2021 ("Conformer-based End-to-end Speech Recognition With Rotary Position
  Embedding") report it on par with or better than relative positions for Conformer ASR.
Positions count from the first frame of each utterance, so padding cannot move them.

The attention itself is ``F.scaled_dot_product_attention`` with a key-padding mask: padded frames
of a batch receive zero weight, so a valid frame's output ignores them. A streaming model adds a
chunk mask (`asrkd.models.streaming.chunk_attention_mask`) over the whole utterance, or runs one
chunk at a time against a cache of earlier keys and values (`RotarySelfAttention.forward_chunk`);
both rotate by the same absolute positions, so they compute the same scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE in the "rotate half" layout (GPT-NeoX), which needs no 5-D
    reshape or strided slicing: dimension i is paired with dimension i + head_dim / 2."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        # Not persistent: derived from the config, so checkpoints do not carry it.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> tuple[Tensor, Tensor]:
        """x [B, H, T, Dh] -> cos, sin [T, Dh] in x's dtype, for positions ``offset .. offset + T - 1``
        (a streaming chunk starts at its first frame's position in the utterance; a 0-d tensor
        ``offset`` keeps it an input of a traced graph)."""
        pos = torch.arange(x.size(2), device=x.device, dtype=torch.float32)
        if isinstance(offset, Tensor) or offset:
            pos = pos + offset  # integers below 2^24 are exact in float32: the same angles as offline
        angles = pos[:, None] * self.inv_freq[None, :]  # [T, Dh / 2]
        angles = torch.cat([angles, angles], dim=-1)  # [T, Dh]
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    # chunk, not slicing at x.size(-1) // 2: traced size arithmetic becomes an aten::Int that
    # coremltools fails to convert.
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, H, T, Dh] by its positions' angles (cos, sin [T, Dh])."""
    return x * cos + _rotate_half(x) * sin


class RotarySelfAttention(nn.Module):
    """Multi-head self-attention, RoPE on queries and keys, key-padding mask."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, rope_base: float = 10000.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(self.head_dim, rope_base)

    def forward(self, x: Tensor, mask: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x [B, T, D], mask [B, T] bool (True = valid frame) -> [B, T, D].

        ``attn_mask [B, T, T]`` bool (True = query may read key), when given, replaces the
        key-padding mask (a chunk mask combined with it: `asrkd.models.streaming.chunk_attention_mask`).
        """
        q, k, v = self._rotated_qkv(x, offset=0)
        # Every query row keeps at least one valid key (lengths >= 1; a chunk mask keeps the
        # diagonal), so no row is all -inf.
        attn_mask = mask[:, None, None, :] if attn_mask is None else attn_mask[:, None]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).flatten(2))

    def forward_chunk(self, x: Tensor, cache: Tensor, offset: int | Tensor,
                      key_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One streaming chunk: x [B, C, D] whose first frame is frame ``offset`` of the utterance,
        cache [B, H, Tc, 2 * Dh] (rotated keys and values of the Tc earlier frames the chunk may read)
        -> out [B, C, D], keys and values [B, H, Tc + C, 2 * Dh] (the caller keeps what the next
        chunk may read). Every query reads every cached key and every key of its own chunk, as the
        chunk mask lets it offline; there is no padding inside a stream.

        ``key_mask [Tc + C]`` bool (True = readable), when given, hides cache slots that hold no
        frame yet: a fixed-size cache (`asrkd.models.conformer.ConformerCTC.step`) is zeros at the
        start of a stream, and a masked key gets exactly zero weight."""
        q, k, v = self._rotated_qkv(x, offset)
        kv = torch.cat([cache, torch.cat([k, v], dim=-1)], dim=2)
        k, v = kv.chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if key_mask is None else key_mask[None, :])
        return self.proj(out.transpose(1, 2).flatten(2)), kv

    def _rotated_qkv(self, x: Tensor, offset: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, D] -> q, k, v [B, H, T, Dh], q and k rotated for positions from ``offset``."""
        # [B, T, 3D] -> [B, T, 3H, Dh] -> [B, 3H, T, Dh]: every tensor stays 4-D, and the -1 sizes
        # keep B and T symbolic for tracing and export.
        qkv = self.qkv(x).unflatten(-1, (3 * self.n_heads, self.head_dim)).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=1)
        cos, sin = self.rotary(q, offset)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v
