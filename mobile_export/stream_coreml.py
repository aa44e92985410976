"""Core ML streaming artifact (``coreml-stream``): the chunk step of mobile_export/stream_graph.py
as an ML program (``model.<precision>.stream.mlpackage``), traced with ``torch.jit.trace``.

    fp16   encoder in float16 (Neural Engine capable); front end, inputs and outputs float32
    fp32   everything float32
    int8   the fp16 program with int8 per-channel encoder weights

Inputs and outputs are contract.json's ``streaming`` tensors, by name, every shape static (one
shape: nothing to enumerate). The conversion, compression and front-end handling are the
full-context Core ML format's (mobile_export/coreml.py). As there, Core ML runs only on Apple
platforms: on Linux the saved program is loaded and checked (`check_package`: its inputs and
outputs equal the contract's names, shapes and dtypes, compressed precisions hold compressed
weights, the ``asrkd.*`` metadata is there) and the report says ``not_run`` with that reason.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mobile_export import coreml
from mobile_export.bundle import Artifact
from mobile_export.stream_export import StreamExporter, stream_graph
from mobile_export.stream_graph import StreamGraph

if TYPE_CHECKING:
    from mobile_export.options import ExportOptions
    from mobile_export.source import ExportSource

PRECISIONS = {
    "fp16": "float16 encoder (Neural Engine capable), float32 front end and I/O; one chunk and the "
    "stream state per call",
    "fp32": "float32 weights and compute; one chunk and the stream state per call",
    "int8": "int8 per-channel encoder weights, float16 compute; one chunk and the stream state per call",
}
_NUMPY = {"float32": np.float32, "int32": np.int32}
_SPEC_DTYPES = {"float32": "FLOAT32", "int32": "INT32"}  # Core ML's names of the contract's dtypes
STREAMING_METADATA = f"{coreml.METADATA_PREFIX}streaming"


def trace(graph: StreamGraph) -> torch.jit.ScriptModule:
    """``graph`` traced with ``torch.jit.trace`` on its `StreamGraph.example_inputs` (what
    ``ct.convert`` reads)."""
    with torch.no_grad():
        # Traced directly (a flat tuple of tensors), so module scopes start at "frontend" / "model".
        return torch.jit.trace(graph.eval(), graph.example_inputs(), check_trace=False)


def convert(graph: StreamGraph, traced: torch.jit.ScriptModule, precision: str, target: str):
    """An in-memory ``ct.models.MLModel`` of ``graph`` at ``fp16`` (front end float32) or ``fp32``."""
    import coremltools as ct

    spec = graph.streaming_contract()
    compute = (ct.precision.FLOAT32 if precision == "fp32"
               else ct.transform.FP16ComputePrecision(op_selector=lambda op: not coreml.is_frontend_op(op)))
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name=n, shape=tuple(t["shape"]), dtype=_NUMPY[t["dtype"]])
                for n, t in spec["inputs"].items()],
        outputs=[ct.TensorType(name=n, dtype=_NUMPY[t["dtype"]]) for n, t in spec["outputs"].items()],
        convert_to="mlprogram",
        compute_precision=compute,
        minimum_deployment_target=coreml.deployment_target(target),
    )


def describe(mlmodel, source: ExportSource, graph: StreamGraph, precision: str) -> None:
    """Descriptions and ``asrkd.*`` metadata (with the whole ``streaming`` section) on the model."""
    spec = graph.streaming_contract()
    mlmodel.short_description = (f"asrkd streaming Conformer-CTC speech recogniser, one chunk per call "
                                 f"({precision}); see contract.json of its bundle")
    for side, description in (("inputs", mlmodel.input_description), ("outputs", mlmodel.output_description)):
        for name, t in spec[side].items():
            description[name] = t.get("meaning") or next(
                s["meaning"] for s in spec["states"] if name in (s["name"], s["output"]))
    mlmodel.user_defined_metadata.update(coreml.metadata(source.contract, source.tokenizer, []))
    mlmodel.user_defined_metadata[STREAMING_METADATA] = json.dumps(spec)


def check_package(path: Path, graph: StreamGraph, precision: str) -> dict[str, Any]:
    """Load a saved .mlpackage without compiling it (works on Linux) and check it against the
    streaming contract: every input and output by name, shape and dtype, the metadata, and that
    compressed precisions hold compressed weights. Returns what was found; raises
    `mobile_export.coreml.CoreMLCheckError` naming each mismatch."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    found = {"inputs": {f.name: coreml.array_shape(f) for f in spec.description.input},
             "outputs": {f.name: coreml.array_shape(f) for f in spec.description.output}}
    expected = graph.streaming_contract()
    problems = []
    for side in ("inputs", "outputs"):
        want = {n: {"dtype": _SPEC_DTYPES[t["dtype"]], "shape": t["shape"]} for n, t in expected[side].items()}
        if found[side] != want:
            problems.append(f"{side} are {found[side]}, expected {want}")
    meta = dict(spec.description.metadata.userDefined)
    missing = [k for k in (*coreml.metadata_keys(), STREAMING_METADATA) if k not in meta]
    if missing:
        problems.append(f"metadata keys missing: {missing}")
    summary = coreml.weights_summary(spec)
    kinds = summary["weight_tensors"]
    expect = {"int8": "int8", "fp16": "float16"}.get(precision)
    if expect and not kinds.get(expect):
        problems.append(f"{precision} program holds no {expect} weights (found {kinds})")
    if problems:
        raise coreml.CoreMLCheckError(f"{path}: " + "; ".join(problems))
    return {**found, "specification_version": spec.specificationVersion, **summary,
            "metadata_keys": sorted(k for k in meta if k.startswith(coreml.METADATA_PREFIX))}


class CoreMLStreamExporter(StreamExporter):
    """``coreml-stream`` at fp16, fp32 and int8, for ``options.coreml_target``."""

    name = "coreml-stream"
    suffix = ".stream.mlpackage"
    precisions = PRECISIONS

    def convert(self, source: ExportSource, out_dir: Path, precisions: Sequence[str],
                options: ExportOptions) -> dict[str, Artifact | Exception]:
        """Traced once and converted to fp16 once (int8 compresses that one); every saved package
        is checked with `check_package` (the artifact's ``checks``)."""
        graph, target = stream_graph(source), options.coreml_target
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            traced = trace(graph)
            fp16 = convert(graph, traced, "fp16", target) if any(p != "fp32" for p in precisions) else None
        except Exception as e:
            return {p: e for p in precisions}

        def build(precision: str, path: Path) -> Artifact:
            if precision == "fp32":
                mlmodel = convert(graph, traced, "fp32", target)
            elif precision == "fp16":
                mlmodel = fp16
            else:
                mlmodel = coreml.compress(fp16, precision)
            describe(mlmodel, source, graph, precision)
            if path.exists():
                shutil.rmtree(path)
            mlmodel.save(str(path))
            checks = {**check_package(path, graph, precision), "minimum_deployment_target": target}
            return Artifact(self.name, precision, path, description=PRECISIONS[precision], checks=checks)

        return self.each_precision(out_dir, precisions, build)

    def check(self, artifact: Artifact, source: ExportSource) -> dict[str, Any]:
        """`check_package` on the saved program."""
        return check_package(artifact.path, stream_graph(source), artifact.precision)

    def cannot_run(self, checks: dict[str, Any] | None) -> str | None:
        return coreml.cannot_run_here(checks)
