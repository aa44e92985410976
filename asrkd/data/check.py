"""`check_manifest`: every problem of every line of a manifest, audio headers included.

Unlike `read_manifest`, which stops at the first malformed line, this reports all of them, plus
what only the audio and the tokenizer can tell (missing, unreadable or truncated files, wrong
durations, characters outside the vocabulary, transcripts too long for CTC). `asrkd manifest
check` prints its result; the commands that consume a manifest run the audio checks through
`asrkd.data.preflight`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asrkd.audio import AudioError, audio_duration, wav_truncation
from asrkd.data.manifest import (
    ManifestError,
    Utterance,
    _audio_root,
    _LineError,
    _parse_line,
    _read_lines,
    is_source_spec,
)
from asrkd.text import Tokenizer, normalize_text


@dataclass
class Problem:
    """One fault found by `check_manifest`. `line` is 1-based; 0 means the whole file."""

    line: int
    kind: str
    message: str


def ctc_min_frames(ids: Sequence[int]) -> int:
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
    `truncated_audio` (a WAV holding less than its header declares: `asrkd.audio.wav_truncation`),
    `duration_mismatch` (|duration - (audio length - offset)| > tolerance, for a file that one
    line uses), `segment_past_end` (offset + duration beyond the audio, for a file that several
    lines cut into segments), `empty_text` (nothing left after `normalize_text`), `oov`
    (characters the tokenizer cannot represent, listed), `duplicate_id`, `duplicate_entry` (same
    audio, offset and duration twice), `ctc_infeasible` (with `ctc_frame_rate`, the model's
    output frames per second: the transcript needs more CTC frames than the audio yields), and
    for the file as a whole (line 0) `unreadable_manifest`, `empty_manifest`. A line without
    `text` is fine in an unlabelled manifest and a `missing_field` in a labelled one.

    A data source spec (`lhotse:...`, `hf:...`) is checked by `asrkd.data.sources.check_source`.

    Audio is never decoded: lengths come from file headers, so 2400 files take about a second.
    """
    if is_source_spec(path):
        from asrkd.data.sources import check_source  # the sources read manifests: import late

        return check_source(path, tokenizer, duration_tolerance, ctc_frame_rate)
    path = Path(path)
    try:
        lines = _read_lines(path)
    except ManifestError as e:
        return [Problem(0, "unreadable_manifest", str(e).split(": ", 1)[-1])]
    base = _audio_root(path, lines, audio_root)
    problems: list[Problem] = []
    parsed: list[tuple[int, str, Utterance]] = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            parsed.append((lineno, "", _parse_line(raw, lineno, base)))
        except _LineError as e:
            problems.append(Problem(lineno, e.kind, e.message))
    return check_utterances(parsed, problems, tokenizer, duration_tolerance, ctc_frame_rate)


