"""Data sources: where utterances come from — a JSONL manifest, a Lhotse corpus, a Hugging Face dataset.

A source is named three ways, all read from local disk only:

* a manifest path: ``train.jsonl`` (`asrkd.data.manifest`);
* a mapping, as configs write it (``data.train: [{lhotse: cuts.jsonl.gz}, train.jsonl]``)::

      {lhotse: cuts.jsonl.gz}                                     # a CutSet: one utterance per cut
      {lhotse: recordings.jsonl.gz, supervisions: sups.jsonl.gz}   # one per supervision
      {lhotse: recordings.jsonl.gz}                               # one unlabelled per recording
      {hf: DATASET_DIR, split: train, audio_column: audio, text_column: text}

  (``hf`` is a folder written by ``save_to_disk``; its other keys: ``speaker_column``,
  ``id_column``, ``duration_column``, and ``text_column: null`` for unlabelled audio). From
  Python the value may also be a `lhotse.CutSet` or a `datasets.Dataset` / ``DatasetDict``;
* a spec string, as the command line writes it: ``lhotse:cuts.jsonl.gz``,
  ``lhotse:recordings.jsonl.gz?supervisions=sups.jsonl.gz``,
  ``hf:DATASET_DIR?split=train&text_column=sentence``.

`read_source` returns the utterances (`read_manifest` and `check_manifest` hand spec strings
here, so every command that takes a manifest takes a source); `check_source` lists every problem
of every item, as `check_manifest` does for lines. How each corpus maps onto `Utterance` is in
`asrkd.data.from_lhotse` and `asrkd.data.from_hf`: audio is never copied, and large corpora are
read one item at a time (only the utterances' metadata is kept).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from asrkd.data.check import Problem, check_manifest, check_utterances
from asrkd.data.manifest import (
    ManifestError,
    Utterance,
    is_source_spec,
    read_numbered_manifest,
)
from asrkd.errors import AsrkdError
from asrkd.text import Tokenizer

__all__ = ["DataSource", "SourceError", "SourceItem", "as_source", "check_source", "iter_source", "read_source"]

# Each kind's option keys (besides the kind's own key, which holds the location) and which of
# them are paths.
_OPTIONS = {
    "lhotse": ("supervisions",),
    "hf": ("split", "audio_column", "text_column", "speaker_column", "id_column", "duration_column"),
}
_PATH_OPTIONS = ("supervisions",)


class SourceError(AsrkdError, ValueError):
    """A data source named wrongly (unknown kind or key, wrong value type); says what to write."""


@dataclass
class SourceItem:
    """One item of a source as read: its utterance, or why it has none.

    `number` is 1-based (a line of a JSONL file, a dataset row + 1); `name` says which item it
    is in messages ("cut 'c1'", "row 3"); `problem` is (kind, message), the kinds of
    `check_manifest` plus `unsupported` (an item asrkd cannot read, e.g. a URL audio source).
    """

    number: int
    name: str
    utterance: Utterance | None = None
    problem: tuple[str, str] | None = None


@dataclass
class DataSource:
    """A parsed source: ``kind`` (manifest, lhotse, hf), ``location`` (a path, or from Python a
    CutSet / Dataset object) and the kind's ``options``."""

    kind: str
    location: Any
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: Any) -> DataSource:
        """A manifest path, a spec string, a mapping or a DataSource -> DataSource.

        Raises:
            SourceError: unknown kind or key, or a value of the wrong type; the message lists
                what a source may be.
        """
        if isinstance(spec, DataSource):
            return spec
        if is_source_spec(spec):
            kind, rest = spec.split(":", 1)
            location, _, query = rest.partition("?")
            return cls._checked(kind, location, dict(parse_qsl(query, keep_blank_values=True)))
        if isinstance(spec, str | os.PathLike):
            return cls("manifest", spec)
        if isinstance(spec, Mapping):
            kinds = [k for k in _OPTIONS if k in spec]
            if len(kinds) != 1:
                raise SourceError(f"{dict(spec)!r} names {len(kinds)} source kinds; {_FORMS}")
            # null means "none": for text_column, no transcripts (unlabelled audio)
            options = {k: "" if k == "text_column" and v is None else v
                       for k, v in spec.items() if k != kinds[0] and (v is not None or k == "text_column")}
            return cls._checked(kinds[0], spec[kinds[0]], options)
        raise SourceError(f"{spec!r} is a {type(spec).__name__}; {_FORMS}")

    @classmethod
    def _checked(cls, kind: str, location: Any, options: dict[str, Any]) -> DataSource:
        unknown = sorted(set(options) - set(_OPTIONS[kind]))
        if unknown:
            raise SourceError(
                f"unknown key(s) {unknown} for a {kind} source; known: {[kind, *_OPTIONS[kind]]}"
            )
        if isinstance(location, str | os.PathLike):
            if not os.fspath(location):
                raise SourceError(f"{kind}: give the path of the {_WHAT[kind]}")
        elif isinstance(location, Mapping | list | int | float | bool) or location is None:
            raise SourceError(f"{kind}: {location!r} is not a path; give the {_WHAT[kind]}")
        bad = {k: v for k, v in options.items() if not isinstance(v, str)}
        if bad:
            raise SourceError(f"{kind}: {bad} must be strings (column names, paths)")
        return cls(kind, location, options)

    def with_paths(self, fix: Callable[[str], str]) -> DataSource:
        """This source with ``fix`` applied to its paths (e.g. made absolute against a config's
        folder); objects are kept as they are."""
        if self.kind == "manifest":
            return DataSource("manifest", fix(os.fspath(self.location)))
        location = fix(os.fspath(self.location)) if _is_path(self.location) else self.location
        options = {k: fix(v) if k in _PATH_OPTIONS else v for k, v in self.options.items()}
        return DataSource(self.kind, location, options)

    def to_config(self) -> str | dict[str, Any]:
        """As a config holds it: a manifest's path, else the mapping form."""
        if self.kind == "manifest":
            return os.fspath(self.location)
        options = {k: (None if k == "text_column" and v == "" else v) for k, v in self.options.items()}
        return {self.kind: self.location, **options}

    def __str__(self) -> str:
        """The spec string (``lhotse:PATH?supervisions=PATH``); names the source in messages."""
        if self.kind == "manifest":
            return os.fspath(self.location)
        where = os.fspath(self.location) if _is_path(self.location) else type(self.location).__name__
        query = f"?{urlencode(self.options, safe='/')}" if self.options else ""
        return f"{self.kind}:{where}{query}"

    def items(self) -> Iterator[SourceItem]:
        """The source's items, one at a time (Lhotse and Hugging Face sources only).

        Raises:
            ManifestError: the source as a whole cannot be read (no such file, not a dataset,
                unknown split or column, the extra not installed).
        """
        if self.kind == "lhotse":
            from asrkd.data.from_lhotse import lhotse_items

            return lhotse_items(self.location, **self.options)
        if self.kind == "hf":
            from asrkd.data.from_hf import hf_items

            return hf_items(self.location, **self.options)
        raise ValueError("a manifest is read with read_manifest, not item by item")


