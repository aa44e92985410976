"""One-thread speed of every exported artifact against PyTorch eager and against the compute floor.

    python bench/bench_export.py CKPT MANIFEST [--bundle DIR | --formats onnx,tflite,executorch
                                 --quantize fp32,int8 --windows 2,5,10,20] [--utterances 10]
                                 [--repeats 5]

For the first ``--utterances`` utterances of MANIFEST, each runner (eval/runners.py) at one
thread goes through eval/rtf.py ``measure`` (one warm-up pass, then the median of ``--repeats``
timed passes). Columns:

- ``RTF``: compute seconds per audio second;
- ``x eager``: RTF / RTF of PyTorch eager measured in the same run (below 1: faster than eager);
- ``x floor``: RTF / floor RTF, where the floor is the model's forward FLOPs per audio second
  (``asrkd.models.conformer.flops_per_second`` at the mean utterance length: every matmul and
  convolution of the encoder, not the log-mel front end, norms or activations) divided by the
  FLOP/s of one core on a large fp32 matmul (torch, measured here, best of 5). A runtime at
  ``x floor`` = 1 would spend all its time in matmul-speed arithmetic; small models are far
  above it (per-op overheads, memory-bound ops, the front end), so read it as "headroom".

Artifacts come from an existing ``asrkd export`` bundle (``--bundle``, its contract.json) or are
exported into a temporary folder first (``--formats``/``--quantize``; Core ML only on macOS).
Timing noise on a shared machine is large (±30-50 %): compare within one run, as ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asrkd.contract import EXPORT_WINDOWS_SECONDS
from asrkd.data import AudioDataset, read_manifest
from asrkd.models.conformer import flops_per_second
from eval.rtf import measure
from eval.runners import TorchRunner
from mobile_export.bundle import Artifact, read_contract
from mobile_export.formats import EXPORTERS
from mobile_export.options import ExportOptions
from mobile_export.source import ExportSource


def matmul_flops_one_core(n: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of an fp32 [n, n] @ [n, n] matmul on one thread (torch / its BLAS)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2.0 * n**3 / best


def export_artifacts(source: ExportSource, out: Path, formats, precisions, windows) -> list[Artifact]:
    """Every (format, precision) asked for and offered, exported into ``out``; failures are printed."""
    options = ExportOptions(formats=formats, precisions=precisions, windows=windows)
    made = []
    for fmt in options.formats:
        exporter = EXPORTERS[fmt]
        wanted = [p for p in options.precisions if p in exporter.precisions]
        for precision, outcome in exporter.convert(source, out, wanted, options).items():
            if isinstance(outcome, Exception):
                print(f"{fmt} {precision}: export failed: {outcome}", file=sys.stderr)
            else:
                made.append(outcome)
    return made


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("manifest")
    p.add_argument("--bundle", type=Path, help="use the artifacts of this asrkd export bundle")
    p.add_argument("--formats", default="onnx,tflite,executorch" + (",coreml" if sys.platform == "darwin" else ""))
    p.add_argument("--quantize", default="fp32,int8")
    p.add_argument("--windows", default=",".join(f"{w:g}" for w in EXPORT_WINDOWS_SECONDS))
    p.add_argument("--utterances", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    source = ExportSource.of(args.checkpoint)
    rate = source.contract.sample_rate
    utts = read_manifest(args.manifest)[: args.utterances]
    dataset = AudioDataset(utts, sample_rate=rate)
    pcms = [dataset[i]["wav"].numpy() for i in range(len(utts))]
    mean_seconds = float(np.mean([len(x) for x in pcms])) / rate

    floor_flops = flops_per_second(source.graph.model.config, 1.0 / source.contract.feature_frame_shift,
                                   utterance_seconds=mean_seconds)
    core = matmul_flops_one_core()
    floor_rtf = floor_flops / core
    print(f"{len(pcms)} utterances, {sum(len(x) for x in pcms) / rate:.1f} s of audio (mean {mean_seconds:.2f} s); "
          f"model {floor_flops / 1e9:.3f} GFLOP per audio second; one core {core / 1e9:.1f} GFLOP/s "
          f"on fp32 matmul -> floor RTF {floor_rtf:.5f}")

    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            contract = read_contract(args.bundle)
            artifacts = [Artifact.from_dict(a, args.bundle) for a in contract["artifacts"]]
        else:
            artifacts = export_artifacts(source, Path(tmp), args.formats.split(","),
                                         args.quantize.split(","), [float(w) for w in args.windows.split(",")])
        rows = []
        eager = measure(lambda: TorchRunner(source.checkpoint, 1, graph=source.graph), pcms, rate, args.repeats).rtf
        rows.append(("pytorch eager", eager, None))
        for a in artifacts:
            exporter = EXPORTERS[a.format]
            why = exporter.cannot_run(a.checks)
            if why is not None:
                print(f"{a.format} {a.precision}: {why}")
                continue
            rtf = measure(lambda a=a, e=exporter: e.open_runner(a.path, 1), pcms, rate, args.repeats).rtf
            rows.append((f"{a.format} {a.precision}", rtf, a.size_bytes))

    print(f"\n{'runner':<20} {'RTF 1 thread':>12} {'x eager':>8} {'x floor':>8} {'size MB':>8}")
    for name, rtf, size in rows:
        size_text = "-" if size is None else f"{size / 1e6:.2f}"
        print(f"{name:<20} {rtf:>12.5f} {rtf / eager:>8.2f} {rtf / floor_rtf:>8.1f} {size_text:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
