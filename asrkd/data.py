"""Manifests, the dataset, the bucketing sampler, collation and augmentation.

A manifest is NeMo-style JSONL, one utterance per line::

    {"audio_filepath": "audio/a.wav", "text": "two three", "duration": 1.88, "speaker": "s1"}

`audio_filepath` is absolute, or relative to the manifest's folder (or to the dataset root above
it, for manifests kept in a subfolder as FSDD's `manifests/` are: see `_audio_root`);
`duration` is in seconds; optional `offset` (seconds) and `duration` select a segment of a longer
file; `text` may be absent or null for unlabelled audio (distillation needs no labels); `utt_id`
(or `id`) names the utterance; every other field is kept in `Utterance.extra` and written back
unchanged.

`read_manifest` validates the structure and stops at the first bad line; `check_manifest` also
opens every audio header and reports every problem of every line (`asrkd manifest check`).

One batch, start to finish::

    utts = read_manifest("train.jsonl")
    ds = AudioDataset(utts, tokenizer=tok, transform=Compose([SpeedPerturb(), AddNoise()]))
    sampler = BucketingBatchSampler([u.duration for u in utts], max_batch_seconds=200, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    for epoch in range(n):
        sampler.set_epoch(epoch); ds.set_epoch(epoch)  # same seed + epoch -> same batches, same augmentation
        for batch in loader: ...
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from asrkd.audio import SAMPLE_RATE, AudioError, audio_duration, load_audio, resample
from asrkd.fileio import atomic_write_text
from asrkd.text import Tokenizer, UnknownCharactersError, normalize_text

# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------

_STANDARD_KEYS = ("audio_filepath", "text", "duration", "offset", "speaker", "utt_id", "id")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message starts with `path:line:`."""


@dataclass
class Utterance:
    """One line of a manifest. `audio_filepath` is absolute; `text` is None for unlabelled audio."""

    audio_filepath: str
    text: str | None
    duration: float
    speaker: str | None = None
    offset: float = 0.0
    utt_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.audio_filepath = os.path.abspath(os.fspath(self.audio_filepath))
        if not self.utt_id:
            self.utt_id = Path(self.audio_filepath).stem


@dataclass
class Problem:
    """One fault found by `check_manifest`. `line` is 1-based; 0 means the whole file."""

    line: int
    kind: str
    message: str


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
    dataset root above it, see `_audio_root`).

    Raises:
        ManifestError: `path:line: what is wrong; what to do` for the first bad line. Run
            `asrkd manifest check` to list every problem at once.
    """
    path = Path(path)
    lines = _read_lines(path)
    base = _audio_root(path, lines, audio_root)
    utts = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            utts.append(_parse_line(raw, lineno, base))
        except _LineError as e:
            raise ManifestError(
                f"{path}:{lineno}: {e.message} (run `asrkd manifest check {path}` to list every problem)"
            ) from None
    return utts


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> None:
    """Write `utts` as JSONL, atomically. Audio paths under the manifest's folder become relative."""
    path = Path(path)
    base = path.parent.absolute()
    lines = []
    for u in utts:
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


