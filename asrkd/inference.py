"""Run a trained model: waveforms → LogMel → Conformer → CTC decoding → text (+ confidence).

The trainer's dev WER, ``asrkd transcribe`` and ``asrkd eval`` all go through
:func:`decode_batch`, so a checkpoint is scored the same way everywhere.

A streaming (causal) checkpoint runs with its config's chunking unless told otherwise: its WER
is then the chunked WER, what streaming it gives (`asrkd.streaming.StreamingTranscriber` emits the
same log-probs). ``chunk_size`` / ``left_chunks`` (``asrkd eval --chunk-size N --left-chunks L``)
score the same weights at another chunking, -1 for full context.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from asrkd.audio import AudioError, load_audio
from asrkd.checkpoint import load_checkpoint, resolve_checkpoint
from asrkd.data import AudioDataset, BucketingBatchSampler, Utterance, read_manifest
from asrkd.data.dataset import SkipUnreadable, collate_readable
from asrkd.decoding import Lexicon, greedy_decode, prefix_beam_search, utterance_confidence
from asrkd.errors import AsrkdError
from asrkd.features import LogMel
from asrkd.fileio import atomic_write_text
from asrkd.metrics import score, utterance_wer
from asrkd.models.conformer import ConformerCTC
from asrkd.models.streaming import FULL_CONTEXT
from asrkd.text import normalize_text

LEXICON_BEAM = 8  # beam width when a lexicon is given without one


class ChunkingError(AsrkdError, ValueError):
    """A chunking was asked of a checkpoint that cannot run it (a non-causal model, a bad size)."""


def check_chunking(model: ConformerCTC, chunk_size: int | None, left_chunks: int | None) -> None:
    """Refuse a chunked run of a model whose convolution reads the future (it would score a
    chunking the model cannot stream), and invalid sizes; None means the config's own."""
    if chunk_size is None and left_chunks is None:
        return
    try:
        choice = model.chunking(chunk_size, left_chunks)
    except ValueError as e:
        raise ChunkingError(f"--chunk-size/--left-chunks: {e}") from None
    if choice.chunk_size != FULL_CONTEXT and not model.config.causal:
        raise ChunkingError(f"--chunk-size {choice.chunk_size}: this checkpoint is not causal (not a streaming "
                            "model: its convolution reads later frames), so chunked scores mean nothing; "
                            "leave --chunk-size out, or evaluate a streaming checkpoint (preset student-stream)")


def search_width(beam: int, lexicon: Lexicon | None) -> int:
    """The beam `decode_batch` searches with: 1 (greedy) only without a lexicon."""
    return beam if beam > 1 or lexicon is None else LEXICON_BEAM


@dataclass
class Hypothesis:
    """One utterance's decoding result."""

    text: str
    tokens: list[int]
    confidence: float  # see asrkd.decoding.utterance_confidence; in [0, 1], higher = surer


def log_posteriors(model: ConformerCTC, frontend: LogMel, wavs: Tensor, wav_lens: Tensor,
                   chunk_size: int | None = None, left_chunks: int | None = None) -> tuple[Tensor, Tensor]:
    """The acoustic model on waveforms: ``wavs [B, N]``, ``wav_lens [B]`` -> LogMel -> Conformer ->
    ``log_probs [B, T', V]`` (CTC log-posteriors), ``out_lens [B]`` (valid frames per row).
    ``chunk_size`` / ``left_chunks``: the attention's chunking (None: the model config's)."""
    feats, feat_lens = frontend(wavs, wav_lens)
    log_probs, out_lens, _ = model(feats, feat_lens, chunk_size=chunk_size, left_chunks=left_chunks)
    return log_probs, out_lens


