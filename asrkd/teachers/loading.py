"""`load_teacher`: a teacher from what a user types (a folder, or ``whisper[:DIR][?key=value&...]``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qsl

import torch

from asrkd.teachers.base import Teacher
from asrkd.teachers.ctc import CheckpointTeacher, HFCTCTeacher

__all__ = ["WHISPER_SPEC", "load_teacher", "whisper_from_spec", "with_threads"]

WHISPER_SPEC = "whisper"

_FILTER_KEYS = {"min_confidence": float, "max_no_speech_prob": float}
_OPTION_KEYS = {"beam_size": int, "nbest": int, "compute_type": str, "threads": int, "max_new_tokens": int,
                "candidates_below": float}
_NORMALIZER_KEYS = {"numbers": str, "zero": str, "max_repeats": int}


def _words(value: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in value.split(",") if w.strip())


def whisper_from_spec(spec: str, device: str | torch.device = "cpu") -> Teacher:
    """``whisper`` (the bundled tiny.en), ``whisper:DIR`` (a CTranslate2 or Hugging Face Whisper
    folder), each optionally followed by ``?key=value&key=value``:

    - decoding: ``beam_size``, ``nbest``, ``compute_type``, ``threads``, ``max_new_tokens``,
      ``word_timestamps`` (``true``/``false``), ``candidates`` (comma-separated transcripts, or
      ``digits`` for the ten digit words: closed-vocabulary pseudo-labelling), ``candidates_below``
      (seconds: the closed set only for shorter clips that free decoding gets wrong);
    - normalisation (`asrkd.normalize.TextNormalizer`): ``numbers`` (words|digits), ``zero``
      (zero|oh), ``max_repeats``;
    - filter (`asrkd.teachers.filter.UtteranceFilter`): ``min_confidence``, ``max_no_speech_prob``,
      ``lexicon`` (comma-separated words, or ``digits``), ``tokens`` (the student's tokens.txt).

    >>> load_teacher("whisper?numbers=digits&candidates=digits")   # doctest: +SKIP
    """
    from asrkd.normalize import TextNormalizer
    from asrkd.teachers.filter import UtteranceFilter
    from asrkd.teachers.whisper import DIGIT_WORDS, WINDOW_SECONDS, WhisperOptions, WhisperTeacher
    from asrkd.text import CharTokenizer

    head, _, query = spec.partition("?")
    folder = head.partition(":")[2] or None
    options, normalizer, filt = {}, {}, {"max_seconds": float(WINDOW_SECONDS)}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key in _OPTION_KEYS:
            options[key] = _OPTION_KEYS[key](value)
        elif key in _NORMALIZER_KEYS:
            normalizer[key] = _NORMALIZER_KEYS[key](value)
        elif key in _FILTER_KEYS:
            filt[key] = _FILTER_KEYS[key](value)
        elif key == "word_timestamps":
            options[key] = value.lower() in ("1", "true", "yes")
        elif key in ("candidates", "lexicon"):
            target = options if key == "candidates" else filt
            target[key] = "digits" if value == "digits" else _words(value)
        elif key == "tokens":
            filt["tokens"] = tuple(CharTokenizer.load(value).tokens)
        else:
            known = sorted([*_OPTION_KEYS, *_NORMALIZER_KEYS, *_FILTER_KEYS, "word_timestamps", "candidates",
                            "lexicon", "tokens"])
            raise ValueError(f"teacher {spec!r}: unknown option {key!r}; known: {', '.join(known)}")
    norm = TextNormalizer(**normalizer)
    digits = tuple([norm.zero, *DIGIT_WORDS[1:]])
    for target, key in ((options, "candidates"), (filt, "lexicon")):
        if target.get(key) == "digits":
            target[key] = digits
    return WhisperTeacher(folder, WhisperOptions(normalizer=norm, **options), UtteranceFilter(**filt), device)


def with_threads(spec: str, threads: int) -> str:
    """A Whisper ``spec`` decoding on ``threads`` threads: its ``threads`` option set (replaced
    where it has one). Speed only: the option is not part of the teacher's fingerprint."""
    head, _, query = spec.partition("?")
    options = [o for o in query.split("&") if o and not o.startswith("threads=")]
    return f"{head}?{'&'.join([*options, f'threads={threads}'])}"


def load_teacher(path: str | os.PathLike, device: str | torch.device = "cpu") -> Teacher:
    """A teacher from a spec: ``whisper[:DIR][?options]`` (`whisper_from_spec`), an asrkd checkpoint
    (or run folder), or a Hugging Face ``*ForCTC`` / Whisper folder, told apart by its config.json."""
    spec = os.fspath(path)
    if spec == WHISPER_SPEC or spec.startswith((f"{WHISPER_SPEC}:", f"{WHISPER_SPEC}?")):
        return whisper_from_spec(spec, device)
    path = Path(path)
    config = path / "config.json"
    if (path / "model.bin").is_file():  # a CTranslate2 folder: only Whisper ones are teachers
        return whisper_from_spec(f"{WHISPER_SPEC}:{path}", device)
    if config.is_file():
        try:
            info = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{config}: invalid JSON ({e.msg})") from None
        if info.get("model_type") == "whisper":
            return whisper_from_spec(f"{WHISPER_SPEC}:{path}", device)
        if info.get("format") != "asrkd-checkpoint":
            return HFCTCTeacher(path, device)
    return CheckpointTeacher(path, device)