def check_utterances(
    parsed: Sequence[tuple[int, str, Utterance]],
    problems: list[Problem],
    tokenizer: Tokenizer | None = None,
    duration_tolerance: float = 0.1,
    ctc_frame_rate: float | None = None,
    segments: bool = False,
) -> list[Problem]:
    """The checks of `check_manifest` on utterances read from any source, added to ``problems``
    (those found while reading them); returns them all, sorted by line.

    ``parsed`` holds (line or item number, item name, utterance); a name prefixes its item's
    messages (a Lhotse cut's id, a dataset row). ``segments``: every utterance is a segment of
    its audio (Lhotse cuts and supervisions), so only `segment_past_end` is checked, never
    `duration_mismatch`.
    """
    if not parsed and not problems:
        return [
            Problem(0, "empty_manifest", "no utterances; a manifest has one JSON object per line")
        ]

    uses: dict[str, int] = {}
    for _, _, u in parsed:
        uses[u.audio_filepath] = uses.get(u.audio_filepath, 0) + 1
    labelled = sum(u.text is not None for _, _, u in parsed)
    headers: dict[str, _Header | tuple[str, str]] = {}
    first_id: dict[str, int] = {}
    first_entry: dict[tuple[str, float, float], int] = {}
    for lineno, name, u in parsed:
        line_problems = _check_utterance(
            u, uses, headers, tokenizer, duration_tolerance, ctc_frame_rate, segments
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
        problems.extend(Problem(lineno, k, f"{name}: {m}" if name else m) for k, m in line_problems)
    problems.sort(key=lambda p: p.line)
    return problems


@dataclass(frozen=True)
class _Header:
    """What a file's header says: its length in seconds, and why it is cut short (or None)."""

    length: float
    truncation: str | None


def _audio_header(u: Utterance) -> _Header | tuple[str, str]:
    """The audio's header (`_Header`), or the (kind, message) of why it cannot be read."""
    if u.audio is not None:
        try:
            return _Header(u.audio.length(), None)
        except AudioError as e:
            return ("unreadable_audio", f"{e}; re-encode it as WAV/FLAC or remove the item")
    if not os.path.isfile(u.audio_filepath):
        return (
            "missing_audio",
            f"{u.audio_filepath} does not exist; fix the path or restore the file",
        )
    try:
        return _Header(audio_duration(u.audio_filepath), wav_truncation(u.audio_filepath))
    except AudioError as e:
        return ("unreadable_audio", f"{e}; re-encode it as WAV/FLAC or remove the line")


def ctc_shortfall(text: str, duration: float, tokenizer: Tokenizer, ctc_frame_rate: float) -> str | None:
    """Why ``duration`` seconds are too short for CTC on normalised ``text``, or None: CTC needs
    `ctc_min_frames` output frames, the audio gives ``floor(duration * ctc_frame_rate)``, and an
    utterance short of them adds nothing to the loss (``zero_infinity``) without saying so."""
    need = ctc_min_frames(tokenizer.encode(text, normalize=False))
    have = math.floor(duration * ctc_frame_rate)
    if need <= have:
        return None
    return (f"{need} CTC frames needed for the text, {duration:.3f} s gives {have} at "
            f"{ctc_frame_rate} frames/s; remove the line or fix its audio or text")


def _check_utterance(
    u: Utterance,
    uses: dict[str, int],
    headers: dict[str, _Header | tuple[str, str]],
    tokenizer: Tokenizer | None,
    tolerance: float,
    ctc_frame_rate: float | None,
    segments: bool = False,
) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    audio = u.audio_filepath
    if audio not in headers:
        headers[audio] = _audio_header(u)
    header = headers[audio]
    if isinstance(header, tuple):
        found.append(header)
    else:
        found.extend(_header_problems(u, header, uses[audio] == 1 and not segments, tolerance))

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
                shortfall = ctc_shortfall(norm, u.duration, tokenizer, ctc_frame_rate)
                if shortfall is not None:
                    found.append(("ctc_infeasible", shortfall))
    return found


def _header_problems(u: Utterance, header: _Header, whole_file: bool, tolerance: float) -> list[tuple[str, str]]:
    """`truncated_audio`, and `duration_mismatch` for a line that is the ``whole_file`` (the only
    line of its audio, not a segment) or else `segment_past_end`."""
    found = []
    if header.truncation is not None:
        found.append(
            ("truncated_audio", f"{u.audio_filepath}: {header.truncation}; copy the file again or remove the line")
        )
    if whole_file:
        expected = header.length - u.offset
        if abs(u.duration - expected) > tolerance:
            found.append(
                (
                    "duration_mismatch",
                    f"duration {u.duration:.3f} s but the audio is {header.length:.3f} s"
                    + (f" (minus offset {u.offset:.3f} s = {expected:.3f} s)" if u.offset else "")
                    + f", off by {u.duration - expected:+.3f} s (tolerance {tolerance} s); set duration to {expected:.4f}",
                )
            )
    elif u.offset + u.duration > header.length + tolerance:
        found.append(
            (
                "segment_past_end",
                f"segment {u.offset:.3f}-{u.offset + u.duration:.3f} s ends after the audio ({header.length:.3f} s)",
            )
        )
    return found
