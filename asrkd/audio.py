"""Audio I/O: any soundfile format in, float32 mono at the requested sample rate out.

The default rate is the project's, `asrkd.contract.SAMPLE_RATE` (re-exported here as
``asrkd.audio.SAMPLE_RATE``); a stage that feeds one model passes that model's rate instead
(``Contract.sample_rate``, ``Teacher.sample_rate``).
"""

from __future__ import annotations

import os
import struct
import uuid
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from asrkd.contract import SAMPLE_RATE
from asrkd.errors import AsrkdError

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "TruncatedAudioWarning",
    "audio_duration",
    "load_audio",
    "resample",
    "wav_truncation",
    "write_wav",
]

PathLike = str | os.PathLike


class AudioError(AsrkdError, ValueError):
    """An audio file that cannot be used; the message names the file and the fault."""


class TruncatedAudioWarning(UserWarning):
    """`load_audio` read a WAV file that holds less audio than its header declares."""


def load_audio(
    path: PathLike,
    sample_rate: int = SAMPLE_RATE,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Read a file (or the part ``[offset, offset + duration)`` seconds of it) as mono audio.

    Channels are averaged, integer PCM is scaled to [-1, 1), and the result is resampled to
    ``sample_rate`` with soxr "HQ". Only the requested frames are decoded. Float files are passed
    through unclipped.

    Returns:
        ``float32`` array of shape ``[N]``, ``N = round(frames_read * sample_rate / file_rate)``.

    Raises:
        AudioError: missing, unreadable or corrupt file, no samples, NaN/inf samples, or
            ``offset`` at or beyond the end of the file.

    Warns:
        TruncatedAudioWarning: a WAV file cut short (`wav_truncation`); what it holds is read.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0 seconds, got {offset}")
    if duration is not None and duration <= 0:
        raise ValueError(f"duration must be > 0 seconds or None, got {duration}")
    path = Path(path)
    with _open(path) as f:
        file_rate, total = f.samplerate, f.frames
        if total == 0:
            raise AudioError(f"{path}: empty audio file (0 samples)")
        start = round(offset * file_rate)
        if start >= total:
            raise AudioError(
                f"{path}: offset {offset:.3f} s is at or beyond the end of the audio "
                f"({total / file_rate:.3f} s)"
            )
        count = (
            total - start if duration is None else min(round(duration * file_rate), total - start)
        )
        try:
            f.seek(start)
            frames = f.read(count, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as e:
            raise AudioError(f"{path}: cannot decode audio: {e}") from e
    if frames.shape[0] == 0:
        raise AudioError(f"{path}: no samples in the requested segment")
    truncation = wav_truncation(path)
    if truncation is not None:
        warnings.warn(f"{path}: {truncation}", TruncatedAudioWarning, stacklevel=2)
    wav = frames.mean(axis=1, dtype=np.float32)
    bad = ~np.isfinite(wav)
    if bad.any():
        first = int(np.argmax(bad)) + start
        raise AudioError(
            f"{path}: {int(bad.sum())} non-finite (NaN/inf) samples, the first at "
            f"{first / file_rate:.3f} s"
        )
    return resample(wav, file_rate, sample_rate)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``wav`` (``[N]`` or ``[N, C]``) with soxr "HQ".

    Returns ``float32`` of shape ``[round(N * target_sr / orig_sr)]`` (``[..., C]`` kept); the
    input itself (as float32) when the rates are equal.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    wav = np.asarray(wav, dtype=np.float32)
    if orig_sr == target_sr:
        return wav
    return soxr.resample(wav, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def write_wav(path: PathLike, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write ``wav`` (``[N]`` mono or ``[N, C]``, float in [-1, 1]) as a 16-bit PCM WAV.

    Values outside [-1, 1] are clipped. Parent folders are created. The file appears atomically:
    it is written next to ``path`` under a temporary name, then renamed over it, so a reader never
    sees half a file.
    """
    path = Path(path)
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim not in (1, 2):
        raise ValueError(f"{path}: expected audio of shape [N] or [N, C], got {wav.shape}")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: refusing to write non-finite (NaN/inf) samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        sf.write(tmp, np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def audio_duration(path: PathLike) -> float:
    """Duration in seconds, read from the file header only (nothing is decoded)."""
    path = Path(path)
    with _open(path) as f:
        return f.frames / f.samplerate


def wav_truncation(path: PathLike) -> str | None:
    """Why a WAV file is cut short, or None: its header declares more sample data than the file
    holds (a copy or download that stopped early). Reads the RIFF chunk headers only.

    libsndfile quietly reads what is there, so the length it reports is the shorter one and a
    transcript of the whole clip would be scored against part of it. None for a whole WAV, for
    other formats, and for a header whose data size is a placeholder (0 or 0xFFFFFFFF, as
    streaming writers leave it).
    """
    try:
        with open(os.fsencode(path), "rb") as f:
            riff = f.read(12)
            if riff[:4] not in (b"RIFF", b"RIFX") or riff[8:12] != b"WAVE":
                return None
            endian = "<" if riff[:4] == b"RIFF" else ">"  # RIFX is RIFF big-endian
            block_align = 0
            while len(header := f.read(8)) == 8:
                chunk, size = header[:4], struct.unpack(endian + "I", header[4:])[0]
                if chunk == b"data":
                    held = os.fstat(f.fileno()).st_size - f.tell()
                    if size in (0, 0xFFFFFFFF) or size <= held or not block_align:
                        return None
                    return (f"truncated: the header declares {size // block_align} sample frames, the "
                            f"file holds {held // block_align} ({held} of {size} data bytes)")
                body = f.read(size) if chunk == b"fmt " else b""
                if len(body) >= 14:  # WAVEFORMATEX: format, channels, rate, bytes/s, block align
                    block_align = struct.unpack(endian + "H", body[12:14])[0]
                f.seek(size - len(body) + (size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
    except OSError:
        return None
    return None


def _open(path: Path) -> sf.SoundFile:
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        # A bytes path: soundfile encodes a str path strictly, which fails on a file name that is
        # not valid UTF-8 (os.fsdecode gave it surrogates); the OS's own bytes open it as named.
        return sf.SoundFile(os.fsencode(path))
    except (sf.SoundFileError, RuntimeError) as e:
        raise AudioError(f"{path}: unreadable or corrupt audio: {e}") from e
