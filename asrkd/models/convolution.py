"""Conformer convolution module: LayerNorm -> pointwise + GLU -> depthwise -> norm -> SiLU -> pointwise.

The norm after the depthwise convolution is a LayerNorm over channels, not the original
BatchNorm:
- BatchNorm's training statistics pool every frame of the batch, padding included, so an
  utterance's activations depend on how much padding its batch had and on its batch mates;
  LayerNorm normalises each frame on its own, so it is padding- and batch-independent.
- With the small batches that fit on a CPU or a phone-sized fine-tuning run, batch statistics
  are noisy and the running averages used at inference drift from what training saw.
- It removes the train/eval behaviour switch, and there are no running buffers to calibrate
  after distillation or quantisation. WeNet (``cnn_module_norm``) and NeMo (``conv_norm_type``)
  offer the same switch to ``layer_norm``.

Padded frames are zeroed right before the depthwise convolution, the only operation here that
mixes frames, so its window reads zeros past the end of an utterance whether or not it is padded.

``causal=True`` (a streaming model) pads the depthwise convolution with ``kernel_size - 1`` zeros
on the left only, so a frame reads no later frame. Streaming then keeps the last
``kernel_size - 1`` inputs of the depthwise convolution as its cache (`forward_chunk`); a fresh
stream's cache is zeros, the same left padding. The weights are the same shape either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvolutionModule(nn.Module):
    """The Conformer convolution module (see the module docstring): ``x [B, T, D]`` and a validity
    ``mask [B, T]`` in, ``[B, T, D]`` out; ``kernel_size`` (odd) frames of context, same length:
    centred, or with ``causal`` the frame and the ``kernel_size - 1`` before it."""

    def __init__(self, d_model: int, kernel_size: int, dropout: float = 0.0, causal: bool = False):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel must be odd to keep the sequence length, got {kernel_size}")
        self.causal = causal
        self.cache_frames = kernel_size - 1 if causal else 0
        self.norm_in = nn.LayerNorm(d_model)
        # Pointwise convolutions are Linear layers on [B, T, D]: the same maths as a kernel-1
        # Conv1d without two transposes around each.
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(
            d_model, d_model, kernel_size, padding=0 if causal else kernel_size // 2, groups=d_model
        )
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, T, D], mask [B, T] bool (True = valid frame) -> [B, T, D]."""
        x = F.glu(self.pointwise_in(self.norm_in(x)), dim=-1)
        x = x.masked_fill(~mask[:, :, None], 0.0).transpose(1, 2)  # [B, D, T]
        if self.causal:
            x = F.pad(x, (self.cache_frames, 0))
        return self._output(self.depthwise(x))

    def forward_chunk(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """One streaming chunk of a causal module: x [B, C, D], cache [B, D, kernel_size - 1] (the
        depthwise inputs of the frames before the chunk) -> out [B, C, D], the next cache."""
        x = F.glu(self.pointwise_in(self.norm_in(x)), dim=-1).transpose(1, 2)
        x = torch.cat([cache, x], dim=2)
        # A negative start (no size read from x) keeps a traced graph free of size arithmetic.
        cache = x[:, :, -self.cache_frames :] if self.cache_frames else x[:, :, :0]
        return self._output(self.depthwise(x)), cache

    def _output(self, x: Tensor) -> Tensor:
        """The depthwise convolution's output [B, D, T] -> norm, SiLU, pointwise -> [B, T, D]."""
        x = self.pointwise_out(F.silu(self.norm(x.transpose(1, 2))))
        return self.dropout(x)
