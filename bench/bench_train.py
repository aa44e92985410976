"""Training throughput (audio seconds per wall second) of the teacher and student presets.

Same batches, same run: real log-mel features from a manifest (FSDD connected digits when
../shared/data/fsdd is present, else freshly synthesized digits), 30 s padded batches as in
recipes/fsdd/conf/*.yaml, one full training step each (front end, forward, CTC loss, backward, AdamW).
Also says whether torchaudio's Conformer can be measured beside it.

    python bench/bench_train.py [--manifest M] [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from asrkd.contract import SAMPLE_RATE
from asrkd.data import AudioDataset, BucketingBatchSampler, collate, read_manifest
from asrkd.features import FrontendConfig, LogMel
from asrkd.losses import ctc_loss
from asrkd.models.conformer import ConformerCTC, build_preset, count_parameters
from asrkd.text import CharTokenizer

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "manifests" / "fsdd_connected.jsonl"


def batches(manifest: Path, tokenizer, n: int) -> list[dict]:
    utts = read_manifest(manifest)
    sampler = BucketingBatchSampler([u.duration for u in utts], max_batch_seconds=30.0, seed=0)
    loader = DataLoader(AudioDataset(utts, tokenizer=tokenizer), batch_sampler=sampler, collate_fn=collate)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def throughput(preset: str, data: list[dict], vocab: int, threads: int) -> tuple[float, int]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    frontend = LogMel(FrontendConfig())
    model = ConformerCTC(build_preset(preset, vocab_size=vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    rates = []
    for i, batch in enumerate(data):
        t0 = time.perf_counter()
        with torch.no_grad():
            feats, feat_lens = frontend(batch["wavs"], batch["wav_lens"])
        log_probs, out_lens, _ = model(feats, feat_lens)
        loss = ctc_loss(log_probs, out_lens, batch["targets"], batch["target_lens"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i > 0:  # first step: allocator and oneDNN warm-up
            rates.append(float(batch["wav_lens"].sum()) / SAMPLE_RATE / dt)
    return statistics.median(rates), count_parameters(model)


def torchaudio_status() -> str:
    try:
        from torchaudio.models import Conformer  # noqa: F401
    except Exception as e:  # ImportError or the OSError of its C++ library
        return (f"torchaudio's Conformer not measured: it does not load with torch {torch.__version__} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); see ../shared/DEPENDENCIES.md")
    return "torchaudio imports here; add it to this benchmark"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    manifest = args.manifest
    if manifest is None and FSDD.is_file():
        manifest = FSDD
    if manifest is None:
        from asrkd.synth import synthesize_corpus

        manifest = synthesize_corpus("digits", 120, tempfile.mkdtemp(prefix="bench_train_"), seed=0)
    tokenizer = CharTokenizer.default_english()
    data = batches(manifest, tokenizer, args.steps + 1)
    print(f"data: {manifest} ({len(data)} batches of <= 30 s padded audio)")
    print(f"{'preset':<12}{'params':>10}" + "".join(f"{f'{t} thread(s)':>16}" for t in args.threads))
    results = {}
    for preset in ("teacher", "student", "student-xs"):
        row = []
        for t in args.threads:
            rate, params = throughput(preset, data, tokenizer.vocab_size, t)
            results[(preset, t)] = rate
            row.append(rate)
        print(f"{preset:<12}{params / 1e6:>9.2f}M" + "".join(f"{r:>12.1f} a-s/s" for r in row))
    for t in args.threads:
        print(f"student / teacher speed at {t} thread(s): "
              f"{results[('student', t)] / results[('teacher', t)]:.1f}x")
    print(torchaudio_status())


if __name__ == "__main__":
    main()
