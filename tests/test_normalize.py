"""Teacher text -> student text (asrkd.normalize): one case per rule."""

from __future__ import annotations

import pytest

from asrkd.normalize import TextNormalizer, find_repetition, number_to_words, ordinal_to_words


def test_casing_and_punctuation_follow_the_tokenizers_rule():
    assert TextNormalizer()("Hello, World! Don't stop.").text == "hello world don't stop"


def test_digit_task_spells_every_digit():
    assert TextNormalizer(numbers="digits")("391").text == "three nine one"
    assert TextNormalizer(numbers="digits")("4, 3, 7, 2.").text == "four three seven two"


def test_general_text_reads_numbers_as_words():
    assert TextNormalizer()("10").text == "ten"
    assert TextNormalizer()("1,455 people").text == "one thousand four hundred fifty five people"


def test_zero_reads_zero_or_oh_by_the_setting():
    assert TextNormalizer(numbers="digits")("0").text == "zero"
    assert TextNormalizer(numbers="digits", zero="oh")("0").text == "oh"


def test_digit_homophones_become_digits_in_a_digit_task_only():
    assert TextNormalizer(numbers="digits")("to A9 to 2.").text == "two a nine two two"
    assert TextNormalizer()("to 2").text == "to two"


def test_ordinals_and_decimals():
    assert TextNormalizer()("the 15th and 21st").text == "the fifteenth and twenty first"
    assert TextNormalizer()("3.5").text == "three point five"


def test_symbols_and_currencies_become_words():
    assert TextNormalizer()("10%").text == "ten percent"
    assert TextNormalizer()("$5").text == "five dollars"
    assert TextNormalizer()("R&B").text == "r and b"


def test_abbreviations_expand():
    assert TextNormalizer()("Mr. Smith").text == "mister smith"


@pytest.mark.parametrize("marker", ["[BLANK_AUDIO]", "(music)", " (upbeat music) ", "*sighs*", "♪♪"])
def test_non_speech_outputs_are_recognised(marker):
    out = TextNormalizer()(marker)
    assert out.text == "" and not out.usable and out.reason.startswith("non-speech")


def test_a_non_speech_marker_inside_speech_is_removed():
    assert TextNormalizer()("[MUSIC] Seven.").text == "seven"


def test_a_repeated_phrase_is_a_hallucination():
    out = TextNormalizer()("Thank you. Thank you. Thank you. Thank you.")
    assert not out.usable and "repeated phrase 'thank you'" in out.reason
    assert TextNormalizer()("one one one").usable  # three digits are speech, not a loop


def test_a_known_silence_phrase_is_a_hallucination():
    assert "known hallucination" in TextNormalizer()("Thanks for watching!").reason


def test_number_words_helpers():
    assert number_to_words(0, zero="oh") == "oh"
    assert number_to_words(1_000_017) == "one million seventeen"
    assert ordinal_to_words(100) == "one hundredth"
    assert ordinal_to_words(20) == "twentieth"
    assert find_repetition("a b c a b c".split(), max_repeats=2, max_phrase_words=3) == "a b c"


def test_the_settings_are_described_for_the_fingerprint():
    assert TextNormalizer().describe() != TextNormalizer(zero="oh").describe()
    with pytest.raises(ValueError, match="numbers="):
        TextNormalizer(numbers="roman")
