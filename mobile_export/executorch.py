"""ExecuTorch: a ``.pte`` program per precision, lowered to the XNNPACK delegate, dynamic length.

    fp32  torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch
    fp16  the encoder cast to float16 in torch (``with_encoder_dtype``), the front end and the
          inputs/outputs float32, then the same lowering
    int8  PT2E first: XNNPACKQuantizer with dynamic, per-channel symmetric int8 linear layers
          (no calibration data needed), then the same lowering

The time axis is dynamic up to ``max_seconds`` (default: the largest window): ExecuTorch plans
memory for the upper bound, so the bound is part of the artifact (``Artifact.max_seconds``) and
longer audio is split by the runner (contract ``long_audio``). The program is exported with a
lower bound of ``MIN_SECONDS`` for the shape solver, but the runtime does not enforce lower
bounds and shorter inputs (down to one sample) give the same frames as PyTorch. Batch is 1.

Two things this module works around, both checked with torch 2.13 / executorch 1.5.1:
- The program is traced with an input at the upper bound. The fake-tensor convolution rule picks
  a CPU conv backend from the size hint and records that choice as a guard on the length (e.g.
  ``samples + 400 > 20480``), which ExecuTorch then uses as the length's range: traced at 2 s,
  a program planned for 30 s refuses anything over 2.56 s. Traced at the maximum, the guards
  only raise the lower bound, which the runtime does not enforce (memory is planned for the
  maximum), and every shorter length runs (tests/test_export_formats.py).
- Non-persistent buffers (the front end's DFT basis and mel filterbank, RoPE frequencies) are
  made persistent on a copy: XNNPACK's lowering otherwise fails with "Non-persistent buffer ...
  is in the state dict".

Run with ExecuTorch's Python runtime (eval/runners.py ``ExecuTorchRunner``). `ExecuTorchExporter` is
this format's `mobile_export.exporter.Exporter`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from asrkd.fileio import atomic_write_bytes
from mobile_export.bundle import Artifact
from mobile_export.exporter import Exporter
from mobile_export.graph import MIN_SECONDS, ExportGraph, with_encoder_dtype

if TYPE_CHECKING:
    from mobile_export.options import ExportOptions
    from mobile_export.source import ExportSource

PRECISIONS = {
    "fp32": "float32 weights and compute, XNNPACK delegate",
    "fp16": "float16 encoder weights and compute, float32 front end and I/O, XNNPACK delegate",
    "int8": "int8 per-channel linear weights with dynamically quantised activations (PT2E), XNNPACK",
}


def _persistent_copy(graph: ExportGraph) -> ExportGraph:
    graph = copy.deepcopy(graph)
    for module in graph.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            module.register_buffer(name, buffer, persistent=True)
    return graph


def export_program(graph: ExportGraph, max_seconds: float, precision: str = "fp32"):
    """``torch.export`` of ``graph`` (batch 1, dynamic length up to ``max_seconds``), quantised
    for ``int8``. Returns the ``ExportedProgram`` before lowering."""
    if precision not in PRECISIONS:
        raise ValueError(f"ExecuTorch precision {precision!r} unknown; choose from {sorted(PRECISIONS)}")
    if precision == "fp16":
        graph = with_encoder_dtype(graph, torch.float16)
    graph = _persistent_copy(graph).eval()
    low, high = graph.input_length(MIN_SECONDS), graph.input_length(max_seconds)
    example = graph.example_inputs(high)
    dynamic = {"x": {1: torch.export.Dim.DYNAMIC(min=low, max=high)}, "x_lens": None}
    with torch.no_grad():
        program = torch.export.export(graph, example, dynamic_shapes=dynamic)
    if precision != "int8":
        return program
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class LinearOnlyQuantizer(XNNPACKQuantizer):
        """XNNPACKQuantizer's ``transform_for_annotation`` turns every scalar operand of add/mul
        into a float32 tensor, which makes the integer length arithmetic (``lengths + 2 * pad``)
        float and breaks the program (executorch 1.5.1). With the dynamic config only linear
        layers are annotated, and they read no scalar operand: skip the transform."""

        def transform_for_annotation(self, model):
            return model

    quantizer = LinearOnlyQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    )
    with torch.no_grad():
        prepared = prepare_pt2e(program.module(), quantizer)
        prepared(*example)  # dynamic quantisation observes nothing, but the pass expects a call
        quantized = convert_pt2e(prepared)
        return torch.export.export(quantized, example, dynamic_shapes=dynamic)


def lower(program) -> bytes:
    """XNNPACK-delegated ExecuTorch program bytes of an ``ExportedProgram``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    return edge.to_executorch().buffer


class ExecuTorchExporter(Exporter):
    """ExecuTorch at fp32, fp16 and int8, dynamic length up to the largest of ``options.windows``."""

    name = "executorch"
    suffix = ".pte"
    precisions = PRECISIONS

    def convert(self, source: ExportSource, out_dir: Path, precisions: Sequence[str],
                options: ExportOptions) -> dict[str, Artifact | Exception]:
        """Each precision exported and lowered on its own."""
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        max_seconds = float(max(options.windows))

        def build(precision: str, path: Path) -> Artifact:
            atomic_write_bytes(path, lower(export_program(source.graph, max_seconds, precision)))
            return Artifact(self.name, precision, path, max_seconds=max_seconds,
                            description=PRECISIONS[precision])

        return self.each_precision(out_dir, precisions, build)
