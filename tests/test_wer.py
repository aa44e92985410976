"""Word confusions: which words an evaluation got wrong, from the WER's own alignment."""

from __future__ import annotations

import pytest

from eval.wer import word_confusions, word_error_rate


def test_word_confusions_name_each_error_and_add_up_to_the_wer():
    refs = ["one eight nine", "eight two", "five", "", "three four"]
    hyps = ["one six nine", "six two nine", "", "seven", "three four"]
    confusions = word_confusions(refs, hyps)
    assert confusions == {("eight", "six"): 2, (None, "nine"): 1, ("five", None): 1, (None, "seven"): 1}
    wer = word_error_rate(refs, hyps)
    assert sum(confusions.values()) == wer.substitutions + wer.deletions + wer.insertions


def test_word_confusions_refuse_unpaired_lists():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_confusions(["a", "b"], ["a"])
