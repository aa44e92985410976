"""Manifests: NeMo-style JSONL, one utterance per line, read into `Utterance`s and written back.

::

    {"audio_filepath": "audio/a.wav", "text": "two three", "duration": 1.88, "speaker": "s1"}

`audio_filepath` is absolute, or relative to the manifest's folder (or to the dataset root above
it, for manifests kept in a subfolder as FSDD's `manifests/` are: see `_audio_root`);
`duration` is in seconds; optional `offset` (seconds) and `duration` select a segment of a longer
file; `text` may be absent or null for unlabelled audio (distillation needs no labels); `utt_id`
(or `id`) names the utterance; every other field is kept in `Utterance.extra` and written back
unchanged.

`read_manifest` validates the structure and stops at the first bad line; `asrkd.data.check`
also opens every audio header and reports every problem of every line.

Both also take a data source spec instead of a path (`lhotse:cuts.jsonl.gz`,
`hf:DATASET_DIR?split=train`, see `asrkd.data.sources`), so every command that reads a manifest
reads Lhotse and Hugging Face corpora too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from asrkd.errors import AsrkdError
from asrkd.fileio import atomic_write_text

_STANDARD_KEYS = ("audio_filepath", "text", "duration", "offset", "speaker", "utt_id", "id")
# A string that starts with one of these names a data source, not a manifest file.
SOURCE_PREFIXES = ("lhotse:", "hf:")


def is_source_spec(path: Any) -> bool:
    """True if ``path`` is a data source spec (``lhotse:...``, ``hf:...``) rather than a file path."""
    return isinstance(path, str) and path.startswith(SOURCE_PREFIXES)


class ManifestError(AsrkdError, ValueError):
    """A manifest that cannot be read; the message starts with `path:line:`."""


class EncodedAudio(Protocol):
    """Audio held by a data source rather than in a file of its own (a Hugging Face dataset's
    bytes), decoded when it is read."""

    def load(self, sample_rate: int, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
        """The part ``[offset, offset + duration)`` seconds as float32 mono ``[N]`` at ``sample_rate``
        (as `asrkd.audio.load_audio` reads a file); raises `asrkd.audio.AudioError`."""
        ...

    def length(self) -> float:
        """Duration in seconds, from the header only; raises `asrkd.audio.AudioError`."""
        ...


@dataclass
class Utterance:
    """One utterance: a line of a manifest, a Lhotse cut or supervision, a dataset row.

    `audio_filepath` is absolute; `text` is None for unlabelled audio. `audio` is None for audio in a file (`audio_filepath`); otherwise the audio lives in the data
    source and `audio_filepath` only names it (`DATASET#ROW`).
    """

    audio_filepath: str
    text: str | None
    duration: float
    speaker: str | None = None
    offset: float = 0.0
    utt_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    audio: EncodedAudio | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.audio_filepath = os.path.abspath(os.fspath(self.audio_filepath))
        if not self.utt_id:
            self.utt_id = Path(self.audio_filepath).stem


class _LineError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


def _number(obj: dict, key: str, *, required: bool, minimum_exclusive: bool) -> float | None:
    if key not in obj or obj[key] is None:
        if required:
            raise _LineError("missing_field", f"missing {key!r}; add the length in seconds")
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _LineError("bad_field", f"{key!r} is {value!r}; expected a finite number of seconds")
    if value < 0 or (minimum_exclusive and value == 0):
        bound = "> 0" if minimum_exclusive else ">= 0"
        raise _LineError("bad_field", f"{key!r} is {value}; expected {bound} seconds")
    return float(value)


def _parse_line(raw: str, lineno: int, base_dir: Path) -> Utterance:
    """One JSONL line -> Utterance, or `_LineError(kind, message)`."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _LineError(
            "malformed_json", f"invalid JSON ({e.msg} at column {e.colno}); fix the line"
        ) from None
    if not isinstance(obj, dict):
        raise _LineError(
            "malformed_json", f"a line must be a JSON object, got {type(obj).__name__}"
        )
    path = obj.get("audio_filepath")
    if path is None:
        raise _LineError(
            "missing_field", "missing 'audio_filepath'; add the path to the audio file"
        )
    if not isinstance(path, str) or not path.strip():
        raise _LineError("bad_field", f"'audio_filepath' is {path!r}; expected a non-empty path")
    duration = _number(obj, "duration", required=True, minimum_exclusive=True)
    offset = _number(obj, "offset", required=False, minimum_exclusive=False) or 0.0
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise _LineError(
            "bad_field", f"'text' is {text!r}; expected a string (or null for unlabelled audio)"
        )
    speaker = obj.get("speaker")
    if speaker is not None:
        if isinstance(speaker, bool) or not isinstance(speaker, str | int):
            raise _LineError(
                "bad_field", f"'speaker' is {speaker!r}; expected a string or an integer"
            )
        speaker = str(speaker)
    utt_id = obj.get("utt_id", obj.get("id"))
    if utt_id is not None and (isinstance(utt_id, bool) or not isinstance(utt_id, str | int)):
        raise _LineError(
            "bad_field", f"utterance id is {utt_id!r}; expected a string or an integer"
        )
    audio = os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))
    if utt_id is None:
        utt_id = f"{Path(audio).stem}-{lineno}"
    extra = {k: v for k, v in obj.items() if k not in _STANDARD_KEYS}
    return Utterance(audio, text, duration, speaker, offset, str(utt_id), extra)  # type: ignore[arg-type]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest") from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e}); manifests are UTF-8 JSONL") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a folder; pass the .jsonl manifest file") from None


