"""Per-chunk compute of each streaming artifact against the whole-utterance artifact of the same
checkpoint, on the same audio, one thread, as ratios measured in one run.

    python bench/bench_streaming.py [CKPT | --bundle DIR] [--manifest M] [--utterances 10]
                                    [--formats onnx,tflite] [--quantize fp32,int8] [--repeats 5]

For each runtime and precision, two artifacts of one checkpoint: the streaming one
(``<format>-stream``, one chunk and the state per call, driven chunk by chunk from its contract as
an app would: eval/streaming_runners.py) and the whole-utterance one (``<format>``, the
utterance in one call: eval/runners.py). Columns:

- ``chunk ms``: median compute of one streaming call (``eval.latency.measure_latency``, audio
  arriving in real time, compute pooled over every call of every utterance);
- ``x utt``: that over the whole-utterance artifact's compute for the mean utterance (median
  pass of ``eval.rtf.measure`` / utterances): what one chunk costs next to decoding it all at once;
- ``RTF``: all streaming compute (the flush included) over the audio's duration;
  ``x whole``: that over the whole-utterance artifact's RTF (above 1: streaming costs more in
  total, a fixed cost per call paid once per chunk instead of once per utterance);
- ``first ms`` / ``final ms``: the median first-partial and final latency (docs/STREAMING.md,
  "Latency").

A first row does the same for PyTorch eager (`asrkd.streaming.StreamingTranscriber` against one
forward of the checkpoint's export graph). Without CKPT or ``--bundle``, a random
``student-stream`` with a raw log-mel front end is exported (its timings are a trained model's;
it emits random tokens, so its latencies mean little). Without ``--manifest`` the audio is
``--utterances`` pieces of noise of 2 to 6 s. Timing noise on a shared machine is large: compare
within one run, as ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_export import export_artifacts

from asrkd.contract import EXPORT_WINDOWS_SECONDS
from asrkd.data import AudioDataset, read_manifest
from asrkd.features import FrontendConfig, LogMel
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.streaming import StreamingTranscriber, streamable_frontend
from asrkd.text import CharTokenizer
from eval.latency import LatencyStats, TranscriberStepper, measure_latency
from eval.rtf import Timing, measure
from eval.runners import TorchRunner
from eval.streaming_runners import STEPPERS
from mobile_export.bundle import Artifact, read_contract
from mobile_export.formats import EXPORTERS
from mobile_export.source import ExportSource
from mobile_export.stream_export import stream_graph

STREAM_SUFFIX = "-stream"


def random_streaming_source() -> ExportSource:
    """A random ``student-stream`` with the streamable default front end."""
    tokenizer = CharTokenizer.default_english()
    torch.manual_seed(0)
    model = ConformerCTC(build_preset("student-stream", vocab_size=tokenizer.vocab_size)).eval()
    return ExportSource.of((LogMel(streamable_frontend(FrontendConfig())).eval(), model, tokenizer))


def bench_audio(manifest: str | None, count: int, sample_rate: int) -> list[np.ndarray]:
    """The first ``count`` utterances of ``manifest``, or ``count`` pieces of noise of 2 to 6 s."""
    if manifest:
        dataset = AudioDataset(read_manifest(manifest)[:count], sample_rate=sample_rate)
        return [dataset[i]["wav"].numpy() for i in range(len(dataset))]
    rng = np.random.default_rng(0)
    return [(0.05 * rng.standard_normal(int(rng.uniform(2, 6) * sample_rate))).astype(np.float32)
            for _ in range(count)]


def streaming_rtf(stats: LatencyStats) -> float:
    """All compute (every call and flush of every utterance) over all the audio."""
    compute = sum(sum(u.chunk_compute) + u.finish_compute for u in stats.per_utterance)
    return compute / sum(u.duration for u in stats.per_utterance)


def row(name: str, stats: LatencyStats, whole: Timing) -> str:
    """One line of the table: the streaming figures and their ratios to the whole-utterance run."""
    per_utt = whole.median_seconds / len(stats.per_utterance)
    chunk, rtf = stats.chunk_compute.median, streaming_rtf(stats)
    first = "-" if stats.first_partial is None else f"{1000 * stats.first_partial.median:.0f}"
    return (f"{name:<20} {1000 * chunk:>9.2f} {chunk / per_utt:>7.3f} {rtf:>8.4f} {rtf / whole.rtf:>8.2f} "
            f"{first:>9} {1000 * stats.final.median:>9.0f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="a streaming checkpoint or run folder (default: a random "
                   "student-stream); with --bundle, the one it was exported from")
    p.add_argument("--bundle", type=Path, help="use the artifacts of this asrkd export bundle (of a streaming checkpoint)")
    p.add_argument("--manifest", help="audio to run (default: noise)")
    p.add_argument("--formats", default="onnx,tflite", help="runtimes: each as <format> and <format>-stream "
                   "(with --bundle: those of its artifacts)")
    p.add_argument("--quantize", default="fp32,int8", help="precisions (with --bundle: those of its artifacts)")
    p.add_argument("--windows", default=",".join(f"{w:g}" for w in EXPORT_WINDOWS_SECONDS),
                   help="input windows of the whole-utterance TFLite artifact (seconds)")
    p.add_argument("--utterances", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="timed passes of each whole-utterance artifact")
    args = p.parse_args(argv)
    if args.bundle and not args.checkpoint:
        p.error("--bundle needs the CKPT it was exported from (for the PyTorch row)")

    if args.bundle:
        contract = read_contract(args.bundle)
        # the PyTorch row at the chunking the bundle was exported at (asrkd export --chunk-size)
        config = contract["model"]["config"]
        source = ExportSource.of(args.checkpoint).at_chunking(config["chunk_size"], config["left_chunks"])
    else:
        source = ExportSource.of(args.checkpoint) if args.checkpoint else random_streaming_source()
        contract = {**source.contract.to_dict(), "streaming": stream_graph(source).streaming_contract()}
    rate = source.contract.sample_rate
    pcms = bench_audio(args.manifest, args.utterances, rate)
    s = contract["streaming"]
    print(f"{len(pcms)} utterances, {sum(len(x) for x in pcms) / rate:.1f} s of audio; chunks of "
          f"{s['chunk_ms']:.0f} ms ({s['chunk_samples']} samples), {s['left_chunks']} chunks of left context; "
          "one thread")

    torch.set_num_threads(1)
    formats = [f for fmt in args.formats.split(",") for f in (fmt, fmt + STREAM_SUFFIX)]
    precisions = args.quantize.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:  # --formats and --quantize pick from it (a bundle also holds e.g. Core ML, not run here)
            artifacts = [a for a in (Artifact.from_dict(d, args.bundle) for d in contract["artifacts"])
                         if a.format in formats and a.precision in precisions]
        else:
            artifacts = export_artifacts(source, Path(tmp), formats, precisions,
                                         [float(w) for w in args.windows.split(",")])
        by_name = {(a.format, a.precision): a for a in artifacts}

        graph = source.graph
        eager = measure_latency(TranscriberStepper(StreamingTranscriber(graph.model, graph.frontend, source.tokenizer)),
                                pcms, rate)
        whole = measure(lambda: TorchRunner(source.checkpoint, 1, graph=graph), pcms, rate, args.repeats)
        lines = [row("pytorch eager", eager, whole)]
        for (fmt, precision), a in by_name.items():
            if not fmt.endswith(STREAM_SUFFIX) or (fmt.removesuffix(STREAM_SUFFIX), precision) not in by_name:
                continue
            full = by_name[(fmt.removesuffix(STREAM_SUFFIX), precision)]
            stepper = STEPPERS[fmt](a.path, contract, threads=1)
            stats = measure_latency(stepper, pcms, rate)
            exporter = EXPORTERS[full.format]
            whole = measure(lambda e=exporter, f=full: e.open_runner(f.path, 1), pcms, rate, args.repeats)
            lines.append(row(f"{fmt.removesuffix(STREAM_SUFFIX)} {precision}", stats, whole))

    print(f"\n{'runtime':<20} {'chunk ms':>9} {'x utt':>7} {'RTF':>8} {'x whole':>8} {'first ms':>9} {'final ms':>9}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
