"""Run a trained model: waveforms → LogMel → Conformer → CTC decoding → text (+ confidence).

The trainer's dev WER, ``asrkd transcribe`` and ``asrkd eval`` all go through
:func:`decode_batch`, so a checkpoint is scored the same way everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from asrkd.audio import load_audio
from asrkd.checkpoint import load_checkpoint, resolve_checkpoint
from asrkd.data import AudioDataset, BucketingBatchSampler, Utterance, collate, read_manifest
from asrkd.decoding import Lexicon, greedy_decode, prefix_beam_search, utterance_confidence
from asrkd.features import LogMel
from asrkd.fileio import atomic_write_text
from asrkd.metrics import score, utterance_wer
from asrkd.models.conformer import ConformerCTC
from asrkd.text import normalize_text

LEXICON_BEAM = 8  # beam width when a lexicon is given without one


def search_width(beam: int, lexicon: Lexicon | None) -> int:
    """The beam `decode_batch` searches with: 1 (greedy) only without a lexicon."""
    return beam if beam > 1 or lexicon is None else LEXICON_BEAM


@dataclass
class Hypothesis:
    """One utterance's decoding result."""

    text: str
    tokens: list[int]
    confidence: float  # see asrkd.decoding.utterance_confidence; in [0, 1], higher = surer


def log_posteriors(model: ConformerCTC, frontend: LogMel, wavs: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
    """The acoustic model on waveforms: ``wavs [B, N]``, ``wav_lens [B]`` -> LogMel -> Conformer ->
    ``log_probs [B, T', V]`` (CTC log-posteriors), ``out_lens [B]`` (valid frames per row)."""
    feats, feat_lens = frontend(wavs, wav_lens)
    log_probs, out_lens, _ = model(feats, feat_lens)
    return log_probs, out_lens


@torch.no_grad()
def decode_batch(
    model: ConformerCTC, frontend: LogMel, tokenizer, wavs: Tensor, wav_lens: Tensor, beam: int = 1,
    lexicon: Lexicon | None = None,
) -> list[Hypothesis]:
    """Decode a padded batch ``wavs [B, N]`` with lengths ``wav_lens [B]``.

    ``beam == 1`` is greedy CTC; ``beam > 1`` is CTC prefix beam search (its best hypothesis).
    ``lexicon`` restricts the search to its words (`asrkd.decoding.Lexicon`; needs a beam:
    greedy decoding with a lexicon searches with ``LEXICON_BEAM``).
    """
    log_probs, out_lens = log_posteriors(model, frontend, wavs, wav_lens)
    width = search_width(beam, lexicon)
    if width <= 1:
        ids = greedy_decode(log_probs, out_lens)
    else:
        constraint = lexicon.constraint(tokenizer) if lexicon is not None else None
        ids = [prefix_beam_search(log_probs[b, : int(out_lens[b])], beam=width, nbest=1,
                                  constraint=constraint)[0][0]
               for b in range(log_probs.shape[0])]
    return [
        Hypothesis(tokenizer.decode(seq), list(seq), utterance_confidence(log_probs[b], int(out_lens[b])))
        for b, seq in enumerate(ids)
    ]


@torch.no_grad()
def evaluate(
    model: ConformerCTC,
    frontend: LogMel,
    tokenizer,
    utts: Sequence[Utterance],
    max_batch_seconds: float = 60.0,
    beam: int = 1,
    lexicon: Lexicon | None = None,
) -> dict:
    """Decode ``utts`` and score them against their (normalised) texts (``lexicon``: see
    `decode_batch`).

    Returns :func:`asrkd.metrics.score`'s dict plus ``hyps``, ``refs`` and ``confidences`` in
    manifest order.
    """
    was_training = model.training
    model.eval()
    dataset = AudioDataset(utts, sample_rate=frontend.config.sample_rate)
    sampler = BucketingBatchSampler([u.duration for u in utts], max_batch_seconds=max_batch_seconds, shuffle=False)
    results: dict[int, Hypothesis] = {}
    for batch in DataLoader(dataset, batch_sampler=sampler, collate_fn=collate):
        for index, hyp in zip(batch["indices"], decode_batch(model, frontend, tokenizer, batch["wavs"], batch["wav_lens"], beam, lexicon)):
            results[int(index)] = hyp
    model.train(was_training)
    hyps = [results[i].text for i in range(len(utts))]
    refs = [normalize_text(u.text or "") for u in utts]
    out = score(refs, hyps, [u.speaker for u in utts])
    out.update(hyps=hyps, refs=refs, confidences=[results[i].confidence for i in range(len(utts))])
    return out


def evaluate_checkpoint(
    checkpoint: str | os.PathLike, manifest: str | os.PathLike, json_out: str | os.PathLike | None = None,
    beam: int = 1, max_batch_seconds: float = 60.0, lexicon: str | os.PathLike | Lexicon | None = None,
) -> dict:
    """``asrkd eval``: WER/CER (+ per speaker) of a checkpoint on a manifest; ``lexicon`` (a word
    list file or a `Lexicon`) restricts decoding to its words.

    With ``json_out``: the summary there and one JSON line per utterance (id, speaker, ref, hyp,
    WER, confidence) in ``<json_out stem>.utterances.jsonl``.
    """
    lexicon = Lexicon.coerce(lexicon)
    loaded = load_checkpoint(resolve_checkpoint(checkpoint))
    utts = read_manifest(manifest)
    result = evaluate(loaded.model, loaded.frontend, loaded.tokenizer, utts, max_batch_seconds, beam, lexicon)
    summary = {k: v for k, v in result.items() if k not in ("hyps", "refs", "confidences")}
    summary.update(checkpoint=str(loaded.path), manifest=str(manifest),
                   beam=search_width(beam, lexicon))
    if lexicon is not None:
        summary.update(lexicon=lexicon.source, lexicon_words=len(lexicon))
    if json_out is not None:
        json_out = Path(json_out)
        json_out.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            json.dumps({"utt_id": u.utt_id, "speaker": u.speaker, "ref": ref, "hyp": hyp,
                        "wer": utterance_wer(ref, hyp), "confidence": round(conf, 4)})
            for u, ref, hyp, conf in zip(utts, result["refs"], result["hyps"], result["confidences"])
        ]
        atomic_write_text(json_out.with_suffix(".utterances.jsonl"), "\n".join(lines) + "\n")
        atomic_write_text(json_out, json.dumps(summary, indent=2) + "\n")
    return summary