def _audio_root(manifest: Path, lines: Sequence[str], audio_root: str | os.PathLike | None) -> Path:
    """The folder relative `audio_filepath`s start from.

    `audio_root` when given; otherwise the manifest's own folder (NeMo's convention), unless
    none of the first relative paths exists there but they do under an ancestor folder: datasets
    often keep `manifests/` beside `audio/` with paths relative to the dataset root (FSDD does).
    One root serves the whole manifest, so a line never silently resolves elsewhere.
    """
    if audio_root is not None:
        return Path(audio_root).absolute()
    here = manifest.parent.absolute()
    probes: list[str] = []
    for raw in lines:
        if len(probes) == 10:
            break
        try:
            p = json.loads(raw).get("audio_filepath") if raw.strip() else None
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(p, str) and p and not os.path.isabs(os.path.expanduser(p)):
            probes.append(p)
    for root in (here, *here.parents):
        if any(os.path.isfile(root / p) for p in probes):
            return root
    return here


def read_manifest(
    path: str | os.PathLike, audio_root: str | os.PathLike | None = None
) -> list[Utterance]:
    """Read a JSONL manifest. Blank lines are skipped. Audio files are not opened.

    Relative audio paths start from `audio_root`, by default the manifest's folder (or the
    dataset root above it, see `_audio_root`). A data source spec (`is_source_spec`) is read
    with `asrkd.data.sources.read_source` instead (`audio_root` does not apply).

    Raises:
        ManifestError: `path:line: what is wrong; what to do` for the first bad line. Run
            `asrkd manifest check` to list every problem at once.
    """
    if is_source_spec(path):
        from asrkd.data.sources import read_source  # the sources read manifests: import late

        return read_source(path)
    return [u for _, u in read_numbered_manifest(path, audio_root)]


def read_numbered_manifest(
    path: str | os.PathLike, audio_root: str | os.PathLike | None = None
) -> list[tuple[int, Utterance]]:
    """`read_manifest` of a manifest file, each utterance with its 1-based line number."""
    path = Path(path)
    lines = _read_lines(path)
    base = _audio_root(path, lines, audio_root)
    utts = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            utts.append((lineno, _parse_line(raw, lineno, base)))
        except _LineError as e:
            raise ManifestError(
                f"{path}:{lineno}: {e.message} (run `asrkd manifest check {path}` to list every problem)"
            ) from None
    return utts


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> None:
    """Write `utts` as JSONL, atomically. Audio paths under the manifest's folder become relative.

    Raises:
        ManifestError: an utterance whose audio lives inside its data source (`Utterance.audio`),
            which a manifest cannot point at.
    """
    path = Path(path)
    base = path.parent.absolute()
    lines = []
    for u in utts:
        if u.audio is not None:
            raise ManifestError(
                f"{path}: utterance {u.utt_id!r} has no audio file of its own (its audio is held "
                f"by {u.audio_filepath}); a manifest can only point at files"
            )
        audio = Path(u.audio_filepath)
        rel = os.path.relpath(audio, base)
        obj: dict[str, Any] = {
            "audio_filepath": str(audio) if rel.split(os.sep, 1)[0] == os.pardir else rel,
        }
        if u.text is not None:
            obj["text"] = u.text
        obj["duration"] = u.duration
        if u.offset:
            obj["offset"] = u.offset
        if u.speaker is not None:
            obj["speaker"] = u.speaker
        obj["utt_id"] = u.utt_id
        obj.update((k, v) for k, v in u.extra.items() if k not in obj)
        lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))
