"""Error rates of a corpus (`asrkd.metrics`, re-exported here) and what they are made of.

`asrkd.metrics` holds the corpus WER / CER that training needs too; this module adds the
analyses that only evaluation uses: which words were confused with which.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import jiwer

from asrkd.metrics import ErrorRate, char_error_rate, score, utterance_wer, word_error_rate

__all__ = ["ErrorRate", "char_error_rate", "score", "utterance_wer", "word_confusions", "word_error_rate"]


def word_confusions(refs: Sequence[str], hyps: Sequence[str]) -> Counter:
    """Word errors by kind: ``(ref_word, hyp_word)`` for a substitution, ``(ref_word, None)``
    for a deletion and ``(None, hyp_word)`` for an insertion, counted over the corpus from the
    same alignment as the WER (their total is S + D + I)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    counts: Counter = Counter()
    for ref, hyp in zip(refs, hyps):
        r, h = ref.split(), hyp.split()
        if not r:
            counts.update((None, w) for w in h)
            continue
        for chunk in jiwer.process_words(ref, hyp if h else "").alignments[0]:
            rw, hw = r[chunk.ref_start_idx : chunk.ref_end_idx], h[chunk.hyp_start_idx : chunk.hyp_end_idx]
            if chunk.type == "substitute":
                counts.update(zip(rw, hw))
            elif chunk.type == "delete":
                counts.update((w, None) for w in rw)
            elif chunk.type == "insert":
                counts.update((None, w) for w in hw)
    return counts
