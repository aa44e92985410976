"""Word and character error rates with substitution / deletion / insertion counts (jiwer).

The scoring every stage shares: the trainer's dev WER, ``asrkd eval`` and the export's
verification (eval/) all call `score`. Rates are fractions (0.05 = 5 %), computed over the
whole corpus (errors summed over utterances, divided by the total reference length), as Kaldi,
NeMo and jiwer report them.

What `score` does with references that cannot be scored fairly:

- an empty reference (no word after normalisation) is not scored: it has no words to divide by,
  and counting its hypothesis as insertions lets a few unlabelled lines push a WER past 100 %.
  It is listed in ``skipped_references`` with the reason; with no scorable reference at all the
  rates are None (`asrkd eval` then stops with status 2, the export gate fails).
- a reference with characters the model cannot output (its tokenizer has no token for them) is
  scored, since those words are errors the model will make, but listed in ``oov_references``
  with the characters, so that a WER from a mismatched vocabulary does not pass unnoticed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import jiwer

EMPTY_REFERENCE = "empty reference: no word to score against (not scored)"


class Vocabulary(Protocol):
    """What `score` needs of a tokenizer (`asrkd.text.CharTokenizer`, `asrkd.text.BPETokenizer`)."""

    def unknown_characters(self, text: str, normalize: bool = True) -> list[str]: ...


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


def score(refs: Sequence[str], hyps: Sequence[str], speakers: Sequence[str | None] | None = None,
          vocabulary: Vocabulary | None = None, utt_ids: Sequence[str] | None = None) -> dict:
    """WER and CER of a corpus of normalised references ``refs`` and hypotheses ``hyps``, plus a
    per-speaker breakdown when ``speakers`` are given.

    Keys: ``wer``, ``cer`` (None when no reference is scorable), ``words``, ``chars``
    (`ErrorRate` dicts), ``utterances`` (given), ``scored_utterances``, ``skipped_references``
    (``{"index", "reason"}`` of each empty reference, not scored), ``oov_references``
    (``{"index", "characters"}`` of each reference with characters that ``vocabulary`` has no
    token for: scored; only with ``vocabulary``), ``per_speaker`` (scored utterances only). Each
    listed item also has ``utt_id`` when ``utt_ids`` are given.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")

    def item(i: int, **fields) -> dict:
        return {"index": i, **({"utt_id": utt_ids[i]} if utt_ids is not None else {}), **fields}

    kept = [i for i, r in enumerate(refs) if r.strip()]
    scored_refs, scored_hyps = [refs[i] for i in kept], [hyps[i] for i in kept]
    wer = word_error_rate(scored_refs, scored_hyps)
    cer = char_error_rate(scored_refs, scored_hyps)
    result = {"wer": wer.rate, "cer": cer.rate, "words": wer.to_dict(), "chars": cer.to_dict(), "utterances": len(refs),
              "scored_utterances": len(kept),
              "skipped_references": [item(i, reason=EMPTY_REFERENCE) for i, r in enumerate(refs) if not r.strip()]}
    if vocabulary is not None:
        unknown = ((i, vocabulary.unknown_characters(refs[i], normalize=False)) for i in kept)
        result["oov_references"] = [item(i, characters=chars) for i, chars in unknown if chars]
    if speakers is not None:
        groups: dict[str, list[int]] = defaultdict(list)
        for i in kept:
            groups[speakers[i] or "unknown"].append(i)
        result["per_speaker"] = {
            spk: {
                "wer": word_error_rate([refs[i] for i in idx], [hyps[i] for i in idx]).rate,
                "cer": char_error_rate([refs[i] for i in idx], [hyps[i] for i in idx]).rate,
                "utterances": len(idx),
            }
            for spk, idx in sorted(groups.items())
        }
    return result


def oov_summary(items: Sequence[dict], first: int = 3) -> str:
    """One line on ``oov_references`` (`score`): how many, and the first few with their characters."""
    named = ", ".join(f"{x.get('utt_id', x['index'])} ({' '.join(x['characters'])})" for x in items[:first])
    more = f" and {len(items) - first} more" if len(items) > first else ""
    return (f"{len(items)} reference(s) hold characters the model has no token for (scored: their words "
            f"count as errors; is this the model's language and vocabulary?): {named}{more}")