def _ctc_min_frames(ids: Sequence[int]) -> int:
    """Output frames CTC needs for `ids`: one per token plus a blank between repeated tokens."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:], strict=False) if a == b)


def check_manifest(
    path: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    duration_tolerance: float = 0.1,
    ctc_frame_rate: float | None = None,
    audio_root: str | os.PathLike | None = None,
) -> list[Problem]:
    """Validate every line of a manifest and return all problems found (empty list = clean).

    Kinds: `malformed_json`, `missing_field`, `bad_field`, `missing_audio`, `unreadable_audio`,
    `duration_mismatch` (|duration - (audio length - offset)| > tolerance, for a file that one
    line uses), `segment_past_end` (offset + duration beyond the audio, for a file that several
    lines cut into segments), `empty_text` (nothing left after `normalize_text`), `oov`
    (characters the tokenizer cannot represent, listed), `duplicate_id`, `duplicate_entry` (same
    audio, offset and duration twice), `ctc_infeasible` (with `ctc_frame_rate`, the model's
    output frames per second: the transcript needs more CTC frames than the audio yields), and
    for the file as a whole (line 0) `unreadable_manifest`, `empty_manifest`. A line without
    `text` is fine in an unlabelled manifest and a `missing_field` in a labelled one.

    Audio is never decoded: lengths come from file headers, so 2400 files take about a second.
    """
    path = Path(path)
    try:
        lines = _read_lines(path)
    except ManifestError as e:
        return [Problem(0, "unreadable_manifest", str(e).split(": ", 1)[-1])]
    base = _audio_root(path, lines, audio_root)
    problems: list[Problem] = []
    parsed: list[tuple[int, Utterance]] = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            parsed.append((lineno, _parse_line(raw, lineno, base)))
        except _LineError as e:
            problems.append(Problem(lineno, e.kind, e.message))
    if not parsed and not problems:
        return [
            Problem(0, "empty_manifest", "no utterances; a manifest has one JSON object per line")
        ]

    uses: dict[str, int] = {}
    for _, u in parsed:
        uses[u.audio_filepath] = uses.get(u.audio_filepath, 0) + 1
    labelled = sum(u.text is not None for _, u in parsed)
    lengths: dict[str, float | tuple[str, str]] = {}
    first_id: dict[str, int] = {}
    first_entry: dict[tuple[str, float, float], int] = {}
    for lineno, u in parsed:
        line_problems = _check_utterance(
            u, uses, lengths, tokenizer, duration_tolerance, ctc_frame_rate
        )
        if u.text is None and labelled:
            line_problems.append(
                (
                    "missing_field",
                    f"no 'text' while {labelled} other line(s) have one; add it, or keep "
                    "unlabelled audio in a manifest of its own (batches cannot mix the two)",
                )
            )
        if u.utt_id in first_id:
            line_problems.append(
                (
                    "duplicate_id",
                    f"utt_id {u.utt_id!r} is also used on line {first_id[u.utt_id]}; ids must be unique",
                )
            )
        else:
            first_id[u.utt_id] = lineno
        key = (u.audio_filepath, u.offset, u.duration)
        if key in first_entry:
            line_problems.append(
                (
                    "duplicate_entry",
                    f"same audio, offset and duration as line {first_entry[key]}; remove one",
                )
            )
        else:
            first_entry[key] = lineno
        problems.extend(Problem(lineno, k, m) for k, m in line_problems)
    problems.sort(key=lambda p: p.line)
    return problems


def _check_utterance(
    u: Utterance,
    uses: dict[str, int],
    lengths: dict[str, float | tuple[str, str]],
    tokenizer: Tokenizer | None,
    tolerance: float,
    ctc_frame_rate: float | None,
) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    audio = u.audio_filepath
    if audio not in lengths:
        if not os.path.isfile(audio):
            lengths[audio] = (
                "missing_audio",
                f"{audio} does not exist; fix the path or restore the file",
            )
        else:
            try:
                lengths[audio] = audio_duration(audio)
            except AudioError as e:
                lengths[audio] = (
                    "unreadable_audio",
                    f"{e}; re-encode it as WAV/FLAC or remove the line",
                )
    length = lengths[audio]
    if isinstance(length, tuple):
        found.append(length)
    elif uses[audio] == 1:
        expected = length - u.offset
        if abs(u.duration - expected) > tolerance:
            found.append(
                (
                    "duration_mismatch",
                    f"duration {u.duration:.3f} s but the audio is {length:.3f} s"
                    + (f" (minus offset {u.offset:.3f} s = {expected:.3f} s)" if u.offset else "")
                    + f", off by {u.duration - expected:+.3f} s (tolerance {tolerance} s); set duration to {expected:.4f}",
                )
            )
    elif u.offset + u.duration > length + tolerance:
        found.append(
            (
                "segment_past_end",
                f"segment {u.offset:.3f}-{u.offset + u.duration:.3f} s ends after the audio ({length:.3f} s)",
            )
        )

    if u.text is not None:
        norm = normalize_text(u.text)
        if not norm:
            found.append(
                (
                    "empty_text",
                    f"text {u.text!r} is empty after normalisation; transcribe it or remove the line",
                )
            )
        elif tokenizer is not None:
            unknown = tokenizer.unknown_characters(norm, normalize=False)
            if unknown:
                listed = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown)
                found.append(
                    (
                        "oov",
                        f"characters outside the vocabulary: {listed}; fix the text or extend the tokens",
                    )
                )
            elif ctc_frame_rate is not None:
                need = _ctc_min_frames(tokenizer.encode(norm, normalize=False))
                have = math.floor(u.duration * ctc_frame_rate)
                if need > have:
                    found.append(
                        (
                            "ctc_infeasible",
                            f"{need} CTC frames needed for the text, {u.duration:.3f} s gives {have} at {ctc_frame_rate} frames/s",
                        )
                    )
    return found


# ---------------------------------------------------------------------------------------------
# Dataset, sampler, collation
# ---------------------------------------------------------------------------------------------

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class AudioDataset(torch.utils.data.Dataset):
    """Utterances -> `{"wav", "tokens", "text", "utt_id", "speaker", "index"}`.

    `wav` is float32 `[N]` at `sample_rate` after `transform`; `tokens` is int64 `[U]` (None for
    unlabelled audio or without a tokenizer); `text` is the manifest text as written.

    Augmentation is reproducible: item `i` is transformed with
    `np.random.default_rng([seed, epoch, i])`, so the same (seed, epoch) gives the same audio in
    any worker, in any order, after a resume. The epoch lives in shared memory, so `set_epoch`
    also reaches persistent DataLoader workers (call it before iterating the epoch).

    `cache_audio` keeps each decoded waveform (before `transform`) in memory after its first
    read: for corpora that fit in RAM (each DataLoader worker holds its own copy).

    Every text is encoded once, here: characters outside the vocabulary fail now, listing the
    utterances, rather than in a worker mid-epoch.
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        sample_rate: int = SAMPLE_RATE,
        tokenizer: Tokenizer | None = None,
        transform: Transform | None = None,
        seed: int = 0,
        cache_audio: bool = False,
    ):
        self.utts = list(utts)
        self.sample_rate = sample_rate
        self.tokenizer = tokenizer
        self.transform = transform
        self.seed = seed
        self.cache_audio = cache_audio
        self._cache: dict[int, np.ndarray] = {}
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._tokens: list[list[int] | None] = [None] * len(self.utts)
        if tokenizer is not None:
            bad = []
            for i, u in enumerate(self.utts):
                if u.text is None:
                    continue
                try:
                    self._tokens[i] = tokenizer.encode(u.text)
                except UnknownCharactersError as e:
                    bad.append(f"{u.utt_id} {e.characters}")
            if bad:
                raise ValueError(
                    f"{len(bad)} utterance(s) have characters outside the vocabulary, e.g. "
                    f"{'; '.join(bad[:5])}; run `asrkd manifest check --tokens ...` to list them all"
                )

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        u = self.utts[index]
        wav = self._cache.get(index)
        if wav is None:
            wav = load_audio(
                u.audio_filepath, self.sample_rate, offset=u.offset, duration=u.duration
            )
            if self.cache_audio:
                self._cache[index] = wav
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            wav = self.transform(wav, rng)
        tokens = self._tokens[index]
        return {
            "wav": torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)),
            "tokens": None if tokens is None else torch.tensor(tokens, dtype=torch.long),
            "text": u.text,
            "utt_id": u.utt_id,
            "speaker": u.speaker,
            "index": index,
        }


class BucketingBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar-length utterances under a padded-duration budget; resumable; DDP-aware.

    Per epoch: sort by duration, cut into `num_buckets` equal-count buckets, shuffle inside each
    bucket, fill batches greedily while `longest * count <= max_batch_seconds` (a bucket's last,
    unfinished batch continues into the next bucket, so only the epoch's last batch is short),
    shuffle the batches. Everything is drawn from `np.random.default_rng([seed, epoch])`, so the
    batches are a function of (durations, seed, epoch, settings) alone.

    Ranks: the epoch's batches are split round-robin; the list is first padded with its own
    leading batches (or, with `drop_last`, cut) so that every rank gets the same number of
    steps. An utterance longer than `max_batch_seconds` gets a batch of its own (one warning).
    `shuffle=False` gives batches in ascending duration order (evaluation: least padding).
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        seed: int = 0,
        shuffle: bool = True,
        num_buckets: int = 10,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1 or len(self.durations) == 0:
            raise ValueError("durations must be a non-empty 1-D sequence of seconds")
        if not np.all(np.isfinite(self.durations)) or np.any(self.durations < 0):
            raise ValueError("durations must be finite and >= 0 seconds")
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if seed < 0 or num_buckets < 1:
            raise ValueError(f"seed must be >= 0 and num_buckets >= 1, got {seed}, {num_buckets}")
        self.max_batch_seconds = float(max_batch_seconds)
        self.seed = seed
        self.shuffle = shuffle
        self.num_buckets = min(num_buckets, len(self.durations))
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self._resume_at = 0  # batches of this epoch to skip on the next __iter__
        self._yielded = 0  # batches of this epoch yielded so far
        self._cache: tuple[int, list[list[int]]] | None = None
        too_long = np.flatnonzero(self.durations > self.max_batch_seconds)
        if len(too_long):
            worst = int(too_long[np.argmax(self.durations[too_long])])
            warnings.warn(
                f"{len(too_long)} utterance(s) are longer than max_batch_seconds="
                f"{self.max_batch_seconds:g} (longest: index {worst}, {self.durations[worst]:.1f} s); "
                "each gets a batch of its own",
                stacklevel=2,
            )
        if len(self._all_batches(0)) < world_size and drop_last:
            raise ValueError(f"fewer batches than ranks ({world_size}) with drop_last=True")

    def _all_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = np.argsort(self.durations, kind="stable")
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0.0
        for bucket in np.array_split(order, self.num_buckets):
            if self.shuffle:
                bucket = rng.permutation(bucket)
            for i in bucket.tolist():
                d = self.durations[i]
                if batch and max(longest, d) * (len(batch) + 1) > self.max_batch_seconds:
                    batches.append(batch)
                    batch, longest = [], 0.0
                batch.append(i)
                longest = max(longest, d)
            # a bucket's unfinished batch goes on filling from the next (slightly longer) bucket
        if batch:
            batches.append(batch)
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches

    def _rank_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self._all_batches(self.epoch)
            n = len(batches)
            if n % self.world_size:
                if self.drop_last:
                    batches = batches[: n - n % self.world_size]
                else:
                    pad = self.world_size - n % self.world_size
                    batches = batches + [batches[j % n] for j in range(pad)]
            self._cache = (self.epoch, batches[self.rank :: self.world_size])
        return self._cache[1]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's batches; also forgets any mid-epoch resume position."""
        self.epoch = int(epoch)
        self._resume_at = 0
        self._yielded = 0

    def __len__(self) -> int:
        """Batches this rank gets in the current epoch (not counting a resume offset)."""
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        start, self._resume_at = self._resume_at, 0
        self._yielded = start
        for i in range(start, len(batches)):
            self._yielded = i + 1
            yield list(batches[i])

    def _fingerprint(self) -> str:
        return hashlib.sha256(self.durations.tobytes()).hexdigest()[:16]

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """Where this rank is in the epoch.

        `position`: batches of this epoch the training loop has consumed. Defaults to how many
        this sampler has yielded, which runs ahead of the loop when a DataLoader with workers
        prefetches; pass the loop's own count then.
        """
        return {
            "epoch": self.epoch,
            "position": self._yielded if position is None else int(position),
            "seed": self.seed,
            "max_batch_seconds": self.max_batch_seconds,
            "num_buckets": self.num_buckets,
            "shuffle": self.shuffle,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
            "durations_sha256": self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next `__iter__` continues with batch `position` of `epoch`.

        Only `epoch` and `position` are required; the settings a full `state_dict()` also holds
        are checked when present, because resuming with other data or settings would silently
        give other batches.
        """
        mine = self.state_dict()
        for key in (
            "seed",
            "max_batch_seconds",
            "num_buckets",
            "shuffle",
            "world_size",
            "drop_last",
            "durations_sha256",
        ):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"cannot resume: sampler {key} is {mine[key]!r} but the saved state has "
                    f"{state[key]!r}; resuming needs the same data and sampler settings"
                )
        self.set_epoch(state["epoch"])
        position = int(state["position"])
        if not 0 <= position <= len(self._rank_batches()):
            raise ValueError(
                f"saved position {position} is outside epoch {self.epoch}'s {len(self)} batches"
            )
        self._resume_at = self._yielded = position


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items of `AudioDataset` -> a padded batch.

    Returns `wavs` float32 `[B, N]` (zero-padded), `wav_lens` int64 `[B]`, `targets` int64
    `[B, U]` (padded with -1), `target_lens` int64 `[B]`, `texts`, `utt_ids`, `speakers`,
    `indices`. `targets` and `target_lens` are None when no item has tokens; a batch that mixes
    labelled and unlabelled items is refused (CTC would read the latter as empty transcripts).
    """
    if not items:
        raise ValueError("collate: empty batch")
    wavs = [torch.as_tensor(it["wav"], dtype=torch.float32) for it in items]
    wav_lens = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long)
    padded = torch.zeros(len(wavs), int(wav_lens.max()), dtype=torch.float32)
    for b, w in enumerate(wavs):
        padded[b, : w.shape[0]] = w
    tokens = [it.get("tokens") for it in items]
    labelled = [t is not None for t in tokens]
    if any(labelled) and not all(labelled):
        missing = [it["utt_id"] for it, ok in zip(items, labelled, strict=True) if not ok]
        raise ValueError(
            f"collate: batch mixes labelled and unlabelled items (no tokens: {missing[:5]})"
        )
    targets = target_lens = None
    if all(labelled):
        toks = [torch.as_tensor(t, dtype=torch.long) for t in tokens]
        target_lens = torch.tensor([t.shape[0] for t in toks], dtype=torch.long)
        targets = torch.full((len(toks), int(target_lens.max())), -1, dtype=torch.long)
        for b, t in enumerate(toks):
            targets[b, : t.shape[0]] = t
    return {
        "wavs": padded,
        "wav_lens": wav_lens,
        "targets": targets,
        "target_lens": target_lens,
        "texts": [it.get("text") for it in items],
        "utt_ids": [it.get("utt_id") for it in items],
        "speakers": [it.get("speaker") for it in items],
        "indices": [it.get("index") for it in items],
    }


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------
# Waveform transforms take (wav float32 [N], rng: np.random.Generator) and return float32 [N'];
# all randomness comes from `rng`, so a seeded generator reproduces them exactly.


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
