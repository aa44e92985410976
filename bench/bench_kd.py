"""Cost of distillation per training step, and the size of the posterior cache.

    python bench/bench_kd.py --teacher runs/fsdd/teacher/checkpoints/best \
        --manifest runs/data/fsdd_connected_train.jsonl [--cache runs/fsdd/kd_cache] \
        [--preset student] [--steps 20] [--max-batch-seconds 30] [--threads 2]

Times one optimiser step (features, forward, loss, backward, clipping, AdamW) of the student, on the same
batches (same seed, same order), for:

- ``ctc``: the plain trainer (CTC only), the baseline;
- ``kd-cache``: CTC + frame KD with targets read from the posterior cache (the default);
- ``kd-cache-all``: CTC + every term (frame, sequence, feature, relation) from the cache;
- ``kd-online``: CTC + frame KD with the teacher run on every batch instead.

The variants take turns, one step each (so that load changes on a shared machine hit them alike):
two untimed warm-up rounds, then ``--steps`` timed rounds; the median step time is reported, and
its ratio to ``ctc``. Without ``--cache`` a cache of the manifest is built first in
a temporary folder (and its build time reported). Augmentation is off everywhere, so that the
variants differ only in their loss. Timing noise on a shared machine is large: compare within one
invocation, as ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from asrkd.cache import PosteriorCache, build_cache
from asrkd.config import TrainConfig
from asrkd.distill import Distiller
from asrkd.teacher import load_teacher
from asrkd.train import Trainer


def config(args, out_dir: Path, tokens: Path, kd: dict | None) -> TrainConfig:
    d = {
        "data": {"train": [str(args.manifest)], "tokens": str(tokens),
                 "max_batch_seconds": args.max_batch_seconds, "num_workers": 0},
        "model": {"preset": args.preset},
        "augment": {"speed_factors": [1.0], "noise_prob": 0.0, "freq_masks": 0, "time_masks": 0},
        "optim": {"max_steps": args.steps + 1, "warmup_steps": 1},
        "run": {"out_dir": str(out_dir), "threads": args.threads, "progress": False},
    }
    if kd is not None:
        d["kd"] = kd
    return TrainConfig.from_dict(d)


def batches(trainer: Trainer):
    """The trainer's batches, epoch after epoch."""
    data = trainer.parts.data
    epoch = 0
    while True:
        data.set_epoch(epoch)
        yield from data
        epoch += 1


def step_seconds(trainer: Trainer, batch: dict) -> float:
    """One optimiser step: the training loop's own step, without logging or checkpoints."""
    t0 = time.perf_counter()
    trainer.loop.train_step(batch)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--cache", help="a cache covering --manifest (built if absent)")
    p.add_argument("--hidden-layers", type=int, nargs="*", default=[3, 7], help="for kd-cache-all")
    p.add_argument("--layer-map", default="1:3,3:7", help="student block:teacher layer, for kd-cache-all")
    p.add_argument("--preset", default="student")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-batch-seconds", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_kd_"))
    # the student's vocabulary is the teacher's (a char tokenizer from its checkpoint)
    from asrkd.checkpoint import load_checkpoint, resolve_checkpoint

    args.teacher = str(resolve_checkpoint(args.teacher))
    tok = load_checkpoint(args.teacher).tokenizer
    tok.save(tmp / "tokens.txt")

    cache = args.cache
    if cache is None:
        t0 = time.perf_counter()
        report = build_cache(load_teacher(args.teacher), [args.manifest], tmp / "cache",
                             hidden_layers=args.hidden_layers, progress=False)
        cache = str(tmp / "cache")
        print(f"cache build: {time.perf_counter() - t0:.1f} s ({report.frames} frames)")
    info = PosteriorCache(cache).info
    ratio = info["dense_fp32_bytes_per_frame"] / info["bytes_per_frame"]
    print(f"cache: {info['bytes_per_frame']:g} bytes/frame (top-{info['request']['settings']['top_k']} "
          f"fp16 + uint16 ids + fp16 residual) vs {info['dense_fp32_bytes_per_frame']:g} dense fp32 "
          f"({ratio:.1f}x smaller); hidden states {info['hidden_bytes_per_frame']:g} bytes/frame")

    layer_map = {int(a): int(b) for a, b in (x.split(":") for x in args.layer_map.split(","))}
    variants = {
        "ctc": None,
        "kd-cache": {"cache": cache, "weights": {"ctc": 1.0, "frame": 1.0}},
        "kd-cache-all": {"cache": cache, "layer_map": layer_map,
                         "weights": {"ctc": 1.0, "frame": 1.0, "sequence": 1.0, "feature": 1.0, "relation": 1.0}},
        "kd-online": {"teacher_mode": "online", "teacher": args.teacher, "weights": {"ctc": 1.0, "frame": 1.0}},
    }
    trainers = {}
    for name, kd in variants.items():
        cfg = config(args, tmp / name, tmp / "tokens.txt", kd)
        trainers[name] = Trainer(cfg) if kd is None else Distiller(cfg)
        trainers[name].model.train()
    streams = {name: batches(t) for name, t in trainers.items()}
    times: dict[str, list[float]] = {name: [] for name in trainers}
    # Round robin, one step of each variant in turn, so that load changes on the machine hit all
    # of them alike; every variant sees the same batches in the same order. Two warm-up rounds.
    for i in range(args.steps + 2):
        for name, trainer in trainers.items():
            seconds = step_seconds(trainer, next(streams[name]))
            if i >= 2:
                times[name].append(seconds)
    base = statistics.median(times["ctc"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:>13}: median {1000 * m:7.1f} ms/step over {len(ts)} steps ({m / base:.2f}x ctc)")


if __name__ == "__main__":
    main()
