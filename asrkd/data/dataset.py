"""`AudioDataset` (utterances -> waveform and token items) and `collate` (items -> padded batch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from asrkd.audio import AudioError, load_audio
from asrkd.contract import SAMPLE_RATE
from asrkd.data.augment import Transform
from asrkd.data.manifest import ManifestError, Utterance
from asrkd.text import Tokenizer, UnknownCharactersError


class AudioDataset(torch.utils.data.Dataset):
    """Utterances -> `{"wav", "tokens", "text", "utt_id", "speaker", "index"}`.

    `wav` is float32 `[N]` at `sample_rate` after `transform`; `tokens` is int64 `[U]` (None for
    unlabelled audio or without a tokenizer); `text` is the manifest text as written.

    Augmentation is reproducible: item `i` is transformed with
    `np.random.default_rng([seed, epoch, i])`, so the same (seed, epoch) gives the same audio in
    any worker, in any order, after a resume. The epoch lives in shared memory, so `set_epoch`
    also reaches persistent DataLoader workers (call it before iterating the epoch).

    `cache_audio` keeps each decoded waveform (before `transform`) in memory after its first
    read: for corpora that fit in RAM (each DataLoader worker holds its own copy).

    Every text is encoded once, here: characters outside the vocabulary fail now, listing the
    utterances, rather than in a worker mid-epoch.
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        sample_rate: int = SAMPLE_RATE,
        tokenizer: Tokenizer | None = None,
        transform: Transform | None = None,
        seed: int = 0,
        cache_audio: bool = False,
    ):
        self.utts = list(utts)
        self.sample_rate = sample_rate
        self.tokenizer = tokenizer
        self.transform = transform
        self.seed = seed
        self.cache_audio = cache_audio
        self._cache: dict[int, np.ndarray] = {}
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._tokens: list[list[int] | None] = [None] * len(self.utts)
        if tokenizer is not None:
            bad = []
            for i, u in enumerate(self.utts):
                if u.text is None:
                    continue
                try:
                    self._tokens[i] = tokenizer.encode(u.text)
                except UnknownCharactersError as e:
                    bad.append(f"{u.utt_id} {e.characters}")
            if bad:
                raise ManifestError(
                    f"{len(bad)} utterance(s) have characters outside the vocabulary, e.g. "
                    f"{'; '.join(bad[:5])}; run `asrkd manifest check --tokens ...` to list them all"
                )

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (in every worker, persistent ones included)."""
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        """The epoch whose augmentation draws `__getitem__` uses."""
        return int(self._epoch.item())

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        u = self.utts[index]
        wav = self._cache.get(index)
        if wav is None:
            if u.audio is None:
                wav = load_audio(
                    u.audio_filepath, self.sample_rate, offset=u.offset, duration=u.duration
                )
            else:  # held by its data source (e.g. a dataset's bytes): decoded from there
                wav = u.audio.load(self.sample_rate, offset=u.offset, duration=u.duration)
            if self.cache_audio:
                self._cache[index] = wav
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            wav = self.transform(wav, rng)
        tokens = self._tokens[index]
        return {
            "wav": torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)),
            "tokens": None if tokens is None else torch.tensor(tokens, dtype=torch.long),
            "text": u.text,
            "utt_id": u.utt_id,
            "speaker": u.speaker,
            "index": index,
        }


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items of `AudioDataset` -> a padded batch.

    Returns `wavs` float32 `[B, N]` (zero-padded), `wav_lens` int64 `[B]`, `targets` int64
    `[B, U]` (padded with -1), `target_lens` int64 `[B]`, `texts`, `utt_ids`, `speakers`,
    `indices`. `targets` and `target_lens` are None when no item has tokens; a batch that mixes
    labelled and unlabelled items is refused (CTC would read the latter as empty transcripts).
    """
    if not items:
        raise ValueError("collate: empty batch")
    wavs = [torch.as_tensor(it["wav"], dtype=torch.float32) for it in items]
    wav_lens = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long)
    padded = torch.zeros(len(wavs), int(wav_lens.max()), dtype=torch.float32)
    for b, w in enumerate(wavs):
        padded[b, : w.shape[0]] = w
    tokens = [it.get("tokens") for it in items]
    labelled = [t is not None for t in tokens]
    if any(labelled) and not all(labelled):
        missing = [it["utt_id"] for it, ok in zip(items, labelled, strict=True) if not ok]
        raise ValueError(
            f"collate: batch mixes labelled and unlabelled items (no tokens: {missing[:5]})"
        )
    targets = target_lens = None
    if all(labelled):
        toks = [torch.as_tensor(t, dtype=torch.long) for t in tokens]
        target_lens = torch.tensor([t.shape[0] for t in toks], dtype=torch.long)
        targets = torch.full((len(toks), int(target_lens.max())), -1, dtype=torch.long)
        for b, t in enumerate(toks):
            targets[b, : t.shape[0]] = t
    return {
        "wavs": padded,
        "wav_lens": wav_lens,
        "targets": targets,
        "target_lens": target_lens,
        "texts": [it.get("text") for it in items],
        "utt_ids": [it.get("utt_id") for it in items],
        "speakers": [it.get("speaker") for it in items],
        "indices": [it.get("index") for it in items],
    }


class SkipUnreadable(torch.utils.data.Dataset):
    """``dataset[i]``, or ``(i, why)`` for an item whose audio raises `asrkd.audio.AudioError`: with
    `collate_readable`, a DataLoader that names unreadable files instead of stopping at the first."""

    def __init__(self, dataset: AudioDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict | tuple[int, str]:
        try:
            return self.dataset[i]
        except AudioError as e:
            return i, str(e)


def collate_readable(items: list[dict | tuple[int, str]]) -> tuple[dict | None, dict[int, str]]:
    """`collate` of the readable items (None if there is none) and ``{index: why}`` of the others."""
    readable = [it for it in items if isinstance(it, dict)]
    return (collate(readable) if readable else None), dict(it for it in items if isinstance(it, tuple))
