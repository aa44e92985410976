"""`BucketingBatchSampler`: deterministic, resumable, DDP-aware batches of similar-length utterances."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from asrkd.errors import AsrkdError


class ResumeError(AsrkdError, ValueError):
    """A saved sampler position that this sampler cannot continue: other data or settings."""


class BucketingBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar-length utterances under a padded-duration budget; resumable; DDP-aware.

    Per epoch: sort by duration, cut into `num_buckets` equal-count buckets, shuffle inside each
    bucket, fill batches greedily while `longest * count <= max_batch_seconds` (a bucket's last,
    unfinished batch continues into the next bucket, so only the epoch's last batch is short),
    shuffle the batches. Everything is drawn from `np.random.default_rng([seed, epoch])`, so the
    batches are a function of (durations, seed, epoch, settings) alone.

    Ranks: the epoch's batches are split round-robin; the list is first padded with its own
    leading batches (or, with `drop_last`, cut) so that every rank gets the same number of
    steps. An utterance longer than `max_batch_seconds` gets a batch of its own (one warning).
    `shuffle=False` gives batches in ascending duration order (evaluation: least padding).
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        seed: int = 0,
        shuffle: bool = True,
        num_buckets: int = 10,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1 or len(self.durations) == 0:
            raise ValueError("durations must be a non-empty 1-D sequence of seconds")
        if not np.all(np.isfinite(self.durations)) or np.any(self.durations < 0):
            raise ValueError("durations must be finite and >= 0 seconds")
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if seed < 0 or num_buckets < 1:
            raise ValueError(f"seed must be >= 0 and num_buckets >= 1, got {seed}, {num_buckets}")
        self.max_batch_seconds = float(max_batch_seconds)
        self.seed = seed
        self.shuffle = shuffle
        self.num_buckets = min(num_buckets, len(self.durations))
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self._resume_at = 0  # batches of this epoch to skip on the next __iter__
        self._yielded = 0  # batches of this epoch yielded so far
        self._cache: tuple[int, list[list[int]]] | None = None
        too_long = np.flatnonzero(self.durations > self.max_batch_seconds)
        if len(too_long):
            worst = int(too_long[np.argmax(self.durations[too_long])])
            warnings.warn(
                f"{len(too_long)} utterance(s) are longer than max_batch_seconds="
                f"{self.max_batch_seconds:g} (longest: index {worst}, {self.durations[worst]:.1f} s); "
                "each gets a batch of its own",
                stacklevel=2,
            )
        if len(self._all_batches(0)) < world_size and drop_last:
            raise ValueError(f"fewer batches than ranks ({world_size}) with drop_last=True")

    def _all_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = np.argsort(self.durations, kind="stable")
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0.0
        for bucket in np.array_split(order, self.num_buckets):
            if self.shuffle:
                bucket = rng.permutation(bucket)
            for i in bucket.tolist():
                d = self.durations[i]
                if batch and max(longest, d) * (len(batch) + 1) > self.max_batch_seconds:
                    batches.append(batch)
                    batch, longest = [], 0.0
                batch.append(i)
                longest = max(longest, d)
            # a bucket's unfinished batch goes on filling from the next (slightly longer) bucket
        if batch:
            batches.append(batch)
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches

    def _rank_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self._all_batches(self.epoch)
            n = len(batches)
            if n % self.world_size:
                if self.drop_last:
                    batches = batches[: n - n % self.world_size]
                else:
                    pad = self.world_size - n % self.world_size
                    batches = batches + [batches[j % n] for j in range(pad)]
            self._cache = (self.epoch, batches[self.rank :: self.world_size])
        return self._cache[1]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's batches; also forgets any mid-epoch resume position."""
        self.epoch = int(epoch)
        self._resume_at = 0
        self._yielded = 0

    def __len__(self) -> int:
        """Batches this rank gets in the current epoch (not counting a resume offset)."""
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        start, self._resume_at = self._resume_at, 0
        self._yielded = start
        for i in range(start, len(batches)):
            self._yielded = i + 1
            yield list(batches[i])

    def _fingerprint(self) -> str:
        return hashlib.sha256(self.durations.tobytes()).hexdigest()[:16]

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """Where this rank is in the epoch.

        `position`: batches of this epoch the training loop has consumed. Defaults to how many
        this sampler has yielded, which runs ahead of the loop when a DataLoader with workers
        prefetches; pass the loop's own count then.
        """
        return {
            "epoch": self.epoch,
            "position": self._yielded if position is None else int(position),
            "seed": self.seed,
            "max_batch_seconds": self.max_batch_seconds,
            "num_buckets": self.num_buckets,
            "shuffle": self.shuffle,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
            "durations_sha256": self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next `__iter__` continues with batch `position` of `epoch`.

        Only `epoch` and `position` are required; the settings a full `state_dict()` also holds
        are checked when present, because resuming with other data or settings would silently
        give other batches.
        """
        mine = self.state_dict()
        for key in (
            "seed",
            "max_batch_seconds",
            "num_buckets",
            "shuffle",
            "world_size",
            "drop_last",
            "durations_sha256",
        ):
            if key in state and state[key] != mine[key]:
                raise ResumeError(
                    f"cannot resume: sampler {key} is {mine[key]!r} but the saved state has "
                    f"{state[key]!r}; resuming needs the same data and sampler settings (use the run's "
                    "own config.yaml, or start a new run folder)"
                )
        self.set_epoch(state["epoch"])
        position = int(state["position"])
        if not 0 <= position <= len(self._rank_batches()):
            raise ResumeError(
                f"cannot resume: saved position {position} is outside epoch {self.epoch}'s {len(self)} "
                "batches; resuming needs the same data and sampler settings"
            )
        self._resume_at = self._yielded = position
