"""Streaming artifacts: the chunk step (mobile_export/stream_graph.py) as ONNX, TFLite and Core ML files.

    onnx-stream    model.<precision>.stream.onnx     onnxruntime; fp32, int8 (dynamic, as ``onnx``)
    tflite-stream  model.<precision>.stream.tflite   LiteRT, one signature ``chunk``; fp32, int8
                                                      (dynamic range, as ``tflite``)
    coreml-stream  model.<precision>.stream.mlpackage  Core ML from the same graph; fp16, fp32,
                                                      int8 (checked on Linux: mobile_export/stream_coreml.py)

Each takes ``pcm [1, chunk_samples]``, ``feature_frames [1]`` and the state tensors, and returns
``log_probs [1, chunk_size, V]`` and the next state, all by name, with fixed shapes (contract.json
``streaming`` lists them). The quantisation is the full-context formats' (`mobile_export.onnx`,
`mobile_export.tflite`), the front end kept float32 in the same way.

Made by default for a streaming checkpoint (`is_streaming`: causal, ``chunk_size > 0``) next to
the full-context formats (`mobile_export.formats.formats_for`); for any other checkpoint
asking for one is refused with the reason (`asrkd.streaming.StreamingError`). Verified chunk by
chunk in its runtime (eval/streaming_runners.py) against the PyTorch streaming model.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from asrkd.decoding import greedy_decode
from asrkd.metrics import word_error_rate
from eval.streaming_runners import STEPPERS, StreamStepper
from mobile_export.bundle import Artifact
from mobile_export.exporter import Exporter
from mobile_export.onnx import OPSET, convert_via_fp32, quantize_int8
from mobile_export.stream_graph import StreamGraph
from mobile_export.tflite import quantize

if TYPE_CHECKING:
    from eval.report import Transcripts
    from mobile_export.options import ExportOptions
    from mobile_export.source import ExportSource

PRECISIONS = {
    "fp32": "float32 weights and compute; one chunk and the stream state per call",
    "int8": "int8 encoder weights, dynamically quantised activations, float32 front end; one chunk and "
    "the stream state per call",
}
SIGNATURE = "chunk"


def stream_graph(source: ExportSource) -> StreamGraph:
    """The chunk step of ``source``'s model and front end (a `StreamingError` if it cannot stream)."""
    return StreamGraph(source.graph.frontend, source.graph.model)


def export_onnx(graph: StreamGraph, path: Path) -> Path:
    """``graph`` to ``path`` (fp32) with the dynamo exporter, every shape static."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter
        program = torch.onnx.export(graph, graph.example_inputs(), dynamo=True,
                                    input_names=list(graph.input_names), output_names=list(graph.output_names),
                                    opset_version=OPSET, optimize=True, verbose=False)
    program.save(str(path), external_data=False)
    return path


class _Signature(nn.Module):
    """Names the TFLite signature's inputs (argument names) and outputs (dict keys)."""

    def __init__(self, graph: StreamGraph):
        super().__init__()
        self.asr = graph  # not "graph": torch.export's GraphModule has an attribute of that name

    def forward(self, pcm: Tensor, feature_frames: Tensor, samples: Tensor, features: Tensor,
                attention: Tensor, convolution: Tensor, frames: Tensor) -> dict[str, Tensor]:
        outputs = self.asr(pcm, feature_frames, samples, features, attention, convolution, frames)
        return dict(zip(self.asr.output_names, outputs, strict=True))


def export_tflite(graph: StreamGraph, path: Path) -> Path:
    """``graph`` to ``path`` (fp32) with litert-torch, one signature (`SIGNATURE`)."""
    import litert_torch

    converter = litert_torch.Converter()
    converter.signature(SIGNATURE, _Signature(graph).eval(),
                        sample_kwargs=dict(zip(graph.input_names, graph.example_inputs(), strict=True)))
    with torch.no_grad():
        edge_model = converter.convert()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    edge_model.export(str(path))
    return Path(path)


class StreamExporter(Exporter):
    """What the streaming formats share: runners that drive the artifact chunk by chunk from the
    bundle's contract.json (eval/streaming_runners.py)."""

    streaming = True

    def open_runner(self, path: str | Path, threads: int = 1) -> StreamStepper:
        """The artifact driven chunk by chunk, as its bundle's contract.json says."""
        return STEPPERS[self.name].load(path, threads)


class DerivedStreamExporter(StreamExporter):
    """A streaming format whose fp32 file is exported once and int8 derived from the file."""

    precisions = PRECISIONS

    @abstractmethod
    def export_fp32(self, graph: StreamGraph, path: Path) -> None:
        """Write ``graph`` at fp32 to ``path``."""

    @abstractmethod
    def quantize(self, fp32_path: Path, path: Path, precision: str) -> None:
        """Write the ``precision`` copy of the fp32 artifact at ``fp32_path`` to ``path``."""

    def convert(self, source: ExportSource, out_dir: Path, precisions: Sequence[str],
                options: ExportOptions) -> dict[str, Artifact | Exception]:
        """fp32 is exported once (in a temporary file when not requested), int8 derived from it."""
        graph = stream_graph(source)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)

        def derive(precision: str, fp32_path: Path, path: Path) -> Artifact:
            if precision != "fp32":
                self.quantize(fp32_path, path, precision)
            return Artifact(self.name, precision, path, description=PRECISIONS[precision])

        return convert_via_fp32(self, out_dir, precisions, lambda path: self.export_fp32(graph, path), derive)


class OnnxStreamExporter(DerivedStreamExporter):
    """``onnx-stream``: onnxruntime, fp32 and int8."""

    name = "onnx-stream"
    suffix = ".stream.onnx"

    def export_fp32(self, graph: StreamGraph, path: Path) -> None:
        export_onnx(graph, path)

    def quantize(self, fp32_path: Path, path: Path, precision: str) -> None:
        quantize_int8(fp32_path, path)


class TFLiteStreamExporter(DerivedStreamExporter):
    """``tflite-stream``: LiteRT, fp32 and int8 (dynamic range)."""

    name = "tflite-stream"
    suffix = ".stream.tflite"

    def export_fp32(self, graph: StreamGraph, path: Path) -> None:
        export_tflite(graph, path)

    def quantize(self, fp32_path: Path, path: Path, precision: str) -> None:
        quantize(fp32_path, path, precision)


def token_agreement(reference: Transcripts, candidate: Transcripts, blank_id: int) -> float | None:
    """1 - the token error rate of ``candidate``'s greedy token ids against ``reference``'s
    (per-frame argmax, repeats collapsed, blanks dropped) over every utterance both have
    log-probs for; None if none has."""
    def ids(log_probs: np.ndarray) -> str:
        return " ".join(map(str, greedy_decode(log_probs[None], np.array([len(log_probs)]), blank=blank_id)[0]))

    pairs = [(ids(r), ids(c)) for r, c in zip(reference.log_probs, candidate.log_probs, strict=True)
             if r is not None and c is not None]
    if not pairs:
        return None
    rate = word_error_rate([r for r, _ in pairs], [c for _, c in pairs]).rate
    return None if rate is None else 1.0 - rate


def streaming_measures(reference: Transcripts, candidate: Transcripts, blank_id: int,
                       latency: Any | None) -> dict[str, Any]:
    """The report entry's ``streaming``: token agreement with the PyTorch streaming model and,
    when measured, the latency (`eval.latency.LatencyStats`) of the artifact on one thread."""
    return {"token_agreement": token_agreement(reference, candidate, blank_id),
            "latency": None if latency is None else latency.to_dict()}
