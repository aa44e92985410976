"""Text normalisation and tokenizers: what a user relies on when building a vocabulary."""

from __future__ import annotations

import json

import pytest

from asrkd.text import (
    BPETokenizer,
    CharTokenizer,
    TokenizerFileError,
    UnknownCharactersError,
    load_tokenizer,
    normalize_text,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello,  World!", "hello world"),
        ("Don\u2019t STOP", "don't stop"),  # curly apostrophe, in a word
        ("'quoted' dogs'", "quoted dogs"),  # quotes and trailing apostrophes go
        ("well-known\tfact\n", "well known fact"),
        ("\uff21\uff22\uff23", "abc"),  # NFKC folds full-width letters
        ("zero\u200bwidth", "zerowidth"),  # format characters vanish
        ("I have 42 $", "i have 42 $"),  # numbers and symbols are not touched
        ("caf\u00e9", "caf\u00e9"),
        ("a\u2581b", "a b"),  # the separator symbol cannot sneak in as a character
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_char_round_trip_and_layout():
    tok = CharTokenizer.default_english()
    assert tok.tokens[:3] == ["<blk>", "\u2581", "'"]
    assert tok.vocab_size == 29 and tok.blank_id == 0
    ids = tok.encode("It's  a Test.")
    assert ids[4] == 1 and 0 not in ids  # the space became ▁, never the blank
    assert tok.decode(ids) == "it's a test"
    assert tok.decode([0, *ids, 0]) == "it's a test"  # blanks are skipped
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_unknown_characters_are_all_listed():
    tok = CharTokenizer.default_english()
    with pytest.raises(UnknownCharactersError) as exc:
        tok.encode("caf\u00e9 costs 3 \u20ac, 3 \u00e9")
    assert exc.value.characters == ["\u00e9", "3", "\u20ac"]  # distinct, first-seen order
    msg = str(exc.value)
    assert "U+00E9" in msg and "U+0033" in msg and "U+20AC" in msg


def test_unk_mode_maps_unknown_characters():
    tok = CharTokenizer.from_texts(["hello world"], add_unk=True)
    assert tok.tokens == ["<blk>", "\u2581", "d", "e", "h", "l", "o", "r", "w", "<unk>"]
    ids = tok.encode("hello to that")
    assert ids.count(tok.unk_id) == 4  # t, t, t, a
    assert tok.decode(ids) == "hello \u2047o \u2047h\u2047\u2047"
    assert tok.unknown_characters("Hello To That") == ["t", "a"]


def test_from_texts_is_deterministic():
    a = CharTokenizer.from_texts(["b a", "c"])
    b = CharTokenizer.from_texts(["c", "a b"])
    assert a == b and a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != CharTokenizer.from_texts(["a b c d"]).fingerprint()


def test_tokens_txt_round_trip(tmp_path):
    tok = CharTokenizer.from_texts(["don't panic", "zebra"], add_unk=True)
    path = tok.save(tmp_path)
    assert path.name == "tokens.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[:2] == ["<blk> 0", "\u2581 1"] and lines[-1] == f"<unk> {tok.vocab_size - 1}"
    again = CharTokenizer.load(path)
    assert again == tok and again.fingerprint() == tok.fingerprint()
    assert load_tokenizer(path) == tok and load_tokenizer(tmp_path) == tok
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


@pytest.mark.parametrize(
    "content, line, what",
    [
        ("<blk> 0\n\u2581 1\na\n", 3, "expected 'symbol id'"),
        ("<blk> 0\n\u2581 1\na x\n", 3, "not an integer"),
        ("<blk> 0\n\u2581 1\na 2\nb 2\n", 4, "duplicate id 2"),
        ("<blk> 0\n\u2581 1\na 2\nb 4\n", 4, "expected 3"),
        ("\u2581 0\n<blk> 1\n", 1, "'<blk> 0'"),
        ("<blk> 0\n\u2581 1\na 2\na 3\n", 4, "duplicate symbol"),
    ],
)
def test_malformed_tokens_txt_names_the_line(tmp_path, content, line, what):
    path = tmp_path / "tokens.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerFileError) as exc:
        CharTokenizer.load(path)
    assert f"{path}:{line}:" in str(exc.value)
    assert what in str(exc.value)


def test_char_to_dict_survives_json_and_detects_tampering():
    tok = CharTokenizer.default_english()
    d = json.loads(json.dumps(tok.to_dict()))
    assert load_tokenizer(d) == tok
    d["tokens"] = d["tokens"][:-1]
    with pytest.raises(TokenizerFileError, match="fingerprint mismatch"):
        load_tokenizer(d)


CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "one two three four five six seven eight nine zero",
    "she sells sea shells by the sea shore",
    "peter piper picked a peck of pickled peppers",
    "how much wood would a woodchuck chuck",
] * 4


def test_bpe_train_round_trip_and_blank(tmp_path):
    tok = BPETokenizer.train(CORPUS, vocab_size=64, out_dir=tmp_path)
    assert tok.vocab_size == 64 and tok.blank_id == 0 and tok.tokens[0] == "<blk>"
    assert (tmp_path / "bpe.model").is_file() and (tmp_path / "tokens.txt").is_file()
    text = "The lazy fox, picked sea shells!"
    ids = tok.encode(text)
    assert 0 not in ids and all(0 < i < tok.vocab_size for i in ids)
    assert len(ids) < len(normalize_text(text))  # merges happened: not one token per char
    assert tok.decode([0, *ids]) == "the lazy fox picked sea shells"
    assert tok.unknown_characters("the fox jumped 9 times") == ["9"]

    # deterministic: a second training run produces the same model
    assert BPETokenizer.train(CORPUS, vocab_size=64).fingerprint() == tok.fingerprint()

    # every way of loading it back gives the same tokenizer
    for source in (tmp_path, tmp_path / "bpe.model", tmp_path / "tokens.txt"):
        assert load_tokenizer(source) == tok
    restored = load_tokenizer(json.loads(json.dumps(tok.to_dict())))
    assert isinstance(restored, BPETokenizer) and restored.encode(text) == ids
    assert restored.fingerprint() == tok.fingerprint()


def test_bpe_too_large_vocab_says_the_limit():
    with pytest.raises(ValueError, match=r"at most \d+"):
        BPETokenizer.train(["ab ba"], vocab_size=500)


def test_stale_bpe_tokens_txt_is_rejected(tmp_path):
    BPETokenizer.train(CORPUS, vocab_size=64, out_dir=tmp_path)
    CharTokenizer.default_english().save(tmp_path / "tokens.txt")
    with pytest.raises(TokenizerFileError, match="does not match"):
        load_tokenizer(tmp_path / "tokens.txt")
