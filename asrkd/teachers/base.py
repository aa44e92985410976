"""The teacher interface every adapter implements, and the pieces they share.

Every teacher answers the same questions, so the cache and the distiller never ask what it is:

    teacher.vocabulary      tokens in asrkd's convention: "<blk>" (the CTC blank), "▁" (word
                            separator), single characters, "<unk>"; other symbols kept as named
    teacher.blank_id        the index of "<blk>" in `vocabulary`
    teacher.sample_rate     samples per second of the audio it takes (the cache loads audio at it)
    teacher.frame_shift     seconds per output frame (0.04 for a x4 Conformer on a 10 ms hop; for
                            a sequence teacher, its hidden states' frame shift)
    teacher.has_posteriors  False for a sequence teacher (text out, no CTC posteriors)
    teacher(wavs [B, N] float32 at sample_rate, wav_lens [B] int64, return_hidden=False)
        -> TeacherOutput(log_probs [B, T, V], lengths [B], hidden: list of [B, T, D] | None)
    teacher.sequence_outputs(wavs, wav_lens, return_hidden=False)
        -> SequenceBatch: per utterance an N-best with scores, a confidence, the no-speech
           probability, word timings (sequence teachers only)
    teacher.decode(ids)     collapsed, blank-free token ids -> text
    teacher.describe()      {"kind", "weights": sha, "config": sha, "frontend": {...}, "vocabulary": sha}:
                            what a cache records and compares, part by part
    teacher.fingerprint()   one sha256 over `describe()`
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from asrkd.contract import BLANK_ID, SAMPLE_RATE
from asrkd.text import UNK, UNK_SURFACE, WORD_SEP

__all__ = ["Hypothesis", "SequenceBatch", "SequenceOutput", "Teacher", "TeacherOutput", "is_char_vocabulary",
           "sha256_json", "state_dict_sha256"]

@dataclass
class TeacherOutput:
    """log_probs [B, T, V] float32 (log_softmax over V), lengths [B] int64 valid frames,
    hidden: one [B, T, D] tensor per layer (first layer first) or None."""

    log_probs: Tensor
    lengths: Tensor
    hidden: list[Tensor] | None = None


def is_char_vocabulary(tokens: Sequence[str]) -> bool:
    """True for a character vocabulary: every token is one character or a special symbol in angle
    brackets ("<blk>", "<unk>", Hugging Face's "<s>"); word pieces ("▁the", "ing") make it False."""
    return all(len(t) == 1 or (len(t) > 2 and t[0] == "<" and t[-1] == ">") for t in tokens)


def sha256_json(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys; other types by ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over every tensor of a module's state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class Hypothesis:
    """One transcript of a sequence teacher: ``text`` (normalised for the student) and ``score``
    (the backend's log-probability; Whisper's is per token, length-normalised)."""

    text: str
    score: float


@dataclass
class SequenceOutput:
    """A sequence teacher's result for one utterance.

    ``nbest``: best first (empty when the output was not speech); ``confidence`` in [0, 1] or None;
    ``no_speech_prob``: the backend's probability that the audio holds no speech, or None;
    ``words``: word timings ``{"word", "start", "end", "probability"}`` (seconds) where the backend
    gives them; ``teacher_text``: the best transcript as the teacher wrote it, before
    normalisation; ``reason``: why the teacher's own output is unusable (a non-speech marker, a
    hallucination), or None.
    """

    nbest: list[Hypothesis]
    confidence: float | None = None
    no_speech_prob: float | None = None
    words: list[dict] | None = None
    teacher_text: str | None = None
    reason: str | None = None

    def extras(self) -> dict[str, Any]:
        """The optional fields that are set, for the cache's per-utterance record."""
        d = {"no_speech_prob": self.no_speech_prob, "words": self.words, "teacher_text": self.teacher_text,
             "reason": self.reason}
        return {k: v for k, v in d.items() if v is not None}


@dataclass
class SequenceBatch:
    """`SequenceOutput` per utterance of a batch and, when asked for, the teacher's hidden states:
    one ``[B, T, D]`` float32 tensor per layer with ``lengths`` [B] valid frames each."""

    outputs: list[SequenceOutput]
    hidden: list[Tensor] | None = None
    lengths: Tensor | None = None


class Teacher:
    """Base class of the adapters; see the module docstring for the interface.

    ``teacher(wavs [B, N], wav_lens [B])`` -> `TeacherOutput` with ``log_probs [B, T, V]`` over
    ``vocabulary`` (V tokens), one frame every ``frame_shift`` seconds, for audio at
    ``sample_rate``.
    """

    vocabulary: list[str]
    blank_id: int = BLANK_ID
    sample_rate: int = SAMPLE_RATE
    frame_shift: float
    has_posteriors: bool = True  # False: a sequence teacher (PseudoLabelTeacher, WhisperTeacher)

    def __call__(self, wavs: Tensor, wav_lens: Tensor, return_hidden: bool = False) -> TeacherOutput:
        raise NotImplementedError

    def sequence_outputs(self, wavs: Tensor, wav_lens: Tensor, return_hidden: bool = False) -> SequenceBatch:
        """A sequence teacher's transcripts of ``wavs [B, N]`` (``wav_lens [B]``); see `SequenceBatch`."""
        raise TypeError(f"{type(self).__name__} gives CTC posteriors, not transcripts; the cache decodes them")

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids (collapsed, blank-free) -> text, by the char convention of `vocabulary`:
        "▁" is a space, "<unk>" prints as ⁇, other multi-character symbols ("<s>") print as nothing."""
        out = []
        for i in ids:
            tok = self.vocabulary[int(i)]
            if tok == WORD_SEP:
                out.append(" ")
            elif tok == UNK:
                out.append(UNK_SURFACE)
            elif len(tok) == 1:
                out.append(tok)
            elif not (tok.startswith("<") and tok.endswith(">")):
                out.append(tok.replace(WORD_SEP, " "))  # a word piece
        return " ".join("".join(out).split())

    def describe(self) -> dict[str, Any]:
        """What a cache records of the teacher, part by part (``kind``, ``weights``, ``config``,
        ``frontend``, ``vocabulary``), so that a stale cache can say which part changed."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """One sha256 over `describe()`."""
        return sha256_json(self.describe())

    def hidden_size(self) -> int | None:
        """Width D of the hidden states ``[B, T, D]`` it returns, or None if it has none."""
        return None

