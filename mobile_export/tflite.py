"""TFLite (LiteRT): one ``.tflite`` file per precision, one signature per fixed window.

litert-torch 0.10 converts static shapes only (a dynamic time axis fails in its lowering,
DEPENDENCIES.md), so each window length is its own signature of the same file, and the weights
are stored once and shared by all signatures. A signature takes

    pcm [1, window_samples] float32 (zero-padded), pcm_lens [1] int32 (real length)

and returns ``log_probs [1, T'_window, V]``, ``out_lens [1]`` (+ ``token_ids``, ``confidence``)
by name. Thanks to the length masking a short utterance gives the same valid frames in every
window that holds it (tests/test_export_tflite.py checks it): pick the smallest window that
fits. Longer audio than the largest window is split by the runner (contract.json
``long_audio``); nothing is dropped silently.

    fp32  as converted
    fp16  float16 weights (ai-edge-quantizer float casting), dequantised to float32 at load
    int8  dynamic range: int8 weights per channel, activations quantised on the fly
          (ai-edge-quantizer ``dynamic_wi8_afp32``), the fastest variant on XNNPACK CPUs

fp16 and int8 are derived from the fp32 flatbuffer (conversion is the slow part, ~1 min for
four windows of the student); the log-mel front end stays float32 in all of them (its ops are
recognised by the ``LogMel`` scope litert-torch writes into tensor names).
Run with ``ai_edge_litert.interpreter.Interpreter`` (XNNPACK on by default), see
eval/runners.py ``LiteRTRunner``. `TFLiteExporter` is this format's `mobile_export.exporter.Exporter`.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from asrkd.fileio import atomic_write_bytes
from mobile_export.bundle import Artifact
from mobile_export.exporter import Exporter
from mobile_export.graph import ExportGraph

if TYPE_CHECKING:
    from mobile_export.options import ExportOptions
    from mobile_export.source import ExportSource

PRECISIONS = {
    "fp32": "float32 weights and compute",
    "fp16": "float16 weights (dequantised to float32 at load), float32 compute",
    "int8": "dynamic range: int8 encoder weights, activations quantised on the fly; float32 front end",
}
# litert-torch names a tensor after the module path that produced it ("...LogMel_frontend;73").
FRONTEND_SCOPE = "LogMel"


def signature_name(seconds: float, features_in: bool = False) -> str:
    """``pcm_2s``, ``pcm_2p5s`` (``feats_...`` for the features-in graph)."""
    prefix = "feats" if features_in else "pcm"
    return f"{prefix}_{seconds:g}s".replace(".", "p")


class _PcmSignature(nn.Module):
    """Names the signature's inputs (argument names) and outputs (dict keys) for LiteRT."""

    def __init__(self, graph: ExportGraph):
        super().__init__()
        self.asr = graph  # not "graph": torch.export's GraphModule has an attribute of that name

    def forward(self, pcm: Tensor, pcm_lens: Tensor) -> dict[str, Tensor]:
        return dict(zip(self.asr.output_names, self.asr(pcm, pcm_lens)))


class _FeatureSignature(_PcmSignature):
    def forward(self, feats: Tensor, feat_lens: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return dict(zip(self.asr.output_names, self.asr(feats, feat_lens)))


def convert_fp32(graph: ExportGraph, path: Path, windows: list[float]) -> dict[str, str]:
    """Convert ``graph`` with one signature per window into ``path``; returns {window: signature}."""
    import litert_torch

    if not windows:
        raise ValueError("TFLite needs at least one window length (seconds)")
    module = (_FeatureSignature if graph.features_in else _PcmSignature)(graph).eval()
    converter = litert_torch.Converter()
    signatures = {}
    for seconds in sorted(windows):
        x, lens = graph.example_inputs(graph.input_length(seconds))
        name = signature_name(seconds, graph.features_in)
        converter.signature(name, module, sample_kwargs=dict(zip(graph.input_names, (x, lens))))
        signatures[f"{seconds:g}"] = name
    with torch.no_grad():
        edge_model = converter.convert()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    edge_model.export(str(path))
    return signatures


def _recipe(precision: str):
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    everything = qtyping.TFLOperationName.ALL_SUPPORTED
    if precision == "int8":
        manager.add_dynamic_config(regex=".*", operation_name=everything, num_bits=8)
    elif precision == "fp16":
        manager.add_quantization_config(
            regex=".*",
            operation_name=everything,
            op_config=qtyping.OpQuantizationConfig(
                weight_tensor_config=qtyping.TensorQuantizationConfig(
                    num_bits=16, dtype=qtyping.TensorDataType.FLOAT
                ),
                compute_precision=qtyping.ComputePrecision.FLOAT,
                explicit_dequantize=True,
            ),
            algorithm_key=AlgorithmName.FLOAT_CASTING,
        )
    else:
        raise ValueError(f"TFLite precision {precision!r} unknown; choose from {sorted(PRECISIONS)}")
    # The latest matching rule wins: the front end is left in float32.
    manager.add_quantization_config(
        regex=FRONTEND_SCOPE, operation_name=everything, algorithm_key=AlgorithmName.NO_QUANTIZE
    )
    return manager.get_quantization_recipe()


def quantize(fp32_path: Path, path: Path, precision: str) -> Path:
    """``fp16`` or ``int8`` (dynamic range) copy of an fp32 ``.tflite`` (all signatures)."""
    from ai_edge_quantizer import quantizer

    # its tqdm bars off unless stderr is a terminal (a log gets no carriage-return updates);
    # None: the quantizer's own rule (a bar for large models)
    with _bars_as_lines():
        result = quantizer.Quantizer(str(fp32_path), _recipe(precision)).quantize(
            enable_progress_bar=None if sys.stderr.isatty() else False)
    atomic_write_bytes(path, bytes(result.quantized_model))
    return Path(path)


@contextlib.contextmanager
def _bars_as_lines():
    """Off a terminal, what is written to ``sys.stderr`` within comes out at the end, each line as
    its last carriage-return update: ai-edge-quantizer 0.10 does not pass ``enable_progress_bar``
    to its transformation step, whose bar draws for a model of 100 tensors or more."""
    if sys.stderr.isatty():
        yield
        return
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        sys.stderr.write("\n".join(line.rsplit("\r", 1)[-1] for line in buffer.getvalue().split("\n")))


class TFLiteExporter(Exporter):
    """TFLite at fp32, fp16 and int8, one signature per window of ``options.windows``."""

    name = "tflite"
    suffix = ".tflite"
    precisions = PRECISIONS

    def convert(self, source: ExportSource, out_dir: Path, precisions: Sequence[str],
                options: ExportOptions) -> dict[str, Artifact | Exception]:
        """fp32 is converted once (into a temporary file when not requested itself); fp16 and
        int8 are quantised copies of it with the same signatures."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        windows = sorted(float(w) for w in options.windows)
        with tempfile.TemporaryDirectory() as tmp:
            fp32_path = self.path(out_dir, "fp32") if "fp32" in precisions else Path(tmp) / "fp32.tflite"
            try:
                signatures = convert_fp32(source.graph, fp32_path, windows)
            except Exception as e:
                return {p: e for p in precisions}

            def build(precision: str, path: Path) -> Artifact:
                if precision != "fp32":
                    quantize(fp32_path, path, precision)
                return Artifact(self.name, precision, path, windows_seconds=windows, max_seconds=windows[-1],
                                signatures=signatures, description=PRECISIONS[precision])

            return self.each_precision(out_dir, precisions, build)
