"""ONNX: the export graph through torch's dynamo exporter, with dynamic batch and time axes.

    fp32  torch.onnx.export(dynamo=True); weights in the .onnx file (no external data)
    int8  onnxruntime dynamic quantization (int8 weights, activations quantised per call) of
          the encoder's MatMul/Gemm; the log-mel front end stays fp32
    fp16  the encoder cast to float16 in torch and exported the same way; the front end, the
          inputs and the outputs stay float32, so callers feed the same arrays

The front end stays fp32 in every precision: its per-band variance sums hundreds of squared
log-mel deviations (overflows fp16's 65504 on long windows) and an int8 DFT basis would distort
the spectrum. For int8, front-end nodes are found by the name scope the dynamo exporter records
(``pkg.torch.onnx.name_scopes`` = ['', 'frontend', ...]).

The legacy (TorchScript) exporter is not used: it bakes the traced length into reshapes
(docs DEPENDENCIES.md). Run with onnxruntime (eval/runners.py ``OnnxRunner``). `OnnxExporter` is
this format's `mobile_export.exporter.Exporter`.
"""

from __future__ import annotations

import ast
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mobile_export.bundle import Artifact
from mobile_export.exporter import Exporter
from mobile_export.graph import ExportGraph, with_encoder_dtype

if TYPE_CHECKING:
    from mobile_export.options import ExportOptions
    from mobile_export.source import ExportSource

PRECISIONS = {
    "fp32": "float32 weights and compute",
    "fp16": "float16 encoder weights and compute, float32 front end and I/O",
    "int8": "int8 encoder weights, dynamically quantised activations (onnxruntime), float32 front end",
}
OPSET = 18


def export_fp32(graph: ExportGraph, path: Path, example_seconds: float = 2.0) -> Path:
    """Export ``graph`` to ``path`` (fp32) with dynamic batch and time axes; returns the path.

    Traced with a batch of 2: torch.export specialises sizes 0 and 1, so a batch-1 example would
    freeze the batch axis.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dim = torch.export.Dim.DYNAMIC
    names = graph.input_names
    example = graph.example_inputs(graph.input_length(example_seconds), batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (torchvision ops absent, etc.)
        program = torch.onnx.export(
            graph,
            example,
            dynamo=True,
            input_names=list(names),
            output_names=list(graph.output_names),
            dynamic_shapes={"x": {0: dim, 1: dim}, "x_lens": {0: dim}},
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


def frontend_nodes(model) -> list[str]:
    """Names of the nodes that belong to the log-mel front end of an exported graph."""
    names = []
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                scopes = ast.literal_eval(prop.value)
                if len(scopes) > 1 and scopes[1] == "frontend":
                    names.append(node.name)
    return names


def quantize_int8(fp32_path: Path, path: Path) -> Path:
    """onnxruntime dynamic int8 (per-channel weights) of the encoder's MatMul/Gemm nodes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path),
        str(path),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_exclude=frontend_nodes(onnx.load(str(fp32_path))),
    )
    return Path(path)


def export_fp16(graph: ExportGraph, path: Path) -> Path:
    """Float16 encoder (weights and compute), float32 front end, float32 inputs and outputs.

    The encoder is cast in torch before export (``with_encoder_dtype``) rather than converting
    the fp32 ONNX file: onnxruntime's float16 converter puts fp16 round trips between blocked
    front-end nodes (and duplicates their Cast node names), which is exactly what must not happen.
    """
    return export_fp32(with_encoder_dtype(graph, torch.float16), path)


def convert_via_fp32(exporter: Exporter, out_dir: Path, precisions: Sequence[str],
                     make_fp32: Callable[[Path], None],
                     derive: Callable[[str, Path, Path], Artifact]) -> dict[str, Artifact | Exception]:
    """The ONNX formats' conversion: ``make_fp32(path)`` writes the fp32 model once (in ``out_dir``
    when fp32 is requested, else in a temporary file), then ``derive(precision, fp32_path, path)``
    makes each requested precision's artifact (`Exporter.each_precision`). When the fp32 export
    fails, every precision is recorded with its error, since all depend on it."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = exporter.path(out_dir, "fp32") if "fp32" in precisions else Path(tmp) / "fp32.onnx"
        try:
            make_fp32(fp32_path)
        except Exception as e:  # every requested precision depends on it
            return {p: e for p in precisions}
        return exporter.each_precision(out_dir, precisions,
                                       lambda precision, path: derive(precision, fp32_path, path))


class OnnxExporter(Exporter):
    """ONNX at fp32, fp16 and int8: dynamic batch and time axes, so no window option applies."""

    name = "onnx"
    suffix = ".onnx"
    precisions = PRECISIONS

    def convert(self, source: ExportSource, out_dir: Path, precisions: Sequence[str],
                options: ExportOptions) -> dict[str, Artifact | Exception]:
        """The fp32 export is made once; fp16 and int8 are derived from it (kept in a temporary
        file when fp32 itself is not requested)."""
        graph = source.graph
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)

        def derive(precision: str, fp32_path: Path, path: Path) -> Artifact:
            if precision == "int8":
                quantize_int8(fp32_path, path)
            elif precision == "fp16":
                export_fp16(graph, path)
            elif precision != "fp32":
                raise ValueError(f"ONNX precision {precision!r} unknown; choose from {sorted(PRECISIONS)}")
            return Artifact(self.name, precision, path, description=PRECISIONS[precision])

        return convert_via_fp32(self, out_dir, precisions, lambda path: export_fp32(graph, path), derive)
