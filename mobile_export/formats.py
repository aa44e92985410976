"""The formats asrkd exports to, one `mobile_export.exporter.Exporter` each, in report order.

    EXPORTERS["onnx"].convert(source, out_dir, ["fp32", "int8"], options)

A new format is a module with an Exporter subclass (see mobile_export/onnx.py) added here, and a
runner for its runtime in eval/runners.py.
"""

from __future__ import annotations

from mobile_export.coreml import CoreMLExporter
from mobile_export.executorch import ExecuTorchExporter
from mobile_export.exporter import Exporter
from mobile_export.onnx import OnnxExporter
from mobile_export.sherpa_onnx import SherpaOnnxExporter
from mobile_export.source import ExportSource
from mobile_export.stream_coreml import CoreMLStreamExporter
from mobile_export.stream_export import OnnxStreamExporter, TFLiteStreamExporter
from mobile_export.stream_graph import is_streaming
from mobile_export.tflite import TFLiteExporter

EXPORTERS: dict[str, Exporter] = {
    e.name: e for e in (CoreMLExporter(), TFLiteExporter(), OnnxExporter(), ExecuTorchExporter(),
                        SherpaOnnxExporter(), CoreMLStreamExporter(), TFLiteStreamExporter(), OnnxStreamExporter())
}
FORMATS = tuple(EXPORTERS)
# What `asrkd export` makes unless --formats says otherwise: the formats whose artifact holds the
# model's own front end. sherpa-onnx is on request: sherpa computes the features itself, which
# match the model's only when it was trained with the `sherpa` front-end preset (docs/SHERPA.md).
DEFAULT_FORMATS = ("coreml", "tflite", "onnx", "executorch")
# The chunk-by-chunk artifacts (stream_export.py), made by default for a streaming checkpoint.
STREAMING_FORMATS = tuple(name for name, e in EXPORTERS.items() if e.streaming)


def formats_for(formats: tuple[str, ...], source: ExportSource) -> tuple[str, ...]:
    """The formats an export of ``source`` makes when ``formats`` are asked for: the default
    formats of a streaming checkpoint (causal, chunked) gain `STREAMING_FORMATS`; anything else
    is ``formats`` as given (a streaming format asked for a non-streaming checkpoint is then
    refused by its exporter, with the reason)."""
    if tuple(formats) == DEFAULT_FORMATS and is_streaming(source.graph.model):
        return (*DEFAULT_FORMATS, *STREAMING_FORMATS)
    return tuple(formats)
