"""Pre-flight: the audio checks of `asrkd manifest check`, run by every command that consumes a
manifest before it writes anything, so that one bad line is found before hours of work rather
than at it (and a mis-described line is found at all: libsndfile reads a cut-off WAV or a
too-short ``duration`` without a word).

::

    checked = preflight("train.jsonl")      # file headers only: nothing is decoded
    refuse(checked.bad, "set data.on_bad_audio: skip to leave them out and count them")   # error
    utts = checked.utterances               # skip: the good lines, in order; checked.bad the rest

A bad audio line is one of `BAD_AUDIO`: missing or unreadable audio, a truncated WAV, a
``duration`` that differs from the file's, a segment past the end of its file, or (for
training, with `ctc_shortfall`) a clip too short for CTC on its transcript. The checks and
their messages are `asrkd.data.check`'s; faults of the manifest's structure stay errors of
`read_manifest`. Left-out lines are listed in a run's ``skipped.jsonl`` (`write_skipped`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asrkd.data.check import check_utterances
from asrkd.data.manifest import ManifestError, Utterance
from asrkd.data.sources import as_source, iter_numbered
from asrkd.fileio import atomic_write_text

__all__ = [
    "BAD_AUDIO",
    "SKIPPED_FILE",
    "UNREADABLE",
    "BadItem",
    "CheckedSource",
    "SkipLog",
    "check_inputs",
    "preflight",
    "refuse",
    "summary",
    "write_skipped",
]

# The `asrkd.data.check` problem kinds that make a line's audio unusable or mis-described.
BAD_AUDIO = (
    "missing_audio",
    "unreadable_audio",
    "truncated_audio",
    "duration_mismatch",
    "segment_past_end",
    "ctc_infeasible",
)
UNREADABLE = ("missing_audio", "unreadable_audio")  # of BAD_AUDIO, the kinds no reader can load
SKIPPED_FILE = "skipped.jsonl"  # in a run folder: one `BadItem` per line


@dataclass(frozen=True)
class BadItem:
    """An utterance whose audio cannot be used as its manifest describes it.

    ``manifest``: the source as given; ``line``: its line (1-based; a Lhotse or dataset item's
    number); ``path``: the audio; ``kind``: one of `BAD_AUDIO`; ``reason``: what is wrong and
    what to do, as `asrkd manifest check` says it.
    """

    manifest: str
    line: int
    path: str
    utt_id: str
    kind: str
    reason: str

    @property
    def where(self) -> str:
        """``MANIFEST:LINE``."""
        return f"{self.manifest}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        """One line of ``skipped.jsonl``."""
        return asdict(self)


@dataclass
class CheckedSource:
    """A source read and checked: its good ``utterances`` in order, each ``lines[i]`` the line
    (item number) of ``utterances[i]``, and its ``bad`` ones."""

    source: str
    utterances: list[Utterance]
    lines: list[int]
    bad: list[BadItem]


def preflight(source: Any, duration_tolerance: float = 0.1, limit: int | None = None) -> CheckedSource:
    """Read ``source`` (a manifest or any data source, as `asrkd.data.read_source` does) and check
    every utterance's audio header (`BAD_AUDIO` but ``ctc_infeasible``, which needs the model).

    ``limit``: check only the first ``limit`` utterances (and return only them). About a
    millisecond per file: headers are read, nothing is decoded.

    Raises:
        ManifestError: a malformed line, the source cannot be read (as `read_source`), or it
            holds no utterance.
    """
    src = as_source(source)
    name = str(src)
    parsed = list(iter_numbered(src))[:limit]
    if not parsed:
        raise ManifestError(f"{name}: no utterances; a manifest has one JSON object per line")
    # Lhotse cuts are segments of their recordings: their ends are checked, not their lengths.
    problems = check_utterances(parsed, [], duration_tolerance=duration_tolerance, segments=src.kind == "lhotse")
    reasons: dict[int, tuple[str, str]] = {}
    for p in problems:
        if p.kind in BAD_AUDIO and p.line not in reasons:
            reasons[p.line] = (p.kind, p.message)
    checked = CheckedSource(name, [], [], [])
    for number, _, u in parsed:
        if number in reasons:
            checked.bad.append(BadItem(name, number, u.audio_filepath, u.utt_id, *reasons[number]))
        else:
            checked.utterances.append(u)
            checked.lines.append(number)
    return checked


def refuse(bad: Sequence[BadItem], instead: str) -> None:
    """Raise `ManifestError` naming the first of ``bad`` (and how many more) with the fix, or
    return when ``bad`` is empty. ``instead``: the other way out, e.g. the setting that skips them."""
    if not bad:
        return
    first = bad[0]
    more = ""
    if len(bad) > 1:
        listed = ", ".join(b.where for b in bad[1:4]) + (", ..." if len(bad) > 4 else "")
        more = f"; {len(bad) - 1} more bad audio line(s): {listed}"
    raise ManifestError(
        f"{first.where}: {first.reason}{more} (fix or remove them: `asrkd manifest check "
        f"{first.manifest}` lists every problem; or {instead})"
    )


def check_inputs(manifests: Sequence[Any], on_bad_audio: str = "error", instead: str = "remove them from "
                 "the manifest", limit: int | None = None) -> list[BadItem]:
    """The pre-flight of a command's input ``manifests`` (each limited to its first ``limit``
    utterances): ``on_bad_audio`` "error" refuses their bad lines (`refuse`, with ``instead``),
    "skip" returns them for the command to leave out or name."""
    bad = [b for m in manifests for b in preflight(m, limit=limit).bad]
    if on_bad_audio == "error":
        refuse(bad, instead)
    return bad


def summary(bad: Sequence[BadItem]) -> str:
    """``N bad audio line(s) (KIND N, ...)``: how many and why, in one phrase."""
    kinds = Counter(b.kind for b in bad)
    return f"{len(bad)} bad audio line(s) ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})"


def write_skipped(path: str | os.PathLike, items: Sequence[BadItem]) -> Path:
    """Write ``items`` as JSONL (`BadItem.to_dict` per line), atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(b.to_dict(), ensure_ascii=False) + "\n" for b in items))
    return path


@dataclass
class SkipLog:
    """A run's ``skipped.jsonl``: the lines the pre-flight left out (``before``) and those whose
    audio failed to load while training (``during``, kept in the trainer state so a resume
    lists them too). Rewritten whole, atomically, on every change; ``path`` None writes nothing
    (ranks other than 0). ``places`` maps an utt_id to its (manifest, line)."""

    path: Path | None
    places: dict[str, tuple[str, int]]
    before: list[BadItem]
    during: list[BadItem] = field(default_factory=list)

    def write(self) -> None:
        """(Re)write the file with every item."""
        if self.path is not None:
            write_skipped(self.path, [*self.before, *self.during])

    def unreadable(self, u: Utterance, reason: str) -> bool:
        """Record that ``u``'s audio failed to load while training (``reason``: the error); False
        when it is already listed (it is tried again every epoch, and fails again)."""
        manifest, line = self.places.get(u.utt_id, ("", 0))
        item = BadItem(manifest, line, u.audio_filepath, u.utt_id, "unreadable_audio", reason)
        if item in self.during:
            return False
        self.during.append(item)
        self.write()
        return True

    def state_dict(self) -> list[dict[str, Any]]:
        """``during``, as the trainer state holds it."""
        return [b.to_dict() for b in self.during]

    def load_state_dict(self, items: Sequence[dict[str, Any]]) -> None:
        """Restore ``during`` from `state_dict` and rewrite the file."""
        self.during = [BadItem(**b) for b in items]
        self.write()