@torch.no_grad()
def decode_batch(
    model: ConformerCTC, frontend: LogMel, tokenizer, wavs: Tensor, wav_lens: Tensor, beam: int = 1,
    lexicon: Lexicon | None = None, chunk_size: int | None = None, left_chunks: int | None = None,
) -> list[Hypothesis]:
    """Decode a padded batch ``wavs [B, N]`` with lengths ``wav_lens [B]``.

    ``beam == 1`` is greedy CTC; ``beam > 1`` is CTC prefix beam search (its best hypothesis).
    ``lexicon`` restricts the search to its words (`asrkd.decoding.Lexicon`; needs a beam:
    greedy decoding with a lexicon searches with ``LEXICON_BEAM``). ``chunk_size`` /
    ``left_chunks``: see `log_posteriors`.
    """
    log_probs, out_lens = log_posteriors(model, frontend, wavs, wav_lens, chunk_size, left_chunks)
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
    skip_unreadable: bool = False,
    chunk_size: int | None = None,
    left_chunks: int | None = None,
) -> dict:
    """Decode ``utts`` and score them against their (normalised) texts (``lexicon``, ``chunk_size``,
    ``left_chunks``: see `decode_batch`).

    Returns :func:`asrkd.metrics.score`'s dict plus ``hyps``, ``refs`` and ``confidences`` in
    manifest order. An unreadable audio file raises `asrkd.audio.AudioError`; with
    ``skip_unreadable`` its utterance is left out of the score instead, and ``skipped`` lists
    ``{"index", "utt_id", "audio_filepath", "reason"}`` of each such one (``index``: its 0-based
    position in ``utts``), and the other lists hold the scored utterances only, in manifest order.
    """
    was_training = model.training
    model.eval()
    dataset = AudioDataset(utts, sample_rate=frontend.config.sample_rate)
    sampler = BucketingBatchSampler([u.duration for u in utts], max_batch_seconds=max_batch_seconds, shuffle=False)
    results: dict[int, Hypothesis] = {}
    skipped: dict[int, str] = {}
    # The DataLoader stays even though it loads in this process: starting it draws one number from
    # torch's global generator, and a training run's dev evaluation must keep drawing it.
    source = SkipUnreadable(dataset) if skip_unreadable else dataset
    for batch, unreadable in DataLoader(source, batch_sampler=sampler, collate_fn=collate_readable):
        skipped.update(unreadable)
        if batch is None:
            continue
        for index, hyp in zip(batch["indices"], decode_batch(model, frontend, tokenizer, batch["wavs"], batch["wav_lens"], beam, lexicon,
                                                                  chunk_size, left_chunks)):
            results[int(index)] = hyp
    model.train(was_training)
    kept = [i for i in range(len(utts)) if i not in skipped]
    hyps = [results[i].text for i in kept]
    refs = [normalize_text(utts[i].text or "") for i in kept]
    out = score(refs, hyps, [utts[i].speaker for i in kept], vocabulary=tokenizer, utt_ids=[utts[i].utt_id for i in kept])
    out.update(hyps=hyps, refs=refs, confidences=[results[i].confidence for i in kept])
    if skip_unreadable:
        out["skipped"] = [{"index": i, "utt_id": utts[i].utt_id, "audio_filepath": utts[i].audio_filepath,
                           "reason": why} for i, why in sorted(skipped.items())]
    return out


def evaluate_checkpoint(
    checkpoint: str | os.PathLike, manifest: str | os.PathLike, json_out: str | os.PathLike | None = None,
    beam: int = 1, max_batch_seconds: float = 60.0, lexicon: str | os.PathLike | Lexicon | None = None,
    chunk_size: int | None = None, left_chunks: int | None = None,
) -> dict:
    """``asrkd eval``: WER/CER (+ per speaker) of a checkpoint on a manifest; ``lexicon`` (a word
    list file or a `Lexicon`) restricts decoding to its words.

    A streaming (causal) checkpoint is scored at its config's chunking (its chunked, streaming
    WER) unless ``chunk_size`` (encoder frames, -1: full context) or ``left_chunks`` (-1:
    unlimited) say otherwise; its summary states the chunking it ran (``chunk_size``,
    ``left_chunks``). A chunked run of a non-causal checkpoint is a `ChunkingError`.

    With ``json_out``: the summary there and one JSON line per utterance (id, speaker, ref, hyp,
    WER, confidence) in ``<json_out stem>.utterances.jsonl``.

    An utterance whose audio cannot be read is skipped, not scored: ``skipped`` counts them and
    ``skipped_utterances`` says which and why (`evaluate`). A manifest with no readable audio at
    all raises `asrkd.audio.AudioError`.
    """
    lexicon = Lexicon.coerce(lexicon)
    loaded = load_checkpoint(resolve_checkpoint(checkpoint))
    check_chunking(loaded.model, chunk_size, left_chunks)
    utts = read_manifest(manifest)
    result = evaluate(loaded.model, loaded.frontend, loaded.tokenizer, utts, max_batch_seconds, beam, lexicon,
                      skip_unreadable=True, chunk_size=chunk_size, left_chunks=left_chunks)
    skipped = result.pop("skipped")
    if utts and len(skipped) == len(utts):
        raise AudioError(f"{manifest}: none of the {len(utts)} audio files can be read, e.g. {skipped[0]['reason']}")
    bad = {s["index"] for s in skipped}
    utts = [u for i, u in enumerate(utts) if i not in bad]
    summary = {k: v for k, v in result.items() if k not in ("hyps", "refs", "confidences")}
    summary.update(skipped=len(skipped), skipped_utterances=skipped)
    summary.update(checkpoint=str(loaded.path), manifest=str(manifest),
                   beam=search_width(beam, lexicon))
    if loaded.model.config.causal:
        chunking = loaded.model.chunking(chunk_size, left_chunks)
        summary.update(chunk_size=chunking.chunk_size, left_chunks=chunking.left_chunks)
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
        """Audio files in any soundfile format and rate → hypotheses, one at a time; the first
        unreadable file raises `asrkd.audio.AudioError` (`transcribe_each` goes on past it)."""
        return [self.transcribe([load_audio(p, self.sample_rate)])[0] for p in paths]

    def transcribe_each(self, paths: Sequence[str | os.PathLike]) -> Iterator[Hypothesis | AudioError]:
        """Like `transcribe_files`, lazily and one result per path: the hypothesis, or the
        `asrkd.audio.AudioError` that says why that file could not be read."""
        for p in paths:
            try:
                wav = load_audio(p, self.sample_rate)
            except AudioError as e:
                yield e
                continue
            yield self.transcribe([wav])[0]
