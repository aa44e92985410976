"""Training batches that know their epoch and position: what exact resume needs of a data loader.

`asrkd.train.TrainingLoop` takes any iterable of collated batches. An object that also has
``set_epoch(epoch)``, ``__len__`` (batches this epoch), ``state_dict(position)`` and
``load_state_dict(state)`` — `BucketedLoader` here — gets each epoch's own batches and resumes
mid-epoch at the exact batch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from asrkd.audio import AudioError
from asrkd.data import AudioDataset, BucketingBatchSampler
from asrkd.data.dataset import SkipUnreadable, collate_readable
from asrkd.data.preflight import SkipLog

__all__ = ["BucketedLoader"]


class BucketedLoader:
    """One DataLoader over an `AudioDataset`, batched by a `BucketingBatchSampler`.

    Yields `asrkd.data.collate` batches: wavs [B, N], wav_lens [B], targets [B, U] (padded with
    -1; None for unlabelled audio), target_lens [B], utt_ids. The loader lives for the whole run,
    so persistent workers keep their audio cache across epochs; `set_epoch` sets the sampler's
    and the dataset's epoch in place (the dataset's reaches the workers through shared memory).
    Worker seeds come from a generator seeded with ``seed``, not from the global torch RNG, so
    creating the loader does not shift the dropout RNG stream (exact resume depends on it).

    Audio that fails to load (it passed the pre-flight check, so it changed since): with
    ``skip_log`` (``data.on_bad_audio: skip``) its utterance is left out of its batch and
    recorded there, and a batch left with no utterance is yielded as None; without, it is an
    `asrkd.audio.AudioError` naming the file.
    """

    def __init__(self, dataset: AudioDataset, sampler: BucketingBatchSampler, num_workers: int = 1,
                 seed: int = 0, skip_log: SkipLog | None = None):
        self.dataset = dataset
        self.sampler = sampler
        self.skip_log = skip_log
        self.loader = DataLoader(
            SkipUnreadable(dataset),
            batch_sampler=sampler,
            collate_fn=collate_readable,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int) -> None:
        """Select ``epoch``'s batches and waveform augmentation (forgets any resume position)."""
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches this rank gets in the current epoch."""
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        for batch, unreadable in self.loader:
            for index, why in sorted(unreadable.items()):
                u = self.dataset.utts[index]
                if self.skip_log is None:
                    raise AudioError(f"{why} (utterance {u.utt_id}, readable when the run started; restore "
                                     "the file, or set data.on_bad_audio: skip to leave such audio out)")
                if self.skip_log.unreadable(u, why):
                    print(f"skipped {u.utt_id}: {why}", file=sys.stderr)
            yield batch

    def state_dict(self, position: int) -> dict[str, Any]:
        """The sampler's state with ``position`` batches of the epoch consumed by the training loop
        (workers prefetch ahead of it, so the sampler's own count would overshoot), and the
        utterances skipped while training, if any."""
        state = self.sampler.state_dict(position=position)
        if self.skip_log is not None and self.skip_log.during:
            state["skipped"] = self.skip_log.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at batch ``state["position"]`` of ``state["epoch"]`` (call after `set_epoch`)."""
        state = dict(state)
        skipped = state.pop("skipped", [])
        if self.skip_log is not None and skipped:
            self.skip_log.load_state_dict(skipped)
        self.sampler.load_state_dict(state)
