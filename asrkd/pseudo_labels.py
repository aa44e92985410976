"""Pseudo-labels: utterances without text get the teacher's best cached hypothesis as their text.

Used by the training builder (`asrkd.builder`) when a distillation run's manifests have
unlabelled lines. An unlabelled utterance is dropped when the teacher is less sure of it than
``kd.pseudo_label.min_confidence``, when its best hypothesis is empty (``drop_empty``), or when
that hypothesis has characters the student's vocabulary cannot spell (and it has no ``<unk>``).
Every drop is recorded, one JSON object per line, in ``<out_dir>/pseudo_label_drops.jsonl``::

    {"utt_id": ..., "confidence": 0.41, "threshold": 0.5, "reason": "confidence 0.4100 < min_confidence 0.5"}
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from asrkd.cache import PosteriorCache
from asrkd.config import ConfigError, PseudoLabelConfig
from asrkd.data import Utterance
from asrkd.fileio import atomic_write_text
from asrkd.teacher import is_char_vocabulary
from asrkd.text import BLANK, UNK, WORD_SEP, CharTokenizer

__all__ = ["PSEUDO_LABEL_DROPS", "drop_unspellable", "pseudo_label", "tokenizer_from_cache", "write_drops"]

PSEUDO_LABEL_DROPS = "pseudo_label_drops.jsonl"


def _drop(u: Utterance, confidence: float | None, threshold: float, reason: str) -> dict:
    return {"utt_id": u.utt_id, "confidence": confidence, "threshold": threshold, "reason": reason}


def pseudo_label(utts: list[Utterance], cache: PosteriorCache,
                 settings: PseudoLabelConfig) -> tuple[list[Utterance], list[dict]]:
    """Unlabelled utterances -> the teacher's best hypothesis as ``text`` (``extra["pseudo_label"]``
    True); labelled ones pass unchanged. Returns (kept utterances in order, drop records)."""
    kept, drops = [], []
    for u in utts:
        if u.text is not None:
            kept.append(u)
            continue
        conf = cache.confidence(u.utt_id)
        hyps = cache.nbest(u.utt_id)
        text = hyps[0].text if hyps else ""
        if conf is not None and conf < settings.min_confidence:
            drops.append(_drop(u, conf, settings.min_confidence,
                               f"confidence {conf:.4f} < min_confidence {settings.min_confidence}"))
        elif settings.drop_empty and not text.strip():
            drops.append(_drop(u, conf, settings.min_confidence, "the teacher's best hypothesis is empty"))
        else:
            kept.append(replace(u, text=text, extra={**u.extra, "pseudo_label": True}))
    return kept, drops


def tokenizer_from_cache(cache: PosteriorCache) -> CharTokenizer:
    """The student's characters when only the teacher can say what the audio contains: the
    teacher's character vocabulary (its blank first; word pieces refused)."""
    vocab = cache.vocabulary
    tokens = [BLANK] + [t for t in vocab if t != BLANK and (len(t) == 1 or t == UNK)]
    if not is_char_vocabulary(vocab) or WORD_SEP not in tokens:
        raise ConfigError("data.tokens: unlabelled training audio and a teacher without a character "
                          "vocabulary; give the student's tokens.txt")
    return CharTokenizer(tokens)


def drop_unspellable(utts: list[Utterance], tokenizer, cache: PosteriorCache,
                     settings: PseudoLabelConfig) -> tuple[list[Utterance], list[dict]]:
    """Drop pseudo-labelled utterances whose text ``tokenizer`` cannot spell (unless it has
    ``<unk>``). Returns (kept, drop records)."""
    kept, drops = [], []
    for u in utts:
        unknown = tokenizer.unknown_characters(u.text) if u.extra.get("pseudo_label") else []
        if unknown and getattr(tokenizer, "unk_id", None) is None:
            drops.append(_drop(u, cache.confidence(u.utt_id), settings.min_confidence,
                               f"pseudo-label {u.text!r} has characters outside the student vocabulary: {unknown}"))
        else:
            kept.append(u)
    return kept, drops


def write_drops(out_dir: str | os.PathLike, drops: list[dict]) -> Path:
    """``<out_dir>/pseudo_label_drops.jsonl``, written atomically (empty when nothing was dropped)."""
    out = Path(out_dir) / PSEUDO_LABEL_DROPS
    atomic_write_text(out, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in drops))
    return out
