"""Augmentation: waveform transforms (speed, noise, band limit, breath noise, gain) and SpecAugment.

Waveform transforms take (wav float32 [N], rng: np.random.Generator) and return float32 [N'];
all randomness comes from `rng`, so a seeded generator reproduces them exactly (`AudioDataset`
seeds one per item and epoch). `SpecAugment` masks a padded feature batch with a
``torch.Generator``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from asrkd.audio import audio_duration, load_audio, resample
from asrkd.contract import SAMPLE_RATE

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""A waveform transform: ``(wav float32 [N], rng) -> float32 [N']``."""


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            wav = t(wav, rng)
        return wav

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


@dataclass
class SpeedPerturb:
    """Kaldi/NeMo speed perturbation: play the audio `factor` times faster (pitch moves too).

    The waveform is treated as if recorded at `sample_rate * factor` and resampled to
    `sample_rate`, so the length becomes `N / factor`. Batches are budgeted on manifest
    durations, so factors < 1 make a batch up to `1 / min(factors)` times longer.
    """

    factors: Sequence[float] = (0.9, 1.0, 1.1)
    sample_rate: int = SAMPLE_RATE

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        factor = float(self.factors[rng.integers(len(self.factors))])
        if factor == 1.0:
            return wav
        return resample(wav, round(self.sample_rate * factor), self.sample_rate)


def _colored_noise(n: int, rng: np.random.Generator, color: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if color == "white":
        return white.astype(np.float32)
    # pink: 1/f power, i.e. 1/sqrt(f) amplitude, shaped in the frequency domain
    spec = np.fft.rfft(white)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spec / np.sqrt(f), n).astype(np.float32)


@dataclass
class AddNoise:
    """Add noise at an SNR drawn uniformly from `snr_db` (dB, over the whole utterance).

    `noise`: audio files to crop randomly (loaded at `sample_rate`, looped when shorter than the
    speech); None generates white or pink noise. Applied with probability `prob`. Silent input is
    returned unchanged (no SNR is defined).
    """

    snr_db: tuple[float, float] = (10.0, 30.0)
    noise: Sequence[str | os.PathLike] | None = None
    prob: float = 1.0
    sample_rate: int = SAMPLE_RATE
    _lengths: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def _noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if not self.noise:
            return _colored_noise(n, rng, "white" if rng.random() < 0.5 else "pink")
        path = os.fspath(self.noise[rng.integers(len(self.noise))])
        if path not in self._lengths:
            self._lengths[path] = audio_duration(path)
        need = n / self.sample_rate
        start = rng.uniform(0.0, max(self._lengths[path] - need, 0.0))
        clip = load_audio(path, self.sample_rate, offset=start, duration=need)
        return np.resize(clip, n)  # loops a clip shorter than the speech

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return wav
        snr = rng.uniform(*self.snr_db)
        noise = self._noise(len(wav), rng).astype(np.float64)
        p_sig = float(np.mean(np.square(wav, dtype=np.float64)))
        p_noise = float(np.mean(np.square(noise)))
        if p_sig == 0.0 or p_noise == 0.0:
            return wav
        scale = math.sqrt(p_sig / (p_noise * 10.0 ** (snr / 10.0)))
        return (wav + scale * noise).astype(np.float32)


@dataclass
class BandLimit:
    """Low-pass to simulate narrowband (telephone, 8 kHz) audio, with probability `prob`.

    Resamples down to `2 * cutoff` (soxr's anti-aliasing removes everything above `cutoff`) and
    back up, with `cutoff` drawn uniformly from `cutoff_hz`. Lets wideband training audio look
    like upsampled 8 kHz recordings such as FSDD.
    """

    prob: float = 0.5
    cutoff_hz: tuple[float, float] = (3400.0, 4000.0)
    sample_rate: int = SAMPLE_RATE

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return wav
        low_rate = 2 * round(rng.uniform(*self.cutoff_hz))
        if low_rate >= self.sample_rate:
            return wav
        out = resample(resample(wav, self.sample_rate, low_rate), low_rate, self.sample_rate)
        n = len(wav)
        return out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))


