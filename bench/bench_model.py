"""Size, cost and CPU throughput of every Conformer-CTC preset.

    python bench/bench_model.py [--presets teacher student student-xs] [--batch 4] [--seconds 10]
                                [--repeats 3] [--threads 2] [--vocab-size 32]

For each preset: parameters, analytic forward FLOPs per audio second (``flops_per_second`` at
``--seconds``-long utterances), and throughput in audio seconds per wall second for
- forward: eval mode, ``torch.inference_mode``, what decoding and teacher inference cost;
- forward + backward: train mode (dropout on), CTC loss on random targets, ``backward()``; no
  optimiser step, which is negligible next to it.
Inputs are ``--batch`` random log-mel utterances of ``--seconds`` seconds at the default front
end's frame rate (100 frames/s). One
untimed warm-up run, then the best of ``--repeats`` timed runs: on a shared machine other jobs only
ever slow a run down. "GFLOP/s" is the forward FLOPs achieved (analytic FLOPs / time). Compare
presets within one invocation, as ratios. On a machine shared with other jobs, ``--threads 1``
can beat 2 threads (the second thread waits on a busy core at every op).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from asrkd.features import FrontendConfig
from asrkd.models.conformer import (
    PRESETS,
    ConformerCTC,
    build_preset,
    count_parameters,
    flops_per_second,
)

FRONTEND = FrontendConfig()  # the default front end: its frame rate and mel bands
FRAME_RATE = 1.0 / FRONTEND.frame_shift_seconds


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitive caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_preset(name: str, args: argparse.Namespace) -> dict:
    config = build_preset(name, vocab_size=args.vocab_size, n_mels=FRONTEND.n_mels)
    model = ConformerCTC(config)
    n_frames = round(args.seconds * FRAME_RATE)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(args.batch, n_frames, config.n_mels, generator=gen)
    lens = torch.full((args.batch,), n_frames)
    n_tokens = round(args.seconds * 12)  # ~12 characters per second of read speech
    targets = torch.randint(1, config.vocab_size, (args.batch, n_tokens), generator=gen)
    target_lens = torch.full((args.batch,), n_tokens)

    def forward():
        model.eval()
        with torch.inference_mode():
            model(feats, lens)

    def forward_backward():
        model.train()
        model.zero_grad(set_to_none=True)
        log_probs, out_lens, _ = model(feats, lens)
        F.ctc_loss(log_probs.transpose(0, 1), targets, out_lens, target_lens).backward()

    audio = args.batch * args.seconds
    flops = flops_per_second(config, FRAME_RATE, utterance_seconds=args.seconds)
    t_fwd = best_time(forward, args.repeats)
    t_train = best_time(forward_backward, args.repeats)
    return dict(
        preset=name,
        params=count_parameters(model),
        flops=flops,
        fwd=audio / t_fwd,
        train=audio / t_train,
        gflops_achieved=flops * audio / t_fwd / 1e9,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--batch", type=int, default=4, help="utterances per batch (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="utterance length (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, best counts (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--vocab-size", type=int, default=32, help="CTC outputs incl. blank (default 32)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {args.threads} threads, batches of {args.batch} x "
          f"{args.seconds:g} s, best of {args.repeats}")
    header = f"{'preset':<11} {'params':>10} {'GFLOP/audio s':>14} {'fwd audio s/s':>14} " \
             f"{'fwd+bwd audio s/s':>18} {'fwd GFLOP/s':>12}"
    print(header)
    print("-" * len(header))
    for name in args.presets:
        r = bench_preset(name, args)
        print(f"{r['preset']:<11} {r['params']:>10,} {r['flops'] / 1e9:>14.3f} {r['fwd']:>14.1f} "
              f"{r['train']:>18.1f} {r['gflops_achieved']:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
