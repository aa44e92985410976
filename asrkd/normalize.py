"""From a pretrained recogniser's written text to what a character CTC student can spell.

Whisper writes like a subtitler: "4, 3, 7, 2.", "It costs $5.", "15th", "Mr. Smith", "[BLANK_AUDIO]".
A student trained on asrkd's lower-case letters needs "four three seven two", "it costs five
dollars", "fifteenth", "mister smith", and nothing at all for the non-speech marker.
`TextNormalizer` applies these rules, in this order (each is a method, tested one by one):

1. **Non-speech markers** (`strip_non_speech`): bracketed or starred annotations such as
   "[BLANK_AUDIO]", "(music)", "(upbeat music)", "*sighs*", and music notes "♪" are removed. An
   output that is empty afterwards was no speech at all (`NormalizedText.non_speech`).
2. **Abbreviations** (`expand_abbreviations`): "Mr." -> "mister", "Mrs." -> "missus", "Dr." ->
   "doctor", "St." -> "saint", "vs." -> "versus" (the table ``abbreviations``).
3. **Symbols** (`expand_symbols`): currency before a number moves after it ("$5" -> "5 dollars",
   "£3" -> "3 pounds", "€2" -> "2 euros"); "%" -> "percent", "&" -> "and", "+" -> "plus",
   "@" -> "at", "=" -> "equals" (the table ``symbols``).
4. **Numerals** (`spell_numbers`), by ``numbers``:
   - ``"digits"`` (digit-string tasks: phone numbers, PINs, FSDD): every digit on its own,
     "391" -> "three nine one", "4, 3" -> "four three";
   - ``"words"`` (general text): integers as cardinals, "10" -> "ten", "1,455" -> "one thousand
     four hundred fifty five"; ordinals, "15th" -> "fifteenth"; decimals, "3.5" -> "three point
     five".
   "0" reads ``zero`` ("zero" or "oh") in both modes.
5. **Casing and punctuation**: `asrkd.text.normalize_text` (lower case, punctuation to spaces,
   word-internal apostrophes kept), the same rule every asrkd tokenizer applies to manifests.
6. **Digit homophones** (``numbers="digits"`` only, `replace_homophones`): words that sound like
   a digit word become it, "to"/"too" -> "two", "for" -> "four", "won" -> "one", "ate" -> "eight"
   (the table ``homophones``): in a digit task nobody says "to".

`find_repetition` recognises Whisper's looping hallucination ("thank you thank you thank you
..."): a phrase of one to ``max_phrase_words`` words repeated ``max_repeats`` times or more in a
row. `hallucination_phrases` lists whole outputs Whisper is known to produce on silence.

`TextNormalizer.describe()` returns every setting; teachers put it in their fingerprint, so a cache
built under other rules is reported stale.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from asrkd.text import normalize_text

__all__ = ["NormalizedText", "TextNormalizer", "find_repetition", "number_to_words", "ordinal_to_words"]

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]
# Ordinal forms of the words a cardinal can end with; every other word takes "th".
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}

DEFAULT_ABBREVIATIONS = {"mr.": "mister", "mrs.": "missus", "dr.": "doctor", "st.": "saint", "vs.": "versus"}
DEFAULT_SYMBOLS = {"%": "percent", "&": "and", "+": "plus", "@": "at", "=": "equals"}
DEFAULT_CURRENCIES = {"$": "dollars", "£": "pounds", "€": "euros"}
DEFAULT_DIGIT_HOMOPHONES = {"to": "two", "too": "two", "for": "four", "won": "one", "ate": "eight"}
DEFAULT_HALLUCINATIONS = ("thanks for watching", "thank you for watching", "please subscribe",
                          "subtitles by the amara org community")

_NON_SPEECH = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|♪+")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
# A number as written: "1,455", "3.5", "391"; the comma form needs groups of three (so "4, 3" is two).
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def number_to_words(n: int, zero: str = "zero") -> str:
    """A non-negative integer as English words without "and" or hyphens: 1455 -> "one thousand four
    hundred fifty five"; 0 -> ``zero``."""
    if n < 0:
        raise ValueError(f"number_to_words: {n} is negative")
    if n == 0:
        return zero
    words: list[str] = []
    for scale, name in _SCALES:
        if n >= scale:
            words += [number_to_words(n // scale), name]
            n %= scale
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
    if n:
        words.append(_ONES[n])
    return " ".join(words)


def ordinal_to_words(n: int) -> str:
    """A positive integer as an ordinal: 15 -> "fifteenth", 21 -> "twenty first", 100 -> "one hundredth"."""
    *head, last = number_to_words(n).split()
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def find_repetition(words: list[str], max_repeats: int, max_phrase_words: int) -> str | None:
    """The phrase (1..``max_phrase_words`` words) that ``words`` repeats ``max_repeats`` times or
    more in a row, or None."""
    for size in range(1, max_phrase_words + 1):
        for start in range(len(words) - size * max_repeats + 1):
            phrase = words[start : start + size]
            if all(words[start + k * size : start + (k + 1) * size] == phrase for k in range(1, max_repeats)):
                return " ".join(phrase)
    return None


@dataclass(frozen=True)
class NormalizedText:
    """The result of `TextNormalizer.__call__`: ``text`` in the student's conventions and, when the
    output should not be learnt from, ``reason`` ("non-speech output '[BLANK_AUDIO]'", "repeated
    phrase 'thank you' (4 times or more)", "known hallucination 'thanks for watching'")."""

    text: str
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class TextNormalizer:
    """Teacher text -> student text; the rules are listed in the module docstring.

    >>> TextNormalizer(numbers="digits")("4, 3, 7, 2.").text
    'four three seven two'
    >>> TextNormalizer()("It's 10% off, Mr. Smith!").text
    "it's ten percent off mister smith"
    """

    numbers: str = "words"  # "words" (general text) or "digits" (digit-string tasks)
    zero: str = "zero"  # how "0" reads: "zero" or "oh"
    max_repeats: int = 4  # a phrase repeated this often in a row is a hallucination
    max_phrase_words: int = 4
    abbreviations: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ABBREVIATIONS))
    symbols: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SYMBOLS))
    currencies: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CURRENCIES))
    homophones: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DIGIT_HOMOPHONES))
    hallucination_phrases: tuple[str, ...] = DEFAULT_HALLUCINATIONS

    def __post_init__(self) -> None:
        if self.numbers not in ("words", "digits"):
            raise ValueError(f"numbers={self.numbers!r}: use 'words' (general text) or 'digits' (digit strings)")
        if self.zero not in ("zero", "oh"):
            raise ValueError(f"zero={self.zero!r}: use 'zero' or 'oh'")
        if self.max_repeats < 2 or self.max_phrase_words < 1:
            raise ValueError("max_repeats must be >= 2 and max_phrase_words >= 1")

    def describe(self) -> dict:
        """Every setting (JSON-ready): part of a teacher's fingerprint."""
        d = asdict(self)
        d["hallucination_phrases"] = list(self.hallucination_phrases)
        return d

    # -------------------------------------------------------------- the rules, in order
    @staticmethod
    def strip_non_speech(text: str) -> tuple[str, list[str]]:
        """Remove "[BLANK_AUDIO]", "(music)", "*sighs*", "♪"; returns (rest, removed markers)."""
        return _NON_SPEECH.sub(" ", text), _NON_SPEECH.findall(text)

    def expand_abbreviations(self, text: str) -> str:
        """"Mr. Smith" -> "mister Smith" (case-insensitive, whole words only)."""
        for short, long in self.abbreviations.items():
            text = re.sub(rf"(?<!\w){re.escape(short)}", f" {long} ", text, flags=re.IGNORECASE)
        return text

    def expand_symbols(self, text: str) -> str:
        """"$5" -> "5 dollars", "10%" -> "10 percent", "R&B" -> "R and B"."""
        for sign, name in self.currencies.items():
            text = re.sub(rf"{re.escape(sign)}\s*({_NUMBER.pattern})", rf"\1 {name}", text)
        for sign, name in self.symbols.items():
            text = text.replace(sign, f" {name} ")
        return text

    def spell_numbers(self, text: str) -> str:
        """Digits -> words by ``numbers`` ("digits": one word per digit; "words": cardinals,
        ordinals, decimals)."""
        if self.numbers == "digits":
            return re.sub(r"\d", lambda m: f" {self._digit(int(m.group()))} ", text)
        text = _ORDINAL.sub(lambda m: f" {ordinal_to_words(int(m.group(1)))} ", text)
        return _NUMBER.sub(lambda m: f" {self._number(m.group())} ", text)

    def replace_homophones(self, text: str) -> str:
        """In a digit task, "to" -> "two", "for" -> "four", ... (normalised text, whole words)."""
        if self.numbers != "digits":
            return text
        return " ".join(self.homophones.get(w, w) for w in text.split())

    def _digit(self, d: int) -> str:
        return self.zero if d == 0 else _ONES[d]

    def _number(self, written: str) -> str:
        whole, _, fraction = written.replace(",", "").partition(".")
        words = number_to_words(int(whole), self.zero)
        if fraction:
            words += " point " + " ".join(self._digit(int(d)) for d in fraction)
        return words

    # -------------------------------------------------------------- all of them
    def __call__(self, text: str) -> NormalizedText:
        """Apply the rules in order; flag non-speech outputs and hallucinations."""
        rest, markers = self.strip_non_speech(text)
        text = normalize_text(self.spell_numbers(self.expand_symbols(self.expand_abbreviations(rest))))
        text = self.replace_homophones(text)
        if not text:
            what = " ".join(markers) if markers else text
            return NormalizedText("", f"non-speech output {what!r}" if markers else "empty output")
        if text in self.hallucination_phrases:
            return NormalizedText(text, f"known hallucination {text!r}")
        phrase = find_repetition(text.split(), self.max_repeats, self.max_phrase_words)
        if phrase is not None:
            return NormalizedText(text, f"repeated phrase {phrase!r} ({self.max_repeats} times or more)")
        return NormalizedText(text)