class Transcriber:
    """Transcribe audio files or arrays with a checkpoint.

    >>> t = Transcriber.from_checkpoint("runs/teacher")           # doctest: +SKIP
    >>> t.transcribe_files(["a.wav"])[0].text                     # doctest: +SKIP
    """

    def __init__(self, model: ConformerCTC, frontend: LogMel, tokenizer, beam: int = 1,
                 lexicon: Lexicon | None = None):
        self.model, self.frontend, self.tokenizer, self.beam = model.eval(), frontend.eval(), tokenizer, beam
        self.lexicon = lexicon

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, beam: int = 1,
                        lexicon: str | os.PathLike | Lexicon | None = None) -> Transcriber:
        loaded = load_checkpoint(resolve_checkpoint(path))
        return cls(loaded.model, loaded.frontend, loaded.tokenizer, beam, Lexicon.coerce(lexicon))

    @property
    def sample_rate(self) -> int:
        return self.frontend.config.sample_rate

    def transcribe(self, waveforms: Sequence[np.ndarray]) -> list[Hypothesis]:
        """Float32 mono waveforms at ``sample_rate`` → hypotheses (one padded batch)."""
        lens = torch.tensor([len(w) for w in waveforms], dtype=torch.long)
        wavs = torch.zeros(len(waveforms), int(lens.max()))
        for i, w in enumerate(waveforms):
            wavs[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        return decode_batch(self.model, self.frontend, self.tokenizer, wavs, lens, self.beam, self.lexicon)

    def transcribe_files(self, paths: Sequence[str | os.PathLike]) -> list[Hypothesis]:
        """Audio files in any soundfile format and rate → hypotheses, one at a time."""
        return [self.transcribe([load_audio(p, self.sample_rate)])[0] for p in paths]
