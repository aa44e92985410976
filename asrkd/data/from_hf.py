"""Hugging Face ``datasets`` splits with an ``Audio`` column as utterances (extra ``hf``).

A folder written by ``save_to_disk`` (opened with ``load_from_disk``: memory-mapped, never
downloaded) or a `datasets.Dataset` / ``DatasetDict`` object. Each row becomes an `Utterance`:

* audio stored as bytes in the dataset (what ``save_to_disk`` and the Hub's Parquet files
  hold): `Utterance.audio` is an `HFAudio` that reads the row's bytes from the dataset and
  decodes them with soundfile when `AudioDataset` asks, exactly as a file is read (no copy to
  disk, nothing decoded up front); `audio_filepath` only names it, ``DATASET#ROW``;
* audio stored as a path only: the file itself, read in place (relative paths start from the
  dataset's folder);
* ``text_column`` gives the transcript (``None``/null: unlabelled audio), ``speaker_column``
  and ``id_column`` the speaker and utt_id (default ``STEM-ROW``, ``ROW`` without a file name),
  ``duration_column`` the duration in seconds (else it is read from the audio's header).

Rows are read in batches with audio decoding off: ``datasets`` would decode every row through
torchcodec, which this project does not use. Only the utterances' metadata is kept.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from asrkd.audio import AudioError, audio_duration, resample
from asrkd.data.manifest import ManifestError, Utterance
from asrkd.data.sources import SourceItem

__all__ = ["HFAudio", "hf_items"]

_BATCH_ROWS = 256  # rows read per Arrow batch: metadata only, the audio bytes are dropped at once


@dataclass(eq=False)
class HFAudio:
    """The encoded audio of one row of a dataset, decoded on access (see `EncodedAudio`).

    ``dataset`` holds only the audio column, with decoding off; a memory-mapped dataset pickles
    by file reference, so DataLoader workers share it rather than copy it.
    """

    dataset: Any
    column: str
    row: int
    name: str

    def encoded(self) -> bytes:
        """The row's audio bytes as stored (WAV, FLAC, MP3, ...)."""
        return self.dataset[self.row][self.column]["bytes"]

    def length(self) -> float:
        """Duration in seconds from the header."""
        return _header_length(self.encoded(), self.name)

    def load(self, sample_rate: int, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
        """``[offset, offset + duration)`` seconds as float32 mono ``[N]`` at ``sample_rate``,
        read as `asrkd.audio.load_audio` reads a file (channels averaged, soxr HQ)."""
        try:
            with sf.SoundFile(io.BytesIO(self.encoded())) as f:
                rate, total = f.samplerate, f.frames
                start = round(offset * rate)
                count = total - start if duration is None else min(round(duration * rate), total - start)
                f.seek(start)
                frames = f.read(max(count, 0), dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as e:
            raise AudioError(f"{self.name}: cannot decode audio: {e}") from e
        if frames.shape[0] == 0:
            raise AudioError(f"{self.name}: no samples in the requested segment")
        wav = frames.mean(axis=1, dtype=np.float32)
        if not np.isfinite(wav).all():
            raise AudioError(f"{self.name}: non-finite (NaN/inf) samples")
        return resample(wav, rate, sample_rate)


def _header_length(data: bytes, name: str) -> float:
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.SoundFileError, RuntimeError) as e:
        raise AudioError(f"{name}: unreadable or corrupt audio: {e}") from e
    return info.frames / info.samplerate


def hf_items(
    location: Any,
    split: str | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
    speaker_column: str | None = None,
    id_column: str | None = None,
    duration_column: str | None = None,
) -> Iterator[SourceItem]:
    """The rows of a dataset folder or object as items; ``text_column=""``: unlabelled.

    Raises:
        ManifestError: datasets is not installed, the folder holds no dataset, the split or a
            column is missing, or the audio column is not an ``Audio`` feature.
    """
    datasets = _datasets()
    dataset, root = _split(datasets, location, split)
    columns = _Columns(audio_column, text_column, speaker_column, id_column, duration_column)
    missing = [c for c in columns.named() if c not in dataset.column_names]
    if missing:
        raise ManifestError(f"{root}: no column(s) {missing}; the dataset has {dataset.column_names}: name "
                            "yours with audio_column, text_column (null for unlabelled audio), ...")
    feature = dataset.features[audio_column]
    if not isinstance(feature, datasets.Audio):
        raise ManifestError(f"{root}: column {audio_column!r} is {feature}, not Audio; cast it "
                            f"(dataset.cast_column({audio_column!r}, datasets.Audio()))")
    encoded = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    folder = Path(location) if isinstance(location, str | os.PathLike) else Path.cwd()
    reader = _RowReader(columns, encoded.select_columns([audio_column]), root, folder)
    return reader.items(encoded.select_columns(columns.named()))


@dataclass(frozen=True)
class _Columns:
    """The dataset's column for each field of an utterance ("" or None: no such column)."""

    audio: str
    text: str | None
    speaker: str | None
    utt_id: str | None
    duration: str | None

    def named(self) -> list[str]:
        return [c for c in dict.fromkeys((self.audio, self.text, self.speaker, self.utt_id, self.duration)) if c]


@dataclass(frozen=True)
class _RowReader:
    """Rows -> items. ``audio_only``: the dataset `HFAudio` reads bytes from; ``root`` names the
    dataset in messages; ``folder``: where relative audio paths start."""

    columns: _Columns
    audio_only: Any
    root: str
    folder: Path

    def items(self, rows) -> Iterator[SourceItem]:
        row = 0
        for batch in rows.iter(batch_size=_BATCH_ROWS):
            for j in range(len(batch[self.columns.audio])):
                yield self.item(row, {c: values[j] for c, values in batch.items()})
                row += 1

    def item(self, row: int, values: dict[str, Any]) -> SourceItem:
        c = self.columns

        def bad(kind: str, message: str) -> SourceItem:
            return SourceItem(row + 1, f"row {row}", problem=(kind, message))

        cell = values[c.audio] or {}
        data, path = cell.get("bytes"), cell.get("path")
        if not data and not path:
            return bad("missing_field", f"no audio in column {c.audio!r}")
        text = values[c.text] if c.text else None
        if text is not None and not isinstance(text, str):
            return bad("bad_field", f"{c.text!r} is {text!r}; expected a string (or None)")
        fields = {}
        for key, column in (("speaker", c.speaker), ("utt_id", c.utt_id)):
            value = values[column] if column else None
            if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
                return bad("bad_field", f"{column!r} is {value!r}; expected a string or an integer")
            fields[key] = None if value is None else str(value)
        audio = HFAudio(self.audio_only, c.audio, row, f"{self.root}#{row}") if data else None
        audio_path = audio.name if audio else os.path.join(self.folder, os.path.expanduser(path))
        try:
            if c.duration:
                duration = values[c.duration]
                if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration):
                    return bad("bad_field", f"{c.duration!r} is {duration!r}; expected seconds")
            elif audio:
                duration = _header_length(data, audio.name)
            else:
                duration = audio_duration(audio_path)
        except AudioError as e:
            missing = audio is None and not os.path.isfile(audio_path)
            return bad("missing_audio" if missing else "unreadable_audio", str(e))
        if not duration > 0:
            return bad("bad_field", f"duration is {duration}; expected > 0 seconds")
        utt_id = fields["utt_id"] or (f"{Path(path).stem}-{row}" if path else str(row))
        return SourceItem(row + 1, f"row {row}", Utterance(audio_path, text, float(duration), fields["speaker"],
                                                           utt_id=utt_id, audio=audio))


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ManifestError("reading Hugging Face datasets needs datasets: pip install 'asrkd[hf]'") from None
    return datasets


