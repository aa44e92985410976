"""A text-only teacher: any recogniser as ``transcribe(audio) -> text``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor

from asrkd.contract import SAMPLE_RATE
from asrkd.teachers.base import Hypothesis, SequenceBatch, SequenceOutput, Teacher, TeacherOutput
from asrkd.text import BLANK

__all__ = ["PseudoLabelTeacher"]


class PseudoLabelTeacher(Teacher):
    """Any recogniser as ``transcribe(audio float32 [N] at sample_rate) -> text`` (or ``(text,
    confidence)``): sequence-level KD and pseudo-labels only, since there are no posteriors.

    ``fingerprint``: a string naming the system and its version (the cache compares it).
    """

    has_posteriors = False

    def __init__(self, transcribe: Callable[[np.ndarray], Any], fingerprint: str,
                 sample_rate: int = SAMPLE_RATE):
        self.transcribe = transcribe
        self.sample_rate = int(sample_rate)
        self.vocabulary = [BLANK]
        self.frame_shift = 0.0
        self._fingerprint = fingerprint

    def __call__(self, wavs: Tensor, wav_lens: Tensor, return_hidden: bool = False) -> TeacherOutput:
        raise TypeError("a PseudoLabelTeacher has no posteriors; use transcribe_batch (sequence KD only)")

    def transcribe_batch(self, wavs: Tensor, wav_lens: Tensor) -> list[tuple[str, float | None]]:
        """-> one (text, confidence or None) per utterance."""
        out = []
        for w, n in zip(wavs, wav_lens.tolist(), strict=True):
            r = self.transcribe(w[: int(n)].cpu().numpy())
            text, conf = (r if isinstance(r, tuple) else (r, None))
            out.append((str(text), None if conf is None else float(conf)))
        return out

    def sequence_outputs(self, wavs: Tensor, wav_lens: Tensor, return_hidden: bool = False) -> SequenceBatch:
        """`transcribe_batch` as `SequenceOutput` s: a one-best with score 0 and the confidence."""
        if return_hidden:
            raise TypeError("a PseudoLabelTeacher has no hidden states")
        return SequenceBatch([SequenceOutput([Hypothesis(text, 0.0)], conf)
                              for text, conf in self.transcribe_batch(wavs, wav_lens)])

    def describe(self) -> dict[str, Any]:
        return {"kind": "pseudo-label", "weights": self._fingerprint, "config": "", "frontend": {},
                "vocabulary": ""}