_WHAT = {
    "manifest": "JSONL manifest",
    "lhotse": "Lhotse manifest (cuts, or recordings with supervisions)",
    "hf": "dataset folder written by save_to_disk",
}
_FORMS = (
    "a data source is a manifest path, {lhotse: PATH[, supervisions: PATH]}, or {hf: DATASET_DIR"
    "[, split: NAME, audio_column: audio, text_column: text, speaker_column: ..., id_column: ..., "
    "duration_column: ...]}"
)


def _is_path(location: Any) -> bool:
    return isinstance(location, str | os.PathLike)


def iter_source(source: Any) -> Iterator[Utterance]:
    """The utterances of ``source`` (any form `DataSource.parse` takes, or a `lhotse.CutSet` /
    `datasets.Dataset` object), one at a time.

    Raises:
        ManifestError: ``SOURCE: ITEM: what is wrong`` for the first bad item (run
            `asrkd manifest check SOURCE` to list them all), or the source cannot be read.
        SourceError: ``source`` names no source.
    """
    for _, _, utterance in iter_numbered(source):
        yield utterance


def iter_numbered(source: Any) -> Iterator[tuple[int, str, Utterance]]:
    """`iter_source` with each utterance's place: (line of a manifest or 1-based item number,
    item name or "" for a manifest line, utterance); raises as `iter_source` does."""
    src = as_source(source)
    if src.kind == "manifest":
        for lineno, utterance in read_numbered_manifest(src.location):
            yield lineno, "", utterance
        return
    for item in src.items():
        if item.problem is not None:
            raise ManifestError(
                f"{src}: {item.name}: {item.problem[1]} (run `asrkd manifest check {src}` to list "
                "every problem)"
            )
        yield item.number, item.name, item.utterance


def read_source(source: Any) -> list[Utterance]:
    """All utterances of ``source`` (see `iter_source`): their metadata, no audio."""
    return list(iter_source(source))


def check_source(
    source: Any,
    tokenizer: Tokenizer | None = None,
    duration_tolerance: float = 0.1,
    ctc_frame_rate: float | None = None,
) -> list[Problem]:
    """`check_manifest` for any source: every problem of every item, each message prefixed with
    the item's name, `line` its number (0: the source as a whole, e.g. `unreadable_manifest`).

    A Lhotse cut or supervision is a segment of its recording, so its end is checked against the
    audio's length (`segment_past_end`), never its duration against the whole file's.
    """
    src = as_source(source)
    if src.kind == "manifest":
        return check_manifest(src.location, tokenizer, duration_tolerance, ctc_frame_rate)
    parsed: list[tuple[int, str, Utterance]] = []
    problems: list[Problem] = []
    try:
        for item in src.items():
            if item.problem is None:
                parsed.append((item.number, item.name, item.utterance))
            else:
                problems.append(Problem(item.number, item.problem[0], f"{item.name}: {item.problem[1]}"))
    except ManifestError as e:
        return [Problem(0, "unreadable_manifest", str(e))]
    return check_utterances(parsed, problems, tokenizer, duration_tolerance, ctc_frame_rate,
                            segments=src.kind == "lhotse")


def as_source(source: Any) -> DataSource:
    """`DataSource.parse`, and a CutSet or Dataset object as a source of its kind."""
    module = type(source).__module__.split(".", 1)[0]
    if module in ("lhotse", "datasets"):
        return DataSource("lhotse" if module == "lhotse" else "hf", source)
    return DataSource.parse(source)
