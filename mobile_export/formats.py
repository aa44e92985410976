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
from mobile_export.tflite import TFLiteExporter

EXPORTERS: dict[str, Exporter] = {
    e.name: e for e in (CoreMLExporter(), TFLiteExporter(), OnnxExporter(), ExecuTorchExporter(),
                        SherpaOnnxExporter())
}
FORMATS = tuple(EXPORTERS)
# What `asrkd export` makes unless --formats says otherwise: the formats whose artifact holds the
# model's own front end. sherpa-onnx is on request: sherpa computes the features itself, which
# match the model's only when it was trained with the `sherpa` front-end preset (docs/SHERPA.md).
DEFAULT_FORMATS = ("coreml", "tflite", "onnx", "executorch")
