"""The training loop: one batch goes audio → LogMel (+ VTLP) → SpecAugment → Conformer → loss → AdamW.

Read it top to bottom: ``Trainer.fit`` is the whole loop. Distillation (``asrkd.distill``)
subclasses ``Trainer`` and overrides ``compute_loss`` only; checkpoints, exact resume, DDP,
logs and the progress bar come from here.

Exact resume: a checkpoint holds the optimizer, scheduler, step, the sampler's position in the
epoch and every RNG state. Waveform augmentation is seeded by (seed, epoch, utterance index),
VTLP and SpecAugment by (seed, step), so the losses after ``--resume`` equal those of an
uninterrupted run.

Distributed: launched with ``torchrun --nproc_per_node N -m asrkd.cli train ...`` the trainer
joins the process group (gloo on CPU, NCCL on GPU), shards batches by rank and averages
gradients with DDP; rank 0 alone writes checkpoints, logs and evaluates.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import Tensor
from torch.utils.data import DataLoader

from asrkd.checkpoint import (
    list_step_checkpoints,
    load_checkpoint,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from asrkd.config import ConfigError, TrainConfig
from asrkd.data import (
    AddNoise,
    AudioDataset,
    BandLimit,
    BreathNoise,
    BucketingBatchSampler,
    Compose,
    Gain,
    SpecAugment,
    SpeedPerturb,
    collate,
    read_manifest,
)
from asrkd.decoding import Lexicon, LexiconError
from asrkd.features import FrontendConfig, LogMel, vtlp_mel_filterbank
from asrkd.inference import evaluate
from asrkd.models.conformer import ConformerCTC, build_preset, count_parameters
from asrkd.text import CharTokenizer, load_tokenizer

# Third entry of the VTLP draws' seed ([seed, step, _VTLP_STREAM]): a stream of its own.
_VTLP_STREAM = 0x7E1F


def ctc_loss(log_probs: Tensor, out_lens: Tensor, targets: Tensor, target_lens: Tensor) -> Tensor:
    """Mean over the batch of per-utterance CTC negative log-likelihood.

    log_probs [B, T, V], out_lens [B], targets [B, U] (padded with -1), target_lens [B].
    Utterances too short for their transcript contribute 0 (``zero_infinity``) instead of NaN.
    """
    return F.ctc_loss(
        log_probs.transpose(0, 1),
        targets.clamp(min=0),
        out_lens,
        target_lens,
        blank=0,
        reduction="sum",
        zero_infinity=True,
    ) / log_probs.shape[0]


class Trainer:
    """Trains a Conformer-CTC model from a :class:`TrainConfig`.

    >>> Trainer(TrainConfig.from_yaml("configs/teacher.yaml")).fit()   # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, resume: bool = False):
        self.cfg = config
        self.out_dir = Path(config.run.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self._init_distributed()
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self._validate()
        torch.manual_seed(config.run.seed)

        self.train_utts = self._load_train_utterances()
        self.dev_utts = read_manifest(config.data.dev) if config.data.dev else []
        self.dev_lexicon = self._dev_lexicon()
        self.tokenizer = self._make_tokenizer()
        self.frontend_config = FrontendConfig.from_dict(config.frontend)
        self.frontend = LogMel(self.frontend_config)
        self.model = ConformerCTC(
            build_preset(
                config.model.preset,
                vocab_size=self.tokenizer.vocab_size,
                n_mels=self.frontend_config.n_mels,
                **config.model.overrides,
            )
        )
        self.sampler = BucketingBatchSampler(
            [u.duration for u in self.train_utts],
            max_batch_seconds=config.data.max_batch_seconds,
            num_buckets=config.data.num_buckets,
            seed=config.run.seed,
            rank=self.rank,
            world_size=self.world_size,
        )
        self.dataset = AudioDataset(
            self.train_utts,
            sample_rate=self.frontend_config.sample_rate,
            tokenizer=self.tokenizer,
            transform=self._waveform_augmentation(),
            seed=config.run.seed,
            cache_audio=config.data.cache_audio,
        )
        a = config.augment
        self.spec_augment = SpecAugment(
            freq_masks=a.freq_masks, freq_width=a.freq_width, time_masks=a.time_masks, time_width=a.time_width
        )
        # Batches per epoch vary a little with the shuffle, so an epoch ends when its sampler is
        # exhausted, and `epochs` converts to the exact sum of the epochs' batch counts.
        self.max_steps = config.optim.max_steps or sum(
            self._batches_in_epoch(e) for e in range(config.optim.epochs)
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.optim.lr,
            betas=tuple(config.optim.betas),
            weight_decay=config.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch already trained on
        self.best_wer: float | None = None
        self._sampler_state: dict | None = None  # set by a resume: the position in the epoch
        last = self.model.config.n_layers
        if any(k >= last for k in config.model.interctc_layers):
            raise ConfigError(
                f"model.interctc_layers {config.model.interctc_layers}: blocks are 1..{last}, and "
                f"block {last} is the model's output, already trained by CTC; give blocks 1..{last - 1}"
            )
        if config.model.init_from:
            self._init_weights(config.model.init_from)
        self.ddp_model: torch.nn.Module = self.model
        if self.world_size > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model)
        if resume:
            self._resume()

    # ------------------------------------------------------------------ set-up
    def _init_distributed(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        self.is_main = self.rank == 0

    def _validate(self) -> None:
        c = self.cfg
        if not c.data.train:
            raise ConfigError("data.train: give at least one training manifest")
        if c.optim.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule: {c.optim.schedule!r} is not one of 'cosine', 'constant'")
        if c.data.max_batch_seconds <= 0:
            raise ConfigError("data.max_batch_seconds must be > 0")

    def _load_train_utterances(self) -> list:
        """The training utterances, in manifest order. The distiller overrides this (pseudo-labels)."""
        return [u for path in self.cfg.data.train for u in read_manifest(path)]

    def _make_tokenizer(self):
        if self.cfg.data.tokens:
            return load_tokenizer(self.cfg.data.tokens)
        if self.cfg.model.init_from:  # keep the vocabulary the initial weights were trained with
            return load_checkpoint(resolve_checkpoint(self.cfg.model.init_from)).tokenizer
        texts = [u.text for u in self.train_utts if u.text]
        if not texts:
            raise ConfigError("data.train: no transcripts to build a vocabulary from; give data.tokens")
        return CharTokenizer.from_texts(texts)

    def _waveform_augmentation(self):
        a = self.cfg.augment
        parts = []
        if a.speed_factors and list(a.speed_factors) != [1.0]:
            parts.append(SpeedPerturb(tuple(a.speed_factors)))
        if a.breath_prob > 0:  # before band-limiting: the noise is band-passed like the speech
            parts.append(BreathNoise(level_db=tuple(a.breath_db), band_hz=tuple(a.breath_hz),
                                     prob=a.breath_prob))
        if a.bandlimit_prob > 0:
            parts.append(BandLimit(prob=a.bandlimit_prob, cutoff_hz=tuple(a.bandlimit_hz)))
        if a.noise_prob > 0:
            parts.append(AddNoise(snr_db=tuple(a.snr_db), prob=a.noise_prob))
        if a.gain_prob > 0:
            parts.append(Gain(gain_db=tuple(a.gain_db), prob=a.gain_prob))
        return Compose(parts) if parts else None

    def _dev_lexicon(self) -> Lexicon | None:
        path = self.cfg.data.dev_lexicon
        if path is None:
            return None
        if not self.cfg.data.dev:
            raise ConfigError("data.dev_lexicon is set but data.dev is not: there is no dev set to decode")
        try:
            return Lexicon.from_file(path)
        except LexiconError as e:
            raise ConfigError(f"data.dev_lexicon: {e}") from None

    def _init_weights(self, path: str) -> None:
        """Copy the weights of checkpoint ``path``; its model shape and vocabulary must match
        (dropout, which has no weights, may differ: fine-tuning often changes it)."""
        init = load_checkpoint(resolve_checkpoint(path))
        if dataclasses.replace(init.model.config, dropout=self.model.config.dropout) != self.model.config:
            raise ConfigError(
                f"model.init_from: {init.path} is a {init.model.config} but this run builds "
                f"{self.model.config}; use the same preset and overrides"
            )
        if init.tokenizer.fingerprint() != self.tokenizer.fingerprint():
            raise ConfigError(
                f"model.init_from: {init.path} was trained with another vocabulary than data.tokens "
                f"gives; leave data.tokens unset to reuse the checkpoint's"
            )
        self.model.load_state_dict(init.model.state_dict())
        if self.is_main:
            print(f"initialised from {init.path} (step {init.config.get('step')})")

    def _batches_in_epoch(self, epoch: int) -> int:
        current = self.sampler.epoch
        self.sampler.set_epoch(epoch)
        n = len(self.sampler)
        self.sampler.set_epoch(current)
        return n

    def _lr_factor(self, step: int) -> float:
        o = self.cfg.optim
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, self.max_steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    # ------------------------------------------------------------------ state
    def _rng_state(self) -> dict:
        return {"torch": torch.get_rng_state()}

    def _trainer_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            # At an epoch's end the sampler still holds the finished epoch: record the next one.
            "sampler": {**self.sampler.state_dict(position=self.batch_in_epoch), "epoch": self.epoch},
            "best_wer": self.best_wer,
            "rng": self._rng_state(),
        }

    def _resume(self) -> None:
        steps = list_step_checkpoints(self.ckpt_dir)
        if not steps:
            if self.is_main:
                print(f"--resume: no checkpoint in {self.ckpt_dir}; starting from scratch")
            return
        from safetensors.torch import load_file

        ckpt = steps[-1]
        self.model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
        state = load_trainer_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best_wer = state["best_wer"]
        self._sampler_state = state["sampler"]
        torch.set_rng_state(state["rng"]["torch"])
        if self.is_main:
            print(f"resumed from {ckpt} (step {self.step}, epoch {self.epoch}, batch {self.batch_in_epoch})")

    def save(self, metrics: dict | None = None) -> Path | None:
        """Write ``checkpoints/step-NNNNNNN`` (rank 0), prune to ``keep_last``, update ``best``."""
        if not self.is_main:
            return None
        path = save_checkpoint(
            self.ckpt_dir / f"step-{self.step:07d}",
            self.model,
            self.frontend_config,
            self.tokenizer,
            step=self.step,
            epoch=self.epoch,
            metrics=metrics,
            train_config=self.cfg.to_dict(),
            trainer_state=self._trainer_state(),
        )
        wer = (metrics or {}).get("dev_wer")
        if wer is not None and (self.best_wer is None or wer <= self.best_wer):
            self.best_wer = wer
            best_tmp = self.ckpt_dir / "best.partial"
            if best_tmp.exists():
                shutil.rmtree(best_tmp)
            shutil.copytree(path, best_tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
            old = self.ckpt_dir / "best.old"
            if (self.ckpt_dir / "best").exists():
                os.replace(self.ckpt_dir / "best", old)
            os.replace(best_tmp, self.ckpt_dir / "best")
            if old.exists():
                shutil.rmtree(old)
        for stale in list_step_checkpoints(self.ckpt_dir)[: -self.cfg.run.keep_last]:
            shutil.rmtree(stale)
        return path

    # ------------------------------------------------------------------ loss
    def features(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Log-mel features [B, T, F] and frame lengths [B] of a collated batch (no gradient),
        with vocal tract length perturbation (`augment.vtlp_prob`) drawn from (seed, step)."""
        a = self.cfg.augment
        mel_fb = None
        if a.vtlp_prob > 0:
            rng = np.random.default_rng([self.cfg.run.seed, self.step, _VTLP_STREAM])
            n = batch["wavs"].shape[0]
            alphas = np.where(rng.random(n) < a.vtlp_prob, rng.uniform(*a.vtlp_alpha, size=n), 1.0)
            mel_fb = vtlp_mel_filterbank(self.frontend_config, torch.from_numpy(alphas))
        with torch.no_grad():
            return self.frontend(batch["wavs"], batch["wav_lens"], mel_fb=mel_fb)

    def compute_loss(self, batch: dict, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Loss of one batch and its named terms. The distiller overrides this."""
        log_probs, out_lens, hidden = self.ddp_model(
            feats, feat_lens, return_hidden=bool(self.cfg.model.interctc_layers))
        return self.ctc_term(log_probs, out_lens, hidden, batch)

    def ctc_term(self, log_probs: Tensor, out_lens: Tensor, hidden: list[Tensor] | None,
                 batch: dict) -> tuple[Tensor, dict[str, float]]:
        """CTC of the output, mixed with the intermediate CTCs of ``model.interctc_layers`` if any,
        and its logged parts: ``ctc`` (the output's alone) and ``interctc`` (their mean)."""
        loss = ctc_loss(log_probs, out_lens, batch["targets"], batch["target_lens"])
        layers = self.cfg.model.interctc_layers
        if not layers:
            return loss, {"ctc": loss.item()}
        inter = sum(
            ctc_loss(self.model.ctc_log_probs(hidden[k - 1]), out_lens, batch["targets"], batch["target_lens"])
            for k in layers
        ) / len(layers)
        w = self.cfg.model.interctc_weight
        return (1 - w) * loss + w * inter, {"ctc": loss.item(), "interctc": inter.item()}

    # ------------------------------------------------------------------ loop
    def _loader(self) -> DataLoader:
        """One DataLoader for the whole run: persistent workers keep their audio cache across
        epochs; the sampler and the dataset's epoch are set in place before each epoch."""
        if getattr(self, "_dataloader", None) is None:
            workers = self.cfg.data.num_workers
            self._dataloader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                collate_fn=collate,
                num_workers=workers,
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
                # Worker seeds come from this generator, not from the global RNG, so creating
                # the loader does not shift the dropout RNG stream (exact resume depends on it).
                generator=torch.Generator().manual_seed(self.cfg.run.seed),
            )
        return self._dataloader

    def fit(self) -> Path | None:
        """Train to ``max_steps``; returns the best checkpoint (or the last without a dev set)."""
        cfg = self.cfg
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            self.tokenizer.save(self.out_dir / "tokens.txt")
            print(
                f"model {cfg.model.preset}: {count_parameters(self.model) / 1e6:.2f} M params; "
                f"{len(self.train_utts)} train utterances "
                f"({sum(u.duration for u in self.train_utts) / 3600:.2f} h); "
                f"{len(self.sampler)} steps/epoch; {self.max_steps} steps"
            )
        logger = _Logger(self.out_dir, self.step, enabled=self.is_main)
        bar = _progress(self.max_steps, self.step, enabled=self.is_main and cfg.run.progress)
        self.model.train()
        audio_seconds, t0 = 0.0, time.perf_counter()
        while self.step < self.max_steps:
            self.sampler.set_epoch(self.epoch)
            self.dataset.set_epoch(self.epoch)
            if self._sampler_state is not None:  # first epoch after a resume: continue mid-epoch
                self.sampler.load_state_dict(self._sampler_state)
                self._sampler_state = None
            for batch in self._loader():
                feats, feat_lens = self.features(batch)
                generator = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + self.step)
                feats = self.spec_augment(feats, feat_lens, generator=generator)
                loss, terms = self.compute_loss(batch, feats, feat_lens)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self.batch_in_epoch += 1
                audio_seconds += float(batch["wav_lens"].sum()) / self.frontend_config.sample_rate
                speed = audio_seconds * self.world_size / (time.perf_counter() - t0)
                lr = self.scheduler.get_last_lr()[0]
                if self.step % cfg.run.log_every == 0 or self.step == 1:
                    logger.log(self.step, {"loss": loss.item(), **terms, "lr": lr,
                                           "grad_norm": float(grad_norm), "audio_sec_per_sec": speed,
                                           "epoch": self.epoch})
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", audio_s_per_s=f"{speed:.1f}")
                if self.step % cfg.run.checkpoint_every == 0 and self.batch_in_epoch < len(self.sampler):
                    self.save()
                if self.step >= self.max_steps:
                    break
            epoch_done = self.batch_in_epoch >= len(self.sampler)
            if epoch_done:
                self.epoch += 1
                self.batch_in_epoch = 0
            metrics = self._end_of_epoch(logger) if (epoch_done or self.step >= self.max_steps) else {}
            self.save(metrics)
            self._barrier()
        bar.close()
        logger.close()
        if not self.is_main:
            return None
        best = self.ckpt_dir / "best"
        return best if best.exists() else list_step_checkpoints(self.ckpt_dir)[-1]

    def _end_of_epoch(self, logger: _Logger) -> dict:
        if not self.is_main or not self.dev_utts:
            return {}
        result = evaluate(self.model, self.frontend, self.tokenizer, self.dev_utts,
                          max_batch_seconds=self.cfg.data.max_batch_seconds, lexicon=self.dev_lexicon)
        metrics = {"dev_wer": result["wer"], "dev_cer": result["cer"]}
        logger.log(self.step, metrics)
        decoded = " (with data.dev_lexicon)" if self.dev_lexicon is not None else ""
        print(f"\nepoch {self.epoch} step {self.step}: dev WER {100 * result['wer']:.2f} % "
              f"CER {100 * result['cer']:.2f} %{decoded}")
        self.model.train()
        return metrics

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


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


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def read_log(out_dir: str | Path) -> list[dict[str, float]]:
    """Rows of ``train_log.csv`` as floats (empty cells dropped)."""
    with open(Path(out_dir) / "train_log.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
