"""Convolutional front of the encoder: shortens [B, T, n_mels] features to [B, T', d_model].

Every stage is a 3x3 convolution with stride 2 and padding 1 over (time, frequency), so each stage
maps a length L to ``(L - 1) // 2 + 1`` (= ceil(L / 2)): 100 frames (1 s at a 10 ms hop) become 50,
then 25 (x4), then 13 (x8). ``subsampled_lengths`` is the one implementation of that formula; the
model and everything that sizes tensors from frame counts (CTC length checks, export contracts)
call it.

Padding invariance: a padded convolution reads one frame past the end of an utterance. Alone, that
frame is the convolution's own zero padding; inside a batch it would be whatever the batch holds
there. Zeroing every stage's input beyond its valid length makes both cases read zeros, so an
utterance's output does not depend on its batch.

Chunk-bounded: output frame ``j`` reads input frames ``factor * j - (factor - 1)`` to
``factor * j + factor - 1`` (each stage's output ``i`` reads its inputs ``2i - 1 .. 2i + 1``), so it
needs no input beyond its own ``factor`` frames, and a streaming encoder can run the front on one
chunk at a time. It keeps the last ``factor`` input frames of the previous chunk as left context,
recomputes one output frame from them and drops it (`ConvSubsampling.forward_chunk`). The first
chunk has no previous frames: ``left_padding`` marks the cache's zeros as outside the utterance at
every stage, so they read as the zero padding the whole-utterance forward sees there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SUBSAMPLING_FACTORS = (4, 8)


def num_stages(factor: int) -> int:
    """Stride-2 stages for a subsampling factor (4 -> 2, 8 -> 3)."""
    if factor not in SUBSAMPLING_FACTORS:
        raise ValueError(f"subsampling factor must be one of {SUBSAMPLING_FACTORS}, got {factor}")
    return factor.bit_length() - 1


def stage_length(length):
    """One stride-2 stage (kernel 3, padding 1): L -> (L - 1) // 2 + 1. Keeps 0 at 0."""
    return (length - 1) // 2 + 1


def subsampled_lengths(lengths: Tensor | int, factor: int) -> Tensor | int:
    """Number of encoder frames for ``lengths`` input frames after subsampling by ``factor``.

    ``factor`` 4 applies ``L -> (L - 1) // 2 + 1`` twice, 8 three times; this is ceil(L / factor)
    for every L >= 0. Works on ints and on integer tensors (traceable: no Python branching on
    values).
    """
    for _ in range(num_stages(factor)):
        lengths = stage_length(lengths)
    return lengths


def time_mask(lengths: Tensor, max_len: int | Tensor) -> Tensor:
    """[B] lengths -> [B, max_len] bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class ConvSubsampling(nn.Module):
    """Conv2d subsampling, x4 or x8, followed by a linear projection to ``d_model``.

    x4 (Conformer, WeNet): two 3x3 stride-2 convolutions, each followed by ReLU.
    x8 (FastConformer, NeMo "dw_striding"): one 3x3 stride-2 convolution, then two depthwise-
    separable stride-2 stages (depthwise 3x3 + pointwise 1x1), ReLU after each stage. Depthwise
    convolutions keep the extra stage cheap: at x8 the front costs about as much as at x4.
    """

    def __init__(self, n_mels: int, d_model: int, channels: int, factor: int = 4):
        super().__init__()
        n_stages = num_stages(factor)
        self.factor = factor
        stages = [nn.Sequential(nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.ReLU())]
        for _ in range(n_stages - 1):
            if factor == 4:
                conv = [nn.Conv2d(channels, channels, 3, stride=2, padding=1)]
            else:
                conv = [
                    nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels),
                    nn.Conv2d(channels, channels, 1),
                ]
            stages.append(nn.Sequential(*conv, nn.ReLU()))
        self.stages = nn.ModuleList(stages)
        freq = n_mels
        for _ in range(n_stages):
            freq = stage_length(freq)
        self.out = nn.Linear(channels * freq, d_model)

    def forward(self, feats: Tensor, feat_lens: Tensor, left_padding: int | Tensor = 0) -> tuple[Tensor, Tensor]:
        """feats [B, T, F], feat_lens [B] -> x [B, T', d_model], lens [B] (T' = subsampled T).

        ``left_padding`` (a multiple of ``factor``): the first frames are not part of the
        utterance; every stage reads them as zeros (see the module docstring). A 0-d int tensor
        keeps it an input of a traced graph (`forward_chunk` with a tensor ``first``)."""
        x = feats.unsqueeze(1)  # [B, 1, T, F]
        lens = feat_lens
        for stage in self.stages:
            valid = time_mask(lens, x.size(2))
            if isinstance(left_padding, Tensor) or left_padding:
                valid = valid & (torch.arange(x.size(2), device=x.device) >= left_padding)[None, :]
                left_padding = left_padding // 2
            # masked_fill rather than a multiply: NaN/inf in padding must not leak either.
            x = x.masked_fill(~valid[:, None, :, None], 0.0)
            x = stage(x)
            lens = stage_length(lens)
        # [B, C, T', F'] -> [B, T', C * F']; flatten (not a reshape to sizes read from x) keeps T'
        # symbolic under tracing.
        x = x.transpose(1, 2).flatten(2)
        return self.out(x), lens

    def forward_chunk(self, feats: Tensor, cache: Tensor, first: bool | Tensor,
                      valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One streaming chunk: feats [B, n, F] (n a multiple of ``factor``, except in the last
        chunk), cache [B, factor, F] (the previous chunk's last frames; zeros and ``first`` for a
        stream's first chunk) -> x [B, ceil(n / factor), d_model], the next cache. ``first`` may
        be a 0-d bool tensor (one traced graph for the first chunk and every later one).
        ``valid [B]`` int: only the first ``valid <= n`` frames of ``feats`` are the utterance's (a
        fixed-size last chunk padded past its end); its outputs from ``ceil(valid / factor)`` on
        are unspecified. None: all ``n``."""
        x = torch.cat([cache, feats], dim=1)
        if valid is None:
            lens = torch.full((x.size(0),), x.size(1), dtype=torch.long, device=x.device)
        else:  # no size read from x: a traced graph keeps the length an input
            lens = valid.to(torch.long) + self.factor
        if isinstance(first, Tensor):
            left_padding = first.to(torch.int32) * self.factor
        else:
            left_padding = self.factor if first else 0
        out, _ = self(x, lens, left_padding=left_padding)
        return out[:, 1:], x[:, -self.factor :]
