"""The training loop: one batch goes audio → LogMel (+ VTLP) → SpecAugment → model → loss → optimiser.

`TrainingLoop` takes its parts — a model, a front end, any iterable of collated batches, an
optimiser (+ scheduler), a loss object (`asrkd.losses.CTCLoss`, `asrkd.kd.KDLoss`, or your own
`asrkd.losses.TrainingLoss`) — and adds what every run needs: checkpoints, the best checkpoint by
dev WER, epoch checkpoints and their average (``keep_epochs``, ``average_epochs``), exact resume, logs (``train_log.csv``, TensorBoard), DDP and a progress bar.
`TrainingLoop.fit` is the whole loop. ``asrkd train`` (`asrkd.train.Trainer`) is a YAML config
built into those parts by `asrkd.builder`, then this loop; ``asrkd distill`` is the same with
`KDLoss`.

Exact resume: a checkpoint holds the optimizer, scheduler, step, the data's position in the
epoch, the loss's own modules and every RNG state. Waveform augmentation is seeded by (seed,
epoch, utterance index), VTLP, SpecAugment and a causal model's dynamic chunk sizes
(`DynamicChunks`) by (seed, step), so the losses after ``resume()`` equal those of an
uninterrupted run.

Distributed: launched with ``torchrun --nproc_per_node N -m asrkd.cli train ...`` the builder
joins the process group (gloo on CPU, NCCL on GPU) and shards batches by rank; the loop averages
gradients with DDP; rank 0 alone writes checkpoints, logs and evaluates.
"""

from __future__ import annotations

import copy
import csv
import itertools
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import Tensor

from asrkd.checkpoint import (
    AVERAGE_NAME,
    EPOCH_PREFIX,
    STATE_FILE,
    CheckpointError,
    average_checkpoints,
    average_weights,
    describe_average,
    list_epoch_checkpoints,
    list_step_checkpoints,
    load_trainer_state,
    load_weights,
    replace_folder,
    save_checkpoint,
    select_epochs,
)
from asrkd.data import SpecAugment, Utterance
from asrkd.decoding import Lexicon
from asrkd.features import LogMel, vtlp_mel_filterbank
from asrkd.inference import evaluate
from asrkd.losses import TrainingLoss
from asrkd.models.streaming import ChunkChoice, draw_chunk_size
from asrkd.progress import progress

__all__ = ["DevSet", "DynamicChunks", "FeatureAugment", "TrainingLoop", "init_distributed", "read_log"]

# Third entry of the VTLP draws' seed ([seed, step, _VTLP_STREAM]): a stream of its own.
_VTLP_STREAM = 0x7E1F
# Third entry of the chunk draws' seed ([seed, step, _CHUNK_STREAM]): another stream of its own.
_CHUNK_STREAM = 0xC4C


