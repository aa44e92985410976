"""Which of a sequence teacher's transcripts a student can learn from.

A pretrained recogniser's output is not always a usable target: Whisper answers silence with
"[BLANK_AUDIO]" or "Thank you.", loops on a phrase, writes words a character student cannot spell,
or says more than a CTC student can emit in the time it has. `UtteranceFilter` names the reason
for each utterance it rejects; the posterior cache applies it while building
(`asrkd.cache.build_cache`), keeps the rejected utterances' N-best empty (so pseudo-labelling drops
them, `asrkd.pseudo_labels`) and records every drop with its reason in ``drops.jsonl`` and the
counts per reason in ``cache.json``.

Reasons, checked in this order (the first that applies is recorded):

=====================  ===========================================================================
``non_speech``         the teacher's text was only a non-speech marker ("[BLANK_AUDIO]", "(music)")
                       or empty (`asrkd.normalize.TextNormalizer`)
``hallucination``      a phrase repeated ``max_repeats`` times or a known silence phrase
``too_long_for_teacher``  audio longer than the teacher's window (Whisper: 30 s)
``no_speech``          no-speech probability above ``max_no_speech_prob``
``low_confidence``     confidence below ``min_confidence``
``unspellable``        characters outside the student's vocabulary ``tokens``
``out_of_lexicon``     a word outside ``lexicon`` (when one is given: a closed-vocabulary task)
``too_long_for_ctc``   more CTC labels (tokens + a blank between repeated tokens) than the student
                       has output frames for the audio
=====================  ===========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asrkd.contract import Contract
from asrkd.data.check import ctc_min_frames
from asrkd.teachers.base import SequenceOutput
from asrkd.text import CharTokenizer

__all__ = ["DROP_REASONS", "Drop", "UtteranceFilter", "default_student_contract"]

DROP_REASONS = ("non_speech", "hallucination", "too_long_for_teacher", "no_speech", "low_confidence",
                "unspellable", "out_of_lexicon", "too_long_for_ctc")


def default_student_contract() -> Contract:
    """The default student's contract (default front end, default Conformer subsampling)."""
    from asrkd.features import FrontendConfig
    from asrkd.models.conformer import ConformerConfig

    tokenizer = CharTokenizer.default_english()
    return Contract.from_parts(FrontendConfig(), ConformerConfig(vocab_size=tokenizer.vocab_size), tokenizer)


@dataclass(frozen=True)
class Drop:
    """Why an utterance was dropped: ``reason`` (one of `DROP_REASONS`) and a sentence for people."""

    reason: str
    detail: str


@dataclass(frozen=True)
class UtteranceFilter:
    """Accept or reject one `SequenceOutput` of an utterance of ``num_samples`` samples.

    ``tokens``: the student's vocabulary (default `CharTokenizer.default_english`); ``student``:
    its `Contract` for the output frame count (default `default_student_contract`);
    ``max_seconds``: the teacher's window (None: no limit).
    """

    tokens: tuple[str, ...] = field(default_factory=lambda: tuple(CharTokenizer.default_english().tokens))
    student: Contract = field(default_factory=default_student_contract)
    min_confidence: float = 0.0
    max_no_speech_prob: float = 0.6
    lexicon: tuple[str, ...] | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0 or not 0.0 <= self.max_no_speech_prob <= 1.0:
            raise ValueError(f"min_confidence ({self.min_confidence}) and max_no_speech_prob "
                             f"({self.max_no_speech_prob}) must be in [0, 1]")
        object.__setattr__(self, "_tokenizer", CharTokenizer(list(self.tokens)))

    def describe(self) -> dict:
        """Every setting (JSON-ready): recorded in the cache request, so changing one rebuilds it."""
        return {"tokens": list(self.tokens), "student": self.student.to_dict(), "min_confidence": self.min_confidence,
                "max_no_speech_prob": self.max_no_speech_prob,
                "lexicon": None if self.lexicon is None else sorted(self.lexicon), "max_seconds": self.max_seconds}

    def __call__(self, out: SequenceOutput, num_samples: int) -> Drop | None:
        """The first reason (module docstring order) to drop the utterance, or None to keep it."""
        if out.reason is not None:
            kind = "non_speech" if out.reason.startswith(("non-speech", "empty")) else "hallucination"
            return Drop(kind, out.reason)
        seconds = num_samples / self.student.sample_rate
        if self.max_seconds is not None and seconds > self.max_seconds:
            return Drop("too_long_for_teacher", f"{seconds:.2f} s of audio, the teacher hears {self.max_seconds:g} s")
        if out.no_speech_prob is not None and out.no_speech_prob > self.max_no_speech_prob:
            return Drop("no_speech", f"no-speech probability {out.no_speech_prob:.3f} > {self.max_no_speech_prob}")
        if out.confidence is not None and out.confidence < self.min_confidence:
            return Drop("low_confidence", f"confidence {out.confidence:.3f} < {self.min_confidence}")
        text = out.nbest[0].text if out.nbest else ""
        if not text:
            return Drop("non_speech", "empty output")
        unknown = self._tokenizer.unknown_characters(text)
        if unknown and getattr(self._tokenizer, "unk_id", None) is None:
            return Drop("unspellable", f"{text!r} has characters outside the student vocabulary: {unknown}")
        if self.lexicon is not None:
            outside = sorted(set(text.split()) - set(self.lexicon))
            if outside:
                return Drop("out_of_lexicon", f"{text!r} has words outside the lexicon: {outside}")
        needed = ctc_min_frames(self._tokenizer.encode(text))
        have = self.student.output_frames(num_samples)
        if needed > have:
            return Drop("too_long_for_ctc", f"{text!r} needs {needed} CTC frames, the student has {have} "
                                            f"for {seconds:.2f} s")
        return None