def _split(datasets, location: Any, split: str | None):
    """(the Dataset of ``split``, a name for it in messages) from a folder or an object."""
    if isinstance(location, str | os.PathLike):
        folder = Path(location)
        if not folder.is_dir():
            raise ManifestError(f"{folder}: no such dataset folder (a folder written by save_to_disk)")
        try:
            dataset = datasets.load_from_disk(str(folder))
        except (FileNotFoundError, ValueError) as e:
            raise ManifestError(f"{folder}: not a dataset written by save_to_disk ({e})") from None
        root = str(folder.absolute())
    else:
        dataset = location
        files = getattr(dataset, "cache_files", None)
        root = str(Path(files[0]["filename"]).parent) if isinstance(files, list) and files else "dataset"
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ManifestError(f"{root}: {'no split ' + repr(split) if split else 'give split'}; "
                                f"its splits are {sorted(dataset)}")
        return dataset[split], f"{root}/{split}"
    if not isinstance(dataset, datasets.Dataset):
        raise ManifestError(f"{root}: a {type(dataset).__name__} cannot be read by row; give a Dataset "
                            "saved to disk (an IterableDataset: save it with save_to_disk first)")
    if split is not None:
        raise ManifestError(f"{root}: a single split, not a DatasetDict; remove split: {split}")
    return dataset, root
