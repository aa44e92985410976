"""Log-mel front end: a padded batch of waveforms in, a padded batch of log-mel frames out.

`LogMel` matches ``librosa.feature.melspectrogram(..., power=2.0, center=True,
pad_mode="constant")`` followed by ``log(max(mel, log_floor))``, and is built only from ops that
every mobile exporter handles: the STFT is a strided ``conv1d`` with a fixed windowed DFT basis
(real and imaginary rows stacked), there are no complex tensors, and masks are arithmetic on
``lengths`` rather than Python control flow.

Framing (``center=True``): the signal is zero-padded by ``n_fft // 2`` on both sides and frame
``t`` is centred on sample ``t * hop_length``, so an utterance of ``N`` samples gives

    T = 1 + N // hop_length            (even n_fft; in general 1 + (N + 2 * (n_fft // 2) - n_fft) // hop_length)

With ``center=False`` frames start at sample 0 and ``T = 1 + (N - n_fft) // hop_length`` (0 when
``N < n_fft``). Kaldi framing (``framing="kaldi"``, Kaldi's ``snip_edges=false``, what sherpa-onnx
computes) centres frame ``t`` on sample ``t * hop_length + hop_length // 2``, takes ``win_length``
samples around it, mirrors the signal at both ends instead of padding zeros, and gives
``T = (N + hop_length // 2) // hop_length``. `FrontendConfig.num_frames` is the one implementation
of these formulas.

`FrontendConfig.preset("sherpa")` is the front end sherpa-onnx computes for NeMo CTC models
(`SHERPA_PRESET`); a student trained with it decodes in sherpa-onnx exactly as in PyTorch.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrkd.contract import SAMPLE_RATE

NORMALIZE_MODES = ("per_feature", "per_feature_sherpa", "none")
LEVEL_MODES = ("none", "rms")
FRAMINGS = ("librosa", "kaldi")
LOG_FLOOR_MODES = ("max", "add")
# Per-utterance mean/std normalisation removes a recording's gain from every band that stays above
# the log floor, but not from those that fall under it: in a recording made 15-20 dB quieter than
# the training speakers' (FSDD's yweweler against george/jackson/nicolas), fricatives, nasals and
# pauses sink into the floor and the model sees different features for the same words (measured:
# the FSDD teacher's WER on yweweler drops from 19.4 % to 16.1 % when his audio is simply played
# 16 dB louder). `level="rms"` scales every utterance to one RMS level first, so the floor sits at
# the same distance below the speech for every recording. The gain is capped so that a silent or
# nearly silent input stays quiet instead of turning its noise into speech-level features.
MAX_LEVEL_GAIN_DB = 40.0

# Vocal tract length perturbation (`vtlp_warp`): frequencies up to 80 % of Nyquist scale by alpha,
# the rest is squeezed or stretched linearly so that Nyquist stays put (Jaitly & Hinton use
# 4.8 kHz of 8 kHz).
VTLP_BOUNDARY = 0.8

# Default floor on the mel power before the log. Each DFT bin here is a 400-term fp32 dot product
# whose rounding error follows the loudest part of the frame, not the bin, so the weak bands of
# loud frames are the least accurate: against float64 we measured mel errors up to ~3e-10 for
# full-scale (|x| <= 1) sweeps and ~1e-10 in the lowest band of FSDD speech. A floor F bounds the
# log error by (mel error) / F, so 1e-6 keeps torch, librosa and any fp32 runtime (each rounds
# these sums in its own order) within ~3e-4 of each other for any input in [-1, 1]. librosa's
# 1e-10 would instead make empty bands (8 kHz audio upsampled to 16 kHz has nothing above 4 kHz)
# the log of rounding noise. 1e-6 is still ~80 dB below a full-scale tone (whisper keeps 80 dB)
# and equals white noise of ~5e-4 RMS, -66 dBFS (Slaney filters give a mel power of ~3.75 x the
# noise variance for 25 ms Hann frames at 16 kHz), quieter than the room noise of most speech
# recordings.
DEFAULT_LOG_FLOOR = 1e-6

# Lower bound on a band's standard deviation in per-feature normalisation. A band that sits at
# the log floor (e.g. everything above 4 kHz of 8 kHz audio upsampled to 16 kHz) is constant up to
# fp32 rounding of its mean (~1e-7), and each runtime rounds differently; NeMo's `std + 1e-5`
# would turn that residue into +-0.1 of runtime-specific noise. With std >= 1e-2 a constant band
# normalises to within ~1e-5 of 0 everywhere, while real speech bands (log-mel std ~1-3 per
# utterance) are unchanged.
_STD_FLOOR = 1e-2

# sherpa-onnx's NemoNormalizePerFeature: (x - mean) / (population std + 1e-5).
_SHERPA_STD_EPS = 1e-5

# The features sherpa-onnx (2.0.1) computes for a NeMo CTC model (OfflineRecognizer.from_nemo_ctc
# with normalize_type=per_feature): kaldi-native-fbank with a periodic Hann window over 25 ms,
# zero-padded to a 512-point FFT, pre-emphasis 0.97 inside each frame, no DC removal, Kaldi
# framing with mirrored edges, Slaney mel 0 Hz - Nyquist, log(mel + 2^-24), then per-feature
# normalisation with the population std. Read back from sherpa-onnx itself with a probe model that
# returns its input (tests/test_sherpa_frontend.py): max abs difference 3.2e-5 on synthetic speech,
# 4.9e-4 on 8 kHz recordings (in the empty bands above 4 kHz, where normalisation magnifies rounding).
SHERPA_PRESET: dict[str, Any] = {
    "n_fft": 512,
    "win_length": 400,
    "hop_length": 160,
    "n_mels": 80,
    "f_min": 0.0,
    "f_max": None,
    "log_floor": 2.0**-24,
    "log_floor_mode": "add",
    "preemphasis": 0.97,
    "framing": "kaldi",
    "center": False,
    "normalize": "per_feature_sherpa",
}
PRESETS: dict[str, dict[str, Any]] = {"sherpa": SHERPA_PRESET}


@dataclass(frozen=True)
class FrontendConfig:
    """Everything that defines the features; stored in every checkpoint and read by exporters.

    Defaults: audio at `asrkd.contract.SAMPLE_RATE`, 25 ms Hann window, 10 ms hop, 80 Slaney mel
    bands from 0 Hz to Nyquist, power spectrum, natural log with a floor, per-utterance mean/std
    normalisation of each mel band. `LogMel` turns ``[B, N]`` samples at ``sample_rate`` into
    ``[B, num_frames(N), n_mels]`` frames; a checkpoint's `asrkd.contract.Contract` holds its
    config, and every stage that feeds the model audio reads ``sample_rate`` from there.

    ``FrontendConfig.preset("sherpa")`` (in a TrainConfig: ``frontend: {preset: sherpa}``) is
    sherpa-onnx's NeMo front end (`SHERPA_PRESET`).
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2
    log_floor: float = DEFAULT_LOG_FLOOR
    normalize: str = "per_feature"  # "per_feature" | "none"
    # Input level: "rms" scales each utterance to `level_dbfs` RMS before the log floor (gain at most
    # MAX_LEVEL_GAIN_DB); "none" leaves the recording level alone. See `LogMel`.
    level: str = "none"
    level_dbfs: float = -20.0
    center: bool = True  # librosa framing only
    # Pre-emphasis x[n] - c * x[n - 1] inside each frame, x[0] * (1 - c) first (Kaldi's); 0: none.
    preemphasis: float = 0.0
    # "librosa" (frames by `center`) or "kaldi" (snip_edges=false: mirrored edges, see the module).
    framing: str = "librosa"
    # "max": log(max(mel, log_floor)); "add": log(mel + log_floor) (NeMo's and sherpa-onnx's).
    log_floor_mode: str = "max"

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> FrontendConfig:
        """The front end called ``name`` in `PRESETS` (``"sherpa"``), with ``overrides``."""
        if name not in PRESETS:
            raise ValueError(f"unknown FrontendConfig preset {name!r}; known presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def matches_preset(self, name: str) -> bool:
        """Whether this config computes exactly the features of preset ``name`` (at any sample rate
        and mel count the preset's consumer accepts: sherpa-onnx takes both as options)."""
        keep = {"sample_rate": self.sample_rate, "n_mels": self.n_mels}
        return self == FrontendConfig.preset(name, **keep)

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"FrontendConfig.{name} must be a positive int, got {value!r}")
        if self.win_length > self.n_fft:
            raise ValueError(
                f"FrontendConfig.win_length ({self.win_length}) must be <= n_fft ({self.n_fft})"
            )
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0 <= self.f_min < f_max <= nyquist:
            raise ValueError(
                f"FrontendConfig needs 0 <= f_min < f_max <= sample_rate / 2 = {nyquist:g}, "
                f"got f_min={self.f_min}, f_max={self.f_max}"
            )
        if not (self.log_floor > 0 and math.isfinite(self.log_floor)):
            raise ValueError(f"FrontendConfig.log_floor must be > 0, got {self.log_floor!r}")
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(
                f"FrontendConfig.normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}"
            )
        if self.level not in LEVEL_MODES:
            raise ValueError(f"FrontendConfig.level must be one of {LEVEL_MODES}, got {self.level!r}")
        if not (math.isfinite(self.level_dbfs) and self.level_dbfs <= 0):
            raise ValueError(f"FrontendConfig.level_dbfs must be <= 0 dBFS, got {self.level_dbfs!r}")
        if not 0 <= self.preemphasis < 1:
            raise ValueError(f"FrontendConfig.preemphasis must be in [0, 1), got {self.preemphasis!r}")
        if self.framing not in FRAMINGS:
            raise ValueError(f"FrontendConfig.framing must be one of {FRAMINGS}, got {self.framing!r}")
        if self.log_floor_mode not in LOG_FLOOR_MODES:
            raise ValueError(
                f"FrontendConfig.log_floor_mode must be one of {LOG_FLOOR_MODES}, got {self.log_floor_mode!r}"
            )

    def num_frames(self, num_samples: int) -> int:
        """Frames for ``num_samples`` samples: ``1 + num_samples // hop_length`` (center, even n_fft;
        the module docstring gives the others)."""
        if self.framing == "kaldi":
            return (num_samples + self.hop_length // 2) // self.hop_length
        if self.center:
            padded = num_samples + 2 * (self.n_fft // 2)
        else:
            padded = num_samples
        return max(0, 1 + (padded - self.n_fft) // self.hop_length)

    @property
    def frame_shift_seconds(self) -> float:
        """Seconds between two feature frames (``hop_length / sample_rate``)."""
        return self.hop_length / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (what a checkpoint's config.json stores under ``frontend``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrontendConfig:
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys are an error.
        A ``preset`` key (a TrainConfig's ``frontend: {preset: sherpa}``) starts from that preset;
        the other keys override it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"preset"})
        if unknown:
            raise ValueError(
                f"unknown FrontendConfig field(s) {unknown}; known fields: {sorted(known)} and preset"
            )
        fields = {k: v for k, v in d.items() if k != "preset"}
        return cls.preset(d["preset"], **fields) if "preset" in d else cls(**fields)


def dft_basis(n_fft: int, win_length: int, preemphasis: float = 0.0, kaldi: bool = False) -> np.ndarray:
    """Windowed real DFT as conv1d weights: ``float32 [2 * (n_fft // 2 + 1), 1, K]``.

    Rows ``k`` hold ``w[n] cos(2 pi k n / n_fft)``, rows ``n_freq + k`` hold ``-w[n] sin(...)``,
    so ``conv1d`` gives the real and imaginary parts of ``rfft(frame * w)``. The window is a
    periodic Hann of ``win_length``: centred in ``K = n_fft`` taps (librosa's ``get_window`` +
    ``pad_center``), or with ``kaldi`` at the start of the ``n_fft``-point frame, whose zero
    padding adds nothing, so ``K = win_length`` taps. ``preemphasis`` c folds Kaldi's per-frame
    pre-emphasis into the taps (the basis times the bidiagonal matrix that maps a frame x to
    ``x[n] - c x[n - 1]``, ``(1 - c) x[0]``). Built in float64 with the phase reduced exactly
    (``k * n mod n_fft``) and only then cast, so the basis itself adds no error beyond one fp32
    rounding per weight.
    """
    # Periodic Hann, as scipy.signal.get_window("hann", win_length, fftbins=True) that librosa
    # uses; written out because importing scipy.signal costs ~2 s.
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    if not kaldi:
        left = (n_fft - win_length) // 2
        window = np.pad(window, (left, n_fft - win_length - left))
    k = np.arange(n_fft // 2 + 1)[:, None]
    phase = 2 * np.pi * ((k * np.arange(len(window))[None, :]) % n_fft) / n_fft
    basis = np.concatenate([np.cos(phase) * window, -np.sin(phase) * window])
    if preemphasis:
        folded = basis.copy()
        folded[:, 0] *= 1.0 - preemphasis
        folded[:, :-1] -= preemphasis * basis[:, 1:]
        basis = folded
    return basis[:, None, :].astype(np.float32)


class LogMel(nn.Module):
    """Log-mel features of a padded batch, exportable to ONNX, TFLite and Core ML.

    ``forward(wav [B, N] float32, lengths [B] int64) -> (feats [B, T, n_mels], frame_lengths [B])``
    with ``T = config.num_frames(N)`` and ``frame_lengths[b] = config.num_frames(lengths[b])``.
    Samples at or beyond ``lengths[b]`` are ignored, so each row equals that utterance computed
    alone (exactly in float64; in float32 the CPU conv kernel for one utterance rounds differently
    from the one for a batch, by up to ~5e-5 in the log of bands ~50 dB below the frame's loudest);
    frames at or beyond ``frame_lengths[b]`` are 0. Works in the module's dtype (``.double()``).
    """

    def __init__(self, config: FrontendConfig | None = None):
        super().__init__()
        self.config = config = config or FrontendConfig()
        with warnings.catch_warnings():  # librosa warns of empty bands; we raise below instead
            warnings.filterwarnings("ignore", message="Empty filters detected")
            mel_fb = librosa.filters.mel(
                sr=config.sample_rate,
                n_fft=config.n_fft,
                n_mels=config.n_mels,
                fmin=config.f_min,
                fmax=config.f_max,
                htk=False,
                norm="slaney",
                dtype=np.float32,
            )
        empty = np.flatnonzero(mel_fb.max(axis=1) == 0)
        if empty.size:
            raise ValueError(
                f"{config.n_mels} mel bands are too many for n_fft={config.n_fft} between "
                f"{config.f_min} and {config.f_max} Hz: bands {empty.tolist()} cover no FFT bin; "
                "use fewer n_mels or a larger n_fft"
            )
        # Derived from the config, which checkpoints store: not part of the state dict.
        self.register_buffer("mel_fb", torch.from_numpy(mel_fb), persistent=False)
        self.register_buffer(
            "dft_basis",
            torch.from_numpy(
                dft_basis(config.n_fft, config.win_length, config.preemphasis, config.framing == "kaldi")
            ),
            persistent=False,
        )
        self.n_freq = config.n_fft // 2 + 1
        self.pad = config.n_fft // 2 if config.center and config.framing == "librosa" else 0

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """``[B] int64`` valid frames per utterance (`FrontendConfig.num_frames`, as tensor ops)."""
        c = self.config
        if c.framing == "kaldi":
            return (lengths + c.hop_length // 2).div(c.hop_length, rounding_mode="floor")
        return torch.clamp(
            (lengths + 2 * self.pad - c.n_fft).div(c.hop_length, rounding_mode="floor") + 1, min=0
        )

    def forward(self, wav: Tensor, lengths: Tensor, mel_fb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``mel_fb`` replaces the mel filterbank, one per utterance ``[B, n_mels, n_fft // 2 + 1]``
        (training only: `vtlp_mel_filterbank`); exported graphs never pass it."""
        c = self.config
        wav = wav.to(self.dft_basis.dtype)
        samples = torch.arange(wav.shape[1], device=wav.device)
        wav = torch.where(samples.unsqueeze(0) < lengths.unsqueeze(1), wav, 0.0)
        if c.framing == "kaldi":
            framed = self._kaldi_signal(wav, lengths)
        elif self.pad:
            wav = framed = F.pad(wav, (self.pad, self.pad))  # zeros, as librosa's pad_mode="constant"
        else:
            framed = wav

        spec = F.conv1d(framed.unsqueeze(1), self.dft_basis, stride=c.hop_length)  # [B, 2F, T]
        real, imag = spec[:, : self.n_freq], spec[:, self.n_freq :]
        power = real * real + imag * imag  # [B, F, T]
        fb = self.mel_fb if mel_fb is None else mel_fb.to(power.dtype)
        mel = torch.matmul(fb, power)  # [B, n_mels, T]
        if c.level == "rms":
            mel = mel * self._level_gain(wav, lengths).reshape(-1, 1, 1)
        if c.log_floor_mode == "add":
            logmel = torch.log(mel + c.log_floor)
        else:
            logmel = torch.log(torch.clamp(mel, min=c.log_floor))

        frame_lengths = self.frame_lengths(lengths)
        frames = torch.arange(logmel.shape[2], device=logmel.device)
        valid = (frames.unsqueeze(0) < frame_lengths.unsqueeze(1)).unsqueeze(1)  # [B, 1, T]
        if c.normalize == "per_feature":
            logmel = _normalize_per_feature(logmel, valid, frame_lengths)
        elif c.normalize == "per_feature_sherpa":
            logmel = _normalize_per_feature(logmel, valid, frame_lengths, ddof=0, std_eps=_SHERPA_STD_EPS)
        else:
            logmel = torch.where(valid, logmel, 0.0)
        return logmel.transpose(1, 2), frame_lengths  # [B, T, n_mels], [B]

    def _kaldi_signal(self, wav: Tensor, lengths: Tensor) -> Tensor:
        """``[B, N] -> [B, (T - 1) * hop + win]``: the samples Kaldi's frames read, frame ``t``
        starting at ``t * hop + hop // 2 - win // 2`` of the signal mirrored at both ends of each
        utterance (``-1 -> 0``, ``n -> n - 1``; one reflection, enough for ``n >= win // 2``),
        ``T`` the longest utterance's frame count (at least 1)."""
        c = self.config
        frames = max(1, (wav.shape[1] + c.hop_length // 2) // c.hop_length)
        offset = c.win_length // 2 - c.hop_length // 2
        pos = torch.arange((frames - 1) * c.hop_length + c.win_length, device=wav.device) - offset
        n = lengths.unsqueeze(1)  # [B, 1]
        index = torch.where(pos < 0, -pos - 1, pos).unsqueeze(0)  # [1, L]
        index = torch.where(index >= n, 2 * n - 1 - index, index)  # [B, L]
        index = index.clamp(min=0, max=wav.shape[1] - 1)
        return torch.gather(wav, 1, index)

    def _level_gain(self, wav: Tensor, lengths: Tensor) -> Tensor:
        """``[B]`` power gain that brings each utterance's RMS over its valid samples to
        ``level_dbfs``, capped at MAX_LEVEL_GAIN_DB so that near-silence is not blown up to speech
        level. Applied to the mel power (the same as scaling the samples, for N times fewer
        multiplications). ``wav`` is the zero-padded batch: padding adds nothing to the sum."""
        c = self.config
        n = lengths.clamp(min=1).to(wav.dtype)
        mean_square = (wav * wav).sum(dim=1) / n  # [B]
        target = 10.0 ** (c.level_dbfs / 10.0)  # mean square of the target level
        floor = target * 10.0 ** (-MAX_LEVEL_GAIN_DB / 10.0)
        return target / torch.clamp(mean_square, min=floor)


def vtlp_warp(freqs: Tensor, alphas: Tensor, nyquist: float, boundary: float = VTLP_BOUNDARY) -> Tensor:
    """Vocal tract length perturbation's frequency warp (Jaitly & Hinton, 2013): ``[B, F]``, the
    frequencies ``freqs [F]`` (Hz) moved to ``alpha * f`` up to ``f0 = boundary * nyquist *
    min(alpha, 1) / alpha`` and then linearly to the Nyquist frequency, which stays put, so that
    no band is pushed out of range or left empty."""
    alphas = alphas.to(freqs.dtype).reshape(-1, 1)  # [B, 1]
    f0 = boundary * nyquist * torch.clamp(alphas, max=1.0) / alphas
    upper = nyquist - (nyquist - alphas * f0) / (nyquist - f0) * (nyquist - freqs)
    return torch.where(freqs <= f0, alphas * freqs, upper)


def vtlp_mel_filterbank(config: FrontendConfig, alphas: Tensor) -> Tensor:
    """Mel filterbanks ``[B, n_mels, n_fft // 2 + 1]`` that read the power at FFT bin frequency f
    as if it were at ``vtlp_warp(f, alphas[b])``: with ``alpha > 1`` formants move up (a shorter
    vocal tract), with ``alpha < 1`` down. ``alpha == 1`` gives `LogMel`'s own filterbank (the
    same slaney-normalised triangles as ``librosa.filters.mel``, computed for warped bin
    frequencies). Pass the result as ``LogMel(...)(wav, lengths, mel_fb=...)``."""
    f_max = config.sample_rate / 2 if config.f_max is None else config.f_max
    mel_f = torch.from_numpy(
        librosa.mel_frequencies(config.n_mels + 2, fmin=config.f_min, fmax=f_max, htk=False)
    )  # float64, band edges and centres
    freqs = torch.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1, dtype=torch.float64)
    warped = vtlp_warp(freqs, alphas.to(torch.float64), config.sample_rate / 2)  # [B, F]
    fdiff = mel_f.diff()
    ramps = mel_f.reshape(1, -1, 1) - warped.unsqueeze(1)  # [B, n_mels + 2, F]
    lower = -ramps[:, :-2] / fdiff[:-1].reshape(1, -1, 1)
    upper = ramps[:, 2:] / fdiff[1:].reshape(1, -1, 1)
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    enorm = 2.0 / (mel_f[2:] - mel_f[:-2])
    return (weights * enorm.reshape(1, -1, 1)).to(torch.float32)


def _normalize_per_feature(logmel: Tensor, valid: Tensor, frame_lengths: Tensor, ddof: int = 1,
                           std_eps: float | None = None) -> Tensor:
    """Zero mean, unit std of each band over the valid frames of each utterance, as NeMo's
    ``per_feature``. ``logmel [B, n_mels, T]``, ``valid [B, 1, T]``; 0 beyond the valid frames.
    The std divides by ``n - ddof``; it is floored at `_STD_FLOOR`, or with ``std_eps`` that is
    added to it instead (sherpa-onnx: ``ddof=0``, ``std + 1e-5``)."""
    n = frame_lengths.clamp(min=1).to(logmel.dtype).reshape(-1, 1, 1)  # [B, 1, 1]
    mean = torch.where(valid, logmel, 0.0).sum(dim=2, keepdim=True) / n  # [B, n_mels, 1]
    centered = torch.where(valid, logmel - mean, 0.0)
    var = (centered * centered).sum(dim=2, keepdim=True) / (n - ddof).clamp(min=1)
    if std_eps is not None:
        return centered / (var.sqrt() + std_eps)
    return centered / var.sqrt().clamp(min=_STD_FLOOR)