def init_distributed() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; joins the process group when there are
    several ranks (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank, world_size


@dataclass
class FeatureAugment:
    """Feature-level augmentation of a training batch, drawn from (seed, step) so a resume replays it.

    Vocal tract length perturbation: each utterance, with probability ``vtlp_prob``, gets its mel
    filterbank warped by a factor drawn from ``vtlp_alpha`` (`asrkd.features.vtlp_mel_filterbank`).
    Then ``spec_augment`` masks (`asrkd.data.SpecAugment`), if given.
    """

    spec_augment: SpecAugment | None = None
    vtlp_prob: float = 0.0
    vtlp_alpha: tuple[float, float] = (0.9, 1.1)
    seed: int = 0

    def features(self, frontend: LogMel, wavs: Tensor, wav_lens: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """wavs [B, N], wav_lens [B] -> log-mel features [B, T, F] with VTLP, frame lengths [B]
        (no gradient)."""
        mel_fb = None
        if self.vtlp_prob > 0:
            rng = np.random.default_rng([self.seed, step, _VTLP_STREAM])
            n = wavs.shape[0]
            alphas = np.where(rng.random(n) < self.vtlp_prob, rng.uniform(*self.vtlp_alpha, size=n), 1.0)
            mel_fb = vtlp_mel_filterbank(frontend.config, torch.from_numpy(alphas))
        with torch.no_grad():
            return frontend(wavs, wav_lens, mel_fb=mel_fb)

    def __call__(self, frontend: LogMel, wavs: Tensor, wav_lens: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """`features`, then SpecAugment: features [B, T, F], frame lengths [B]."""
        feats, feat_lens = self.features(frontend, wavs, wav_lens, step)
        if self.spec_augment is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            feats = self.spec_augment(feats, feat_lens, generator=generator)
        return feats, feat_lens


@dataclass
class DynamicChunks:
    """Dynamic chunk training (WeNet U2) of a causal model: the chunking of the batch at each step.

    Step ``step`` draws `asrkd.models.streaming.draw_chunk_size` from a generator of its own,
    seeded with ``[seed, step, _CHUNK_STREAM]``: nothing is drawn from the global torch RNG (the
    model's dropout keeps its stream) and a resume replays the chunkings. Full context with
    probability ``full_context_prob``, else a chunk of ``1 .. max_chunk_size`` encoder frames with
    ``0 .. max_left_chunks`` chunks of left context (None: unlimited).
    """

    max_chunk_size: int = 25
    full_context_prob: float = 0.5
    max_left_chunks: int | None = None
    seed: int = 0

    def __call__(self, step: int) -> ChunkChoice:
        """The chunking of the batch at optimiser step ``step`` (the same for the same step)."""
        state = np.random.SeedSequence([self.seed, step, _CHUNK_STREAM]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state))
        return draw_chunk_size(generator, self.max_chunk_size, self.full_context_prob, self.max_left_chunks)


@dataclass
class DevSet:
    """Utterances decoded after each epoch (greedy, or restricted to ``lexicon``'s words); the
    checkpoint with the lowest WER becomes ``checkpoints/best``."""

    utts: list[Utterance]
    lexicon: Lexicon | None = None
    max_batch_seconds: float = 60.0


@dataclass
class _Position:
    """Where a run is: optimiser steps taken, epoch, batches of that epoch trained on."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_wer: float | None = None
    data_state: dict | None = field(default=None, repr=False)  # set by a resume: the position in the epoch


class TrainingLoop:
    """Trains ``model`` on ``data`` with ``loss`` until ``max_steps``; see the module docstring.

    ``data``: any iterable of `asrkd.data.collate` batches (wavs [B, N], wav_lens [B], targets
    [B, U] padded with -1 or None, target_lens [B], utt_ids; None for a batch whose every
    utterance was left out, which takes a place in the epoch but no step); one pass is an epoch. With
    ``set_epoch``, ``__len__``, ``state_dict(position)`` and ``load_state_dict`` (as
    `asrkd.loader.BucketedLoader` has) each epoch gets its own batches and a resume continues at
    the exact batch; a plain iterable is re-read from its start and the batches already trained
    on are skipped. ``tokenizer`` and ``frontend`` are saved with every checkpoint;
    ``train_config`` (a dict) too, and as ``out_dir/config.yaml``. ``augment``: feature
    augmentation (default: the front end alone). ``chunks``: dynamic chunk training of a causal
    model (`DynamicChunks`; default: the model's own chunking). ``dev``: evaluated after each epoch,
    with the model's own chunking (a streaming model's chunked WER). ``keep_epochs``: the weights at
    each epoch's end kept as ``checkpoints/epoch-NNN``, the last so many (None: all); with
    ``average_epochs``, `fit` ends by averaging that many of them (`average`).
    ``grad_clip``: max norm of the model's gradient (the loss's own modules are not clipped).

    >>> loop = TrainingLoop(model, frontend, loader, optimizer, CTCLoss(), tokenizer=tok,
    ...                     out_dir="runs/mine", max_steps=1000)      # doctest: +SKIP
    >>> best = loop.fit()                                            # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, frontend: LogMel, data: Iterable[dict],
                 optimizer: torch.optim.Optimizer, loss: TrainingLoss, *, tokenizer: Any,
                 out_dir: str | os.PathLike, max_steps: int,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 augment: FeatureAugment | None = None, chunks: DynamicChunks | None = None,
                 dev: DevSet | None = None, grad_clip: float = 5.0,
                 log_every: int = 10, checkpoint_every: int = 200, keep_last: int = 3, progress: bool = True,
                 keep_epochs: int | None = 0, average_epochs: int = 0, average_by: str = "best",
                 train_config: dict | None = None):
        self.model, self.frontend, self.data, self.loss = model, frontend, data, loss
        self.optimizer, self.scheduler = optimizer, scheduler
        self.tokenizer = tokenizer
        self.augment = augment or FeatureAugment()
        self.chunks = chunks
        self.dev = dev
        self.max_steps = max_steps
        self.grad_clip, self.log_every = grad_clip, log_every
        self.checkpoint_every, self.keep_last, self.progress = checkpoint_every, keep_last, progress
        self.keep_epochs, self.average_epochs, self.average_by = keep_epochs, average_epochs, average_by
        self.train_config = train_config
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.pos = _Position()
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.is_main = not dist.is_initialized() or dist.get_rank() == 0
        self.ddp_model = model
        if self.world_size > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(model)
            for p in loss.parameters():  # outside the model's DDP wrapper: average their gradients here
                p.register_post_accumulate_grad_hook(_all_reduce_mean)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path | None:
        """Train to ``max_steps``; returns the best checkpoint (or the last without a dev set)."""
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.train_config is not None:
                (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.train_config, sort_keys=False))
            self.tokenizer.save(self.out_dir / "tokens.txt")
        pos = self.pos
        avg = self.ckpt_dir / AVERAGE_NAME
        if self.is_main and pos.step < self.max_steps and avg.exists():
            # an average of the weights before this training: the run folder must not stand for it
            aside = avg.with_name(f"{AVERAGE_NAME}.before-step-{pos.step:07d}")
            replace_folder(avg, aside)
            print(f"{avg} averages checkpoints from before step {pos.step}: moved to {aside.name}")
        logger = _Logger(self.out_dir, pos.step, enabled=self.is_main)
        bar = progress(self.max_steps, initial=pos.step, unit="step", desc="train",
                       enabled=self.is_main and self.progress)
        self.model.train()
        audio_seconds, t0 = 0.0, time.perf_counter()
        sample_rate = self.frontend.config.sample_rate
        while pos.step < self.max_steps:
            exhausted = True
            for batch in self._epoch_batches():
                if batch is None:  # its every utterance was left out (unreadable audio, data.on_bad_audio: skip)
                    pos.batch_in_epoch += 1
                    continue
                loss, terms, grad_norm = self.train_step(batch)
                audio_seconds += float(batch["wav_lens"].sum()) / sample_rate
                speed = audio_seconds * self.world_size / (time.perf_counter() - t0)
                lr = self.optimizer.param_groups[0]["lr"]  # the scheduler's, after its step
                if pos.step % self.log_every == 0 or pos.step == 1:
                    logger.log(pos.step, {"loss": loss, **terms, "lr": lr, "grad_norm": grad_norm,
                                          "audio_sec_per_sec": speed, "epoch": pos.epoch})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", audio_s_per_s=f"{speed:.1f}")
                if pos.step % self.checkpoint_every == 0 and not self._epoch_complete(exhausted=False):
                    self.save()  # (at an epoch's last batch the epoch's end saves)
                if pos.step >= self.max_steps:
                    exhausted = False
                    break
            epoch_done = self._epoch_complete(exhausted)
            if epoch_done:
                pos.epoch += 1
                pos.batch_in_epoch = 0
            metrics = self._evaluate(logger) if (epoch_done or pos.step >= self.max_steps) else {}
            self.save(metrics, epoch_end=epoch_done)
            if self.world_size > 1:
                dist.barrier()
        bar.close()
        logger.close()
        if not self.is_main:
            return None
        if self.average_epochs:
            return self.average()
        best = self.ckpt_dir / "best"
        return best if best.exists() else list_step_checkpoints(self.ckpt_dir)[-1]

    def train_step(self, batch: dict) -> tuple[float, dict[str, float], float]:
        """One optimiser step on ``batch``: (loss, its logged terms, gradient norm before clipping)."""
        pos = self.pos
        feats, feat_lens = self.augment(self.frontend, batch["wavs"], batch["wav_lens"], pos.step)
        chunking = {}
        if self.chunks is not None:
            choice = self.chunks(pos.step)
            chunking = {"chunk_size": choice.chunk_size, "left_chunks": choice.left_chunks}
        out = self.ddp_model(feats, feat_lens, return_hidden=self.loss.needs_hidden(pos.step), **chunking)
        loss, terms = self.loss(out, batch, pos.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        pos.step += 1
        pos.batch_in_epoch += 1
        return loss.item(), terms, float(grad_norm)

    def _epoch_batches(self) -> Iterable[dict]:
        """The current epoch's batches, from the resume position on."""
        pos, data = self.pos, self.data
        if hasattr(data, "set_epoch"):
            data.set_epoch(pos.epoch)
        state, pos.data_state = pos.data_state, None
        if state is None:
            return data
        if hasattr(data, "load_state_dict"):  # first epoch after a resume: continue mid-epoch
            data.load_state_dict(state)
            return data
        return itertools.islice(data, state["position"], None)

    def _epoch_complete(self, exhausted: bool) -> bool:
        """Whether the current epoch's batches are all trained on (``exhausted``: the data ran out)."""
        return self.pos.batch_in_epoch >= len(self.data) if hasattr(self.data, "__len__") else exhausted

    def _evaluate(self, logger: _Logger) -> dict:
        """Dev WER / CER after an epoch (rank 0), logged and printed."""
        metrics = self._dev_metrics(self.model)
        self.model.train()
        if self.is_main and self.dev is not None:
            if metrics:
                logger.log(self.pos.step, metrics)
            print(f"\nepoch {self.pos.epoch} step {self.pos.step}: {_describe(metrics, self.dev)}")
        return metrics

    def _dev_metrics(self, model: torch.nn.Module) -> dict:
        """``{"dev_wer", "dev_cer"}`` of ``model`` on the dev set (rank 0); {} without a dev set, or
        without a reference with a word in it (nothing to score, nothing to pick by)."""
        if not self.is_main or self.dev is None:
            return {}
        dev = self.dev
        result = evaluate(model, self.frontend, self.tokenizer, dev.utts,
                          max_batch_seconds=dev.max_batch_seconds, lexicon=dev.lexicon)
        return {} if result["wer"] is None else {"dev_wer": result["wer"], "dev_cer": result["cer"]}

    def average(self) -> Path:
        """Write ``checkpoints/avg``: the mean of ``average_epochs`` epoch checkpoints (the best by
        dev WER or the last: ``average_by``), scored on the dev set (rank 0). Returns its path.

        Raises:
            CheckpointError: fewer epoch checkpoints than ``average_epochs`` (`select_epochs`).
        """
        paths = select_epochs(self.ckpt_dir, self.average_epochs, self.average_by)
        state = average_weights(paths)
        model = copy.deepcopy(self.model)
        model.load_state_dict(state)
        metrics = self._dev_metrics(model)
        out = average_checkpoints(paths, self.ckpt_dir / AVERAGE_NAME, metrics=metrics, state=state)
        print(describe_average(paths, self.average_by, out)
              + (f"; {_describe(metrics, self.dev)}" if self.dev is not None else ""))
        return out

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict:
        pos = self.pos
        data_state = {"position": pos.batch_in_epoch}
        if hasattr(self.data, "state_dict"):
            data_state = self.data.state_dict(position=pos.batch_in_epoch)
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "step": pos.step,
            "epoch": pos.epoch,
            "batch_in_epoch": pos.batch_in_epoch,
            # At an epoch's end the sampler still holds the finished epoch: record the next one.
            "sampler": {**data_state, "epoch": pos.epoch},
            "best_wer": pos.best_wer,
            "rng": {"torch": torch.get_rng_state()},
            # The loss's own trainable modules (KD feature projections); the key predates loss objects.
            "kd_modules": self.loss.state_dict(),
        }

    def resume(self) -> bool:
        """Continue from the last ``step-*`` checkpoint in ``out_dir``: weights, optimizer,
        scheduler, position, loss modules and RNG. A damaged checkpoint (a file that fails its
        checksum or cannot be read) is named and passed over for the one before it. Returns
        False (and starts from scratch) when there is none.

        Raises:
            CheckpointError: every step checkpoint is damaged; names each.
        """
        steps = list_step_checkpoints(self.ckpt_dir)
        if not steps:
            if self.is_main:
                print(f"--resume: no checkpoint in {self.ckpt_dir}; starting from scratch")
            return False
        damaged: list[str] = []
        for ckpt in reversed(steps):
            try:
                weights, state = load_weights(ckpt), _interned(load_trainer_state(ckpt))
                break
            except CheckpointError as e:
                damaged.append(str(e))
                if self.is_main:
                    print(f"--resume: {e}; trying the checkpoint before it")
        else:
            raise CheckpointError(f"{self.ckpt_dir}: no step checkpoint can be resumed from: "
                                  + "; ".join(damaged))
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.pos = _Position(step=int(state["step"]), epoch=int(state["epoch"]),
                             batch_in_epoch=int(state["batch_in_epoch"]), best_wer=state["best_wer"],
                             data_state=state["sampler"])
        self.loss.load_state_dict(state.get("kd_modules", {}))
        torch.set_rng_state(state["rng"]["torch"])
        if self.is_main:
            print(f"resumed from {ckpt} (step {self.pos.step}, epoch {self.pos.epoch}, "
                  f"batch {self.pos.batch_in_epoch})" + (" instead of the damaged later one(s)" if damaged else ""))
        return True

    def save(self, metrics: dict | None = None, epoch_end: bool = False) -> Path | None:
        """Write ``checkpoints/step-NNNNNNN`` (rank 0), prune to ``keep_last``, update ``best``;
        at an epoch's end (``epoch_end``), with ``keep_epochs``, copy its weights to ``epoch-NNN``."""
        if not self.is_main:
            return None
        pos = self.pos
        path = save_checkpoint(
            self.ckpt_dir / f"step-{pos.step:07d}",
            self.model,
            self.frontend.config,
            self.tokenizer,
            step=pos.step,
            epoch=pos.epoch,
            metrics=metrics,
            train_config=self.train_config,
            trainer_state=self._trainer_state(),
        )
        wer = (metrics or {}).get("dev_wer")
        if wer is not None and (pos.best_wer is None or wer <= pos.best_wer):
            pos.best_wer = wer
            _copy_weights(path, self.ckpt_dir / "best")
        if epoch_end and self.keep_epochs != 0:
            _copy_weights(path, self.ckpt_dir / f"{EPOCH_PREFIX}{pos.epoch:03d}")
            if self.keep_epochs is not None:
                for stale in list_epoch_checkpoints(self.ckpt_dir)[: -self.keep_epochs]:
                    shutil.rmtree(stale)
        for stale in list_step_checkpoints(self.ckpt_dir)[: -self.keep_last]:
            shutil.rmtree(stale)
        return path


