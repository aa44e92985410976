"""Text normalisation and the CTC vocabulary (the single home of `tokens.txt`).

Two tokenizers share one interface:

- `CharTokenizer`: one token per character. `tokens.txt` is the whole model.
- `BPETokenizer`: SentencePiece BPE for larger vocabularies. `bpe.model` is the model, the
  `tokens.txt` written beside it lists the same vocabulary for runtimes that only read symbols.

Both reserve id 0 for the CTC blank `<blk>` and use `▁` (U+2581, SentencePiece's meta symbol) as
the word separator, so a `tokens.txt` from either works unchanged with sherpa-onnx / WeNet style
decoders. Both `encode` *normalised* text: callers pass raw manifest text, and training,
evaluation and export see the same ids for it because `normalize_text` is applied in one place.

`tokens.txt` format: one `symbol id` per line, ids 0, 1, 2, ... in order, `<blk> 0` first.

Which tokenizer a path means (`load_tokenizer`):

- a `.model` file: `BPETokenizer`;
- a folder: `bpe.model` in it if present, else its `tokens.txt`;
- a `tokens.txt`: `BPETokenizer` if a `bpe.model` lies beside it (the pair `BPETokenizer.save`
  writes; the two must agree), else `CharTokenizer`;
- a dict (from a checkpoint's `config.json`): by its `"type"` key, `"char"` or `"bpe"`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from asrkd.contract import BLANK_ID
from asrkd.errors import AsrkdError
from asrkd.fileio import atomic_write_bytes

BLANK = "<blk>"
UNK = "<unk>"
WORD_SEP = "\u2581"  # ▁, SentencePiece's meta symbol; also what sherpa-onnx expects
TOKENS_FILENAME = "tokens.txt"
BPE_MODEL_FILENAME = "bpe.model"
UNK_SURFACE = "\u2047"  # ⁇, what SentencePiece prints for <unk>; used by both tokenizers

_APOSTROPHES = str.maketrans({c: "'" for c in "\u2018\u2019\u02bc\u2032\u0060\u00b4"})
_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Normalise transcript text the way every tokenizer here expects it.

    What it does, in order:

    1. Unicode NFKC (full-width forms, ligatures, compatibility characters fold to plain ones).
    2. Lowercase (`str.lower`, not `casefold`: "ß" stays "ß").
    3. Curly and typographic apostrophes (’ ‘ ʼ ′ ` ´) become `'`.
    4. Punctuation (Unicode categories P*) becomes a space, except an apostrophe with a letter or
       digit on both sides ("don't", "o'clock" keep it; "'quoted'" and "dogs'" lose it).
       Hyphens and slashes separate words: "well-known" -> "well known".
    5. Invisible format characters (category Cf, e.g. zero-width space, BOM) are removed;
       control characters (Cc, e.g. tabs, newlines) and `▁` (reserved as the word separator)
       become spaces.
    6. Whitespace runs collapse to one space; leading and trailing spaces are stripped.

    What it does not do: spell out numbers ("42" stays "42"), expand abbreviations ("dr."
    becomes "dr"), remove symbols that are not punctuation ("$", "%", "+", "&" stay, so that a
    tokenizer flags them instead of the meaning silently changing), or transliterate accents
    ("café" stays "café").
    """
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    out: list[str] = []
    n = len(text)
    for i, ch in enumerate(text):
        if ch == "'":
            inside = 0 < i < n - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append("'" if inside else " ")
            continue
        cat = unicodedata.category(ch)
        if cat == "Cf":
            continue
        if cat[0] == "P" or cat == "Cc" or ch == WORD_SEP:
            out.append(" ")
        else:
            out.append(ch)
    return _WS.sub(" ", "".join(out)).strip()


