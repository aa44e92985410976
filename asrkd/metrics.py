"""Word and character error rates with substitution / deletion / insertion counts (jiwer).

The scoring every stage shares: the trainer's dev WER, ``asrkd eval`` and the export's
verification (eval/) all call `score`. Rates are fractions (0.05 = 5 %), computed over the
whole corpus (errors summed over utterances, divided by the total reference length), as Kaldi,
NeMo and jiwer report them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer


@dataclass
class ErrorRate:
    """Corpus-level error counts for one unit (words or characters)."""

    rate: float | None
    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    def to_dict(self) -> dict:
        return asdict(self)


def _rate(refs: Sequence[str], hyps: Sequence[str], unit: str) -> ErrorRate:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    # jiwer refuses empty references; score those utterances by hand (every hyp unit is an insertion).
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    extra_ins = sum(len(h.split()) if unit == "word" else len(h.replace(" ", "")) for r, h in zip(refs, hyps) if not r.strip())
    if not pairs:
        return ErrorRate(None, 0, 0, extra_ins, 0)
    r, h = zip(*pairs)
    h = [x if x.strip() else "" for x in h]
    out = jiwer.process_words(list(r), list(h)) if unit == "word" else jiwer.process_characters(list(r), list(h))
    ref_len = out.hits + out.substitutions + out.deletions
    errors = out.substitutions + out.deletions + out.insertions + extra_ins
    return ErrorRate(errors / ref_len, out.substitutions, out.deletions, out.insertions + extra_ins, ref_len)


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> ErrorRate:
    """Corpus WER: (S + D + I) / reference words."""
    return _rate(refs, hyps, "word")


def char_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> ErrorRate:
    """Corpus CER over characters, spaces excluded from neither side (jiwer's convention)."""
    return _rate(refs, hyps, "char")


def utterance_wer(ref: str, hyp: str) -> float | None:
    """WER of one utterance (None for an empty reference)."""
    return word_error_rate([ref], [hyp]).rate


def score(refs: Sequence[str], hyps: Sequence[str], speakers: Sequence[str | None] | None = None) -> dict:
    """WER and CER for a corpus, plus a per-speaker breakdown when speakers are given."""
    wer = word_error_rate(refs, hyps)
    cer = char_error_rate(refs, hyps)
    result = {"wer": wer.rate, "cer": cer.rate, "words": wer.to_dict(), "chars": cer.to_dict(), "utterances": len(refs)}
    if speakers is not None:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, spk in enumerate(speakers):
            groups[spk or "unknown"].append(i)
        result["per_speaker"] = {
            spk: {
                "wer": word_error_rate([refs[i] for i in idx], [hyps[i] for i in idx]).rate,
                "cer": char_error_rate([refs[i] for i in idx], [hyps[i] for i in idx]).rate,
                "utterances": len(idx),
            }
            for spk, idx in sorted(groups.items())
        }
    return result