def _describe(metrics: dict, dev: DevSet) -> str:
    """What `TrainingLoop._dev_metrics` found, for a line of output."""
    if not metrics:
        return "dev set not scored (no reference text)"
    decoded = " (with data.dev_lexicon)" if dev.lexicon is not None else ""
    return f"dev WER {100 * metrics['dev_wer']:.2f} % CER {100 * metrics['dev_cer']:.2f} %{decoded}"


def _copy_weights(path: Path, dest: Path) -> None:
    """Copy the checkpoint ``path`` but its trainer state to ``dest`` (replaced whole: `replace_folder`)."""
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(path, tmp, ignore=shutil.ignore_patterns(STATE_FILE))
    replace_folder(tmp, dest)


def _interned(obj: Any) -> Any:
    """``obj`` with its strings interned, as the literals of an uninterrupted run are. Pickle
    writes a string object once and refers back to it after, so a resumed optimizer whose keys
    were read back from a checkpoint (new objects) would save a trainer_state.pt that differs in
    bytes (not in value) from an uninterrupted run's."""
    if isinstance(obj, dict):
        return {_interned(k): _interned(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_interned(v) for v in obj]
    return sys.intern(obj) if type(obj) is str else obj


def _all_reduce_mean(p: Tensor) -> None:
    dist.all_reduce(p.grad)
    p.grad.div_(dist.get_world_size())


class _Logger:
    """CSV (``train_log.csv``) + TensorBoard (``tb/``) logs. On resume, rows past the resumed
    step (written by a killed run after its last checkpoint) are dropped, so the log reads as
    one uninterrupted run."""

    def __init__(self, out_dir: Path, start_step: int, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.csv_path = out_dir / "train_log.csv"
        self.rows: list[dict[str, Any]] = []
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        self._flush()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        except ImportError:  # tensorboard is a core dependency, but stay usable without it
            self.tb = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.rows.append({"step": step, **{k: v for k, v in values.items()}})
        self._flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def _flush(self) -> None:
        keys: list[str] = ["step"]
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.csv_path)

    def close(self) -> None:
        if self.enabled and self.tb is not None:
            self.tb.close()


def read_log(out_dir: str | Path) -> list[dict[str, float]]:
    """Rows of ``train_log.csv`` as floats (empty cells dropped)."""
    with open(Path(out_dir) / "train_log.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