@dataclass
class BreathNoise:
    """Band-limited noise that follows the speech's own envelope, with probability `prob`.

    Stationary noise (``AddNoise``) is as loud in pauses as in vowels, so a model learns to
    ignore it. Aspiration in a breathy voice, or a hard (glottal) vowel onset, is noise that is
    there only while the person speaks: a model trained on a few speakers with clean voices
    reads it as frication. On FSDD, yweweler's "eight" opens with more 1-4 kHz energy than his
    own "six" and is often recognised as "six" (measurements in docs/TRAINING.md). This transform
    adds white noise band-passed to `band_hz`, scaled frame by frame to the speech's RMS
    envelope (20 ms windows every 10 ms, interpolated) times a level drawn from `level_db`
    (dB relative to the envelope). Silence stays silent.
    """

    level_db: tuple[float, float] = (-25.0, -10.0)
    band_hz: tuple[float, float] = (1000.0, 4000.0)
    prob: float = 0.5
    sample_rate: int = SAMPLE_RATE

    def envelope(self, wav: np.ndarray) -> np.ndarray:
        """RMS of 20 ms windows every 10 ms, linearly interpolated to every sample: float64 [N]."""
        hop, win = self.sample_rate // 100, self.sample_rate // 50
        n = len(wav)
        padded = np.pad(wav.astype(np.float64), (win // 2, win // 2))
        csum = np.concatenate([[0.0], np.cumsum(padded * padded)])
        centres = np.arange(0, n, hop)
        rms = np.sqrt(np.maximum(csum[centres + win] - csum[centres], 0.0) / win)
        return np.interp(np.arange(n), centres, rms)

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob or len(wav) < 2:
            return wav
        level = 10.0 ** (rng.uniform(*self.level_db) / 20.0)
        spec = np.fft.rfft(rng.standard_normal(len(wav)))
        freqs = np.fft.rfftfreq(len(wav), 1.0 / self.sample_rate)
        spec[(freqs < self.band_hz[0]) | (freqs > self.band_hz[1])] = 0.0
        noise = np.fft.irfft(spec, len(wav))
        rms = float(np.sqrt(np.mean(noise * noise)))
        if rms == 0.0:
            return wav
        return (wav + (level / rms) * noise * self.envelope(wav)).astype(np.float32)


@dataclass
class Gain:
    """Scale the waveform by a gain drawn uniformly from `gain_db` (dB), with probability `prob`.

    Recording level matters to a log-mel front end even with per-utterance normalisation: the
    log floor (FrontendConfig.log_floor, about -66 dBFS) clips the weak parts of quiet speech
    (fricatives, nasals) but not of loud speech. A speaker recorded 15 dB quieter than the
    training speakers loses exactly those sounds; training on randomly attenuated copies teaches
    the model what quiet speech looks like. Apply it last, after noise, so that the noise is
    attenuated with the speech as in a quiet recording. Results are clipped to [-1, 1].
    """

    gain_db: tuple[float, float] = (-25.0, 0.0)
    prob: float = 0.5

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return wav
        scale = 10.0 ** (rng.uniform(*self.gain_db) / 20.0)
        return np.clip(wav * scale, -1.0, 1.0).astype(np.float32)


class SpecAugment(nn.Module):
    """SpecAugment masks on a padded batch of features; identity in eval mode.

    `freq_masks` bands of width uniform in [0, `freq_width`] bins and `time_masks` spans of
    width uniform in [0, `time_width`] frames (a float < 1: that fraction of each utterance's
    own length) are set to `mask_value` (0 = the mean of per-feature normalised features).
    Only frames `< frame_lengths` are touched; no time warping.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 27,
        time_masks: int = 10,
        time_width: float | int = 0.05,
        mask_value: float = 0.0,
    ):
        super().__init__()
        if isinstance(time_width, float) and not 0.0 < time_width < 1.0:
            raise ValueError(f"time_width as a float is a fraction in (0, 1), got {time_width}")
        self.freq_masks = freq_masks
        self.freq_width = freq_width
        self.time_masks = time_masks
        self.time_width = time_width
        self.mask_value = mask_value

    @staticmethod
    def _spans(
        count: int, max_width: Tensor, size: Tensor, n: int, g: torch.Generator | None
    ) -> Tensor:
        """Boolean [B, n]: `count` random spans of width <= max_width inside [0, size) per row."""
        b = size.shape[0]
        if count == 0:
            return torch.zeros(b, n, dtype=torch.bool, device=size.device)
        u = torch.rand(b, count, 2, generator=g, device=size.device)
        width = torch.minimum(
            (u[..., 0] * (max_width[:, None] + 1)).floor(), size[:, None].to(u.dtype)
        )
        start = (u[..., 1] * (size[:, None] - width + 1)).floor()
        pos = torch.arange(n, device=size.device, dtype=u.dtype)[None, None, :]
        return ((pos >= start[..., None]) & (pos < (start + width)[..., None])).any(dim=1)

    def forward(
        self, feats: Tensor, frame_lengths: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """feats [B, T, F], frame_lengths [B] -> masked copy [B, T, F] (the input in eval mode)."""
        if not self.training:
            return feats
        b, t, f = feats.shape
        lengths = frame_lengths.to(device=feats.device, dtype=torch.long).clamp(max=t)
        full_f = torch.full((b,), f, device=feats.device, dtype=torch.long)
        freq = self._spans(
            self.freq_masks, torch.full_like(full_f, min(self.freq_width, f)), full_f, f, generator
        )
        if isinstance(self.time_width, float):
            max_w = (lengths.to(torch.float64) * self.time_width).floor().long()
        else:
            max_w = torch.full_like(lengths, int(self.time_width))
        time = self._spans(self.time_masks, max_w, lengths, t, generator)
        valid = torch.arange(t, device=feats.device)[None, :] < lengths[:, None]
        mask = (freq[:, None, :] | time[:, :, None]) & valid[:, :, None]
        return feats.masked_fill(mask, self.mask_value)

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, "
            f"time_masks={self.time_masks}, time_width={self.time_width}"
        )