def _describe_char(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')})"


class UnknownCharactersError(AsrkdError, ValueError):
    """Text holds characters the vocabulary cannot represent.

    `characters` lists every distinct unknown character in order of first appearance.
    """

    def __init__(self, characters: Sequence[str], text: str):
        self.characters = list(characters)
        self.text = text
        listed = ", ".join(_describe_char(c) for c in self.characters)
        super().__init__(
            f"{len(self.characters)} character(s) not in the vocabulary: {listed} in {text!r}; "
            "fix the transcript, build the vocabulary from your training texts "
            "(CharTokenizer.from_texts) or add <unk> (add_unk=True)"
        )


class TokenizerFileError(AsrkdError, ValueError):
    """A `tokens.txt` or tokenizer dict is malformed; the message names file:line."""


def vocabulary_sha256(tokens: Sequence[str]) -> str:
    """sha256 of a vocabulary's canonical `tokens.txt` (a character tokenizer's `fingerprint`):
    equal iff the symbols and their ids are; what errors name a vocabulary by."""
    return _sha256(_tokens_txt(tokens).encode("utf-8"))


def _tokens_txt(tokens: Sequence[str]) -> str:
    return "".join(f"{sym} {i}\n" for i, sym in enumerate(tokens))


def _read_tokens_txt(path: Path) -> list[str]:
    """Parse and validate `tokens.txt`; every error names `path:line`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TokenizerFileError(
            f"{path}: no such file; pass a tokens.txt or a bpe.model"
        ) from None
    except UnicodeDecodeError as e:
        raise TokenizerFileError(
            f"{path}: not UTF-8 text ({e}); tokens.txt must be UTF-8"
        ) from None
    tokens: list[str] = []
    seen_sym: dict[str, int] = {}
    seen_id: dict[int, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerFileError(
                f"{where}: expected 'symbol id', got {line!r}; one symbol and its integer id per line"
            )
        sym, sid = parts
        try:
            idx = int(sid)
        except ValueError:
            raise TokenizerFileError(f"{where}: id {sid!r} of {sym!r} is not an integer") from None
        if not tokens and (sym != BLANK or idx != BLANK_ID):
            raise TokenizerFileError(
                f"{where}: first entry is {line.strip()!r}, expected '{BLANK} {BLANK_ID}'; "
                f"the CTC blank must be id {BLANK_ID}"
            )
        if idx in seen_id:
            raise TokenizerFileError(
                f"{where}: duplicate id {idx} (also on line {seen_id[idx]}); ids must be unique"
            )
        if sym in seen_sym:
            raise TokenizerFileError(
                f"{where}: duplicate symbol {sym!r} (also on line {seen_sym[sym]})"
            )
        if idx != len(tokens):
            raise TokenizerFileError(
                f"{where}: id {idx} of {sym!r} breaks the sequence, expected {len(tokens)}; "
                "ids must be 0, 1, 2, ... in file order"
            )
        seen_id[idx] = lineno
        seen_sym[sym] = lineno
        tokens.append(sym)
    if not tokens:
        raise TokenizerFileError(f"{path}: empty; expected '{BLANK} {BLANK_ID}' and one line per symbol")
    return tokens


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


class _CTCVocabulary:
    """What both tokenizers share: ``tokens`` (id -> symbol, `<blk>` at ``blank_id``) and what
    follows from it. ``_known_chars`` holds the characters that have a token of their own."""

    blank_id = BLANK_ID
    tokens: list[str]
    _known_chars: frozenset[str]

    @property
    def vocab_size(self) -> int:
        """Ids the CTC head outputs (V of its ``[B, T, V]`` log-probs), blank included."""
        return len(self.tokens)

    def unknown_characters(self, text: str, normalize: bool = True) -> list[str]:
        """Distinct characters of `text` (after normalisation) without a token of their own: they
        encode to `<unk>` (a character vocabulary without `<unk>` refuses them)."""
        if normalize:
            text = normalize_text(text)
        return list(dict.fromkeys(c for c in text if c != " " and c not in self._known_chars))

    def tokens_txt(self) -> str:
        """Canonical `tokens.txt` content (also what runtimes that only read symbols use)."""
        return _tokens_txt(self.tokens)

    def _non_blank(self, ids: Iterable[int]) -> list[int]:
        """``ids`` as ints without the blanks; an id outside the vocabulary is an error."""
        n = len(self.tokens)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {n})")
            if i != self.blank_id:
                out.append(i)
        return out


class CharTokenizer(_CTCVocabulary):
    """Character vocabulary for CTC: `<blk>` = 0, `▁` (word separator) = 1, then characters.

    With `<unk>` in the vocabulary (`from_texts(..., add_unk=True)`), unknown characters encode
    to it; without, `encode` raises `UnknownCharactersError` listing all of them. A "character"
    is one Unicode code point after `normalize_text` (NFKC).
    """

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if not tokens or tokens[BLANK_ID] != BLANK:
            raise ValueError(f"tokens[{BLANK_ID}] must be {BLANK!r}, got {tokens[:1]}")
        if WORD_SEP not in tokens:
            raise ValueError(f"the vocabulary has no word separator {WORD_SEP!r} (U+2581)")
        if len(set(tokens)) != len(tokens):
            dup = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(f"duplicate tokens: {dup}")
        bad = [t for t in tokens if len(t) != 1 and t not in (BLANK, UNK)]
        if bad:
            raise ValueError(
                f"a character vocabulary holds single characters, <blk> and <unk>; got {bad[:5]}"
                " (multi-character symbols mean a BPE vocabulary: load it with its bpe.model)"
            )
        self.tokens: list[str] = tokens
        self._ids = {t: i for i, t in enumerate(tokens)}
        self._known_chars = frozenset(self._ids)
        self.unk_id: int | None = self._ids.get(UNK)
        self.word_sep_id = self._ids[WORD_SEP]

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts: Iterable[str], add_unk: bool = False) -> CharTokenizer:
        """Vocabulary of every character in `texts` (normalised), sorted by code point."""
        chars: set[str] = set()
        for t in texts:
            chars.update(normalize_text(t))
        chars.discard(" ")
        tokens = [BLANK, WORD_SEP, *sorted(chars)]
        if add_unk:
            tokens.append(UNK)
        return cls(tokens)

    @classmethod
    def default_english(cls) -> CharTokenizer:
        """`<blk>`, `▁`, `'`, a-z: 29 tokens."""
        return cls([BLANK, WORD_SEP, "'", *"abcdefghijklmnopqrstuvwxyz"])

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        """Read a `tokens.txt` (or a folder holding one); errors name file:line."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENS_FILENAME
        tokens = _read_tokens_txt(path)
        try:
            return cls(tokens)
        except ValueError as e:
            raise TokenizerFileError(f"{path}: {e}") from None

    # -- interface --------------------------------------------------------------------------
    def encode(self, text: str, normalize: bool = True) -> list[int]:
        """Text -> ids. Spaces become `▁`; no leading or trailing `▁`."""
        if normalize:
            text = normalize_text(text)
        unknown = self.unknown_characters(text, normalize=False)
        if unknown and self.unk_id is None:
            raise UnknownCharactersError(unknown, text)
        ids = self._ids
        unk = self.unk_id
        return [self.word_sep_id if c == " " else ids.get(c, unk) for c in text]  # type: ignore[misc]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Blanks are skipped (CTC repeats must already be collapsed)."""
        out: list[str] = []
        for i in self._non_blank(ids):
            tok = self.tokens[i]
            out.append(" " if tok == WORD_SEP else UNK_SURFACE if tok == UNK else tok)
        return _WS.sub(" ", "".join(out)).strip()

    def save(self, path: str | os.PathLike) -> Path:
        """Write `tokens.txt` atomically. `path` is the file, or a folder to write it into."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENS_FILENAME
        atomic_write_bytes(path, self.tokens_txt().encode("utf-8"))
        return path

    def fingerprint(self) -> str:
        """sha256 of the canonical `tokens.txt`: equal iff the vocabularies are identical."""
        return vocabulary_sha256(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint's config.json stores under ``tokenizer`` (the vocabulary itself)."""
        return {"type": "char", "tokens": list(self.tokens), "fingerprint": self.fingerprint()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        """Inverse of `to_dict`; the stored fingerprint must match the tokens."""
        if d.get("type") != "char" or not isinstance(d.get("tokens"), list):
            raise TokenizerFileError(
                f"not a char tokenizer dict (type={d.get('type')!r}); expected keys 'type'='char', 'tokens'"
            )
        tok = cls(d["tokens"])
        _check_fingerprint(tok, d)
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk={self.unk_id is not None})"


def _check_fingerprint(tok: CharTokenizer | BPETokenizer, d: dict[str, Any]) -> None:
    want = d.get("fingerprint")
    if want is not None and want != tok.fingerprint():
        raise TokenizerFileError(
            f"tokenizer fingerprint mismatch: dict says {want[:12]}…, content hashes to "
            f"{tok.fingerprint()[:12]}…; the embedded vocabulary was edited or corrupted, and the model's "
            "outputs would be read with the wrong symbols (restore the original tokenizer or checkpoint)"
        )


class BPETokenizer(_CTCVocabulary):
    """SentencePiece BPE for CTC. Our id = SentencePiece id + 1, so id 0 is the CTC blank.

    SentencePiece's `<unk>` (its id 0, our id 1) is kept: characters the model never saw
    encode to it rather than raising (use `unknown_characters` or `asrkd manifest check` to
    find them). Text is normalised by `normalize_text` before SentencePiece sees it, and the
    model is trained with SentencePiece's own normalisation off ("identity"), so there is one
    normaliser.
    """

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        n = self._sp.get_piece_size()
        self.tokens: list[str] = [BLANK, *(self._sp.id_to_piece(i) for i in range(n))]
        if BLANK in self.tokens[1:]:
            raise ValueError(f"the SentencePiece model already defines {BLANK!r}; cannot shift ids")
        sp_unk = self._sp.unk_id()
        self.unk_id: int | None = sp_unk + 1 if sp_unk >= 0 else None
        sp = self._sp
        self._known_chars = frozenset(
            p
            for i, p in enumerate(self.tokens[1:])
            if len(p) == 1
            and p != WORD_SEP
            and not (sp.is_unknown(i) or sp.is_control(i) or sp.is_unused(i))
        )

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        out_dir: str | os.PathLike | None = None,
    ) -> BPETokenizer:
        """Train a BPE model on `texts` (normalised first); deterministic for the same texts.

        `vocab_size` counts every id the CTC head outputs, blank included (the SentencePiece
        model gets `vocab_size - 1` pieces). Writes `out_dir/bpe.model` and `out_dir/tokens.txt`
        when `out_dir` is given.
        """
        import sentencepiece as spm

        norm = [t for t in (normalize_text(x) for x in texts) if t]
        if not norm:
            raise ValueError("BPETokenizer.train: no non-empty text to train on")
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(norm),
                model_writer=buf,
                model_type="bpe",
                vocab_size=vocab_size - 1,
                character_coverage=1.0,
                normalization_rule_name="identity",
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                num_threads=1,  # SentencePiece's parallel merge counting is not order-stable
                input_sentence_size=0,  # use every sentence: no random sampling
                shuffle_input_sentence=False,
                minloglevel=2,
            )
        except RuntimeError as e:
            m = re.search(r"value <= (\d+)", str(e))
            hint = f"; at most {int(m.group(1)) + 1} for these texts" if m else ""
            raise ValueError(
                f"BPE training failed for vocab_size={vocab_size}{hint}: {e}"
            ) from None
        tok = cls(buf.getvalue())
        if out_dir is not None:
            tok.save(out_dir)
        return tok

    @classmethod
    def load(cls, model_path: str | os.PathLike) -> BPETokenizer:
        """Load a SentencePiece `.model` (or a folder holding `bpe.model`)."""
        path = Path(model_path)
        if path.is_dir():
            path = path / BPE_MODEL_FILENAME
        try:
            proto = path.read_bytes()
        except FileNotFoundError:
            raise TokenizerFileError(f"{path}: no such SentencePiece model") from None
        try:
            return cls(proto)
        except (RuntimeError, OSError) as e:
            raise TokenizerFileError(f"{path}: not a SentencePiece model ({e})") from None

    def encode(self, text: str, normalize: bool = True) -> list[int]:
        """Text -> ids (SentencePiece's, shifted past the blank); unseen characters -> `<unk>`."""
        if normalize:
            text = normalize_text(text)
        return [i + 1 for i in self._sp.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Blanks are skipped (CTC repeats must already be collapsed)."""
        return _WS.sub(" ", self._sp.decode([i - 1 for i in self._non_blank(ids)])).strip()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model and its `tokens.txt` side by side (atomic); returns the model path.

        `path` is a folder (-> `bpe.model`, `tokens.txt` in it), a `.txt` file (the token list;
        `bpe.model` goes beside it) or a `.model` file (`tokens.txt` goes beside it).
        """
        path = Path(path)
        if path.suffix == ".model":
            model, tokens = path, path.with_name(TOKENS_FILENAME)
        elif path.suffix == ".txt":
            model, tokens = path.with_name(BPE_MODEL_FILENAME), path
        else:
            model, tokens = path / BPE_MODEL_FILENAME, path / TOKENS_FILENAME
        atomic_write_bytes(model, self._proto)
        atomic_write_bytes(tokens, self.tokens_txt().encode("utf-8"))
        return model

    def fingerprint(self) -> str:
        """sha256 over the vocabulary and the model bytes: identifies this exact model."""
        return _sha256(b"bpe\0", self.tokens_txt().encode("utf-8"), self._proto)

    def to_dict(self) -> dict[str, Any]:
        """Self-contained: the model travels base64-encoded (a few kB to a few hundred kB)."""
        return {
            "type": "bpe",
            "model": base64.b64encode(self._proto).decode("ascii"),
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BPETokenizer:
        """Inverse of `to_dict`; the stored fingerprint must match the model."""
        if d.get("type") != "bpe" or not isinstance(d.get("model"), str):
            raise TokenizerFileError(
                f"not a BPE tokenizer dict (type={d.get('type')!r}); expected 'type'='bpe', 'model' (base64)"
            )
        tok = cls(base64.b64decode(d["model"], validate=True))
        _check_fingerprint(tok, d)
        return tok

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and self._proto == other._proto

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


Tokenizer = CharTokenizer | BPETokenizer


def load_tokenizer(path_or_dict: str | os.PathLike | dict[str, Any]) -> Tokenizer:
    """Tokens file, SentencePiece model, folder or checkpoint dict -> tokenizer (rule: module doc)."""
    if isinstance(path_or_dict, dict):
        kind = path_or_dict.get("type")
        if kind == "char":
            return CharTokenizer.from_dict(path_or_dict)
        if kind == "bpe":
            return BPETokenizer.from_dict(path_or_dict)
        raise TokenizerFileError(f"tokenizer dict has type={kind!r}; expected 'char' or 'bpe'")
    path = Path(path_or_dict)
    if path.is_dir():
        if (path / BPE_MODEL_FILENAME).is_file():
            return BPETokenizer.load(path / BPE_MODEL_FILENAME)
        return CharTokenizer.load(path / TOKENS_FILENAME)
    if path.suffix == ".model":
        return BPETokenizer.load(path)
    sibling = path.parent / BPE_MODEL_FILENAME
    if sibling.is_file():
        bpe = BPETokenizer.load(sibling)
        listed = _read_tokens_txt(path)
        if listed != bpe.tokens:
            raise TokenizerFileError(
                f"{path}: does not match {sibling} ({len(listed)} vs {bpe.vocab_size} tokens); "
                "rewrite both with BPETokenizer.save or remove the stale file"
            )
        return bpe
    return CharTokenizer.load(path)
