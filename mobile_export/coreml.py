"""Core ML: an ML program (``.mlpackage``) per precision, traced with ``torch.jit.trace``.

    fp16   default: encoder in float16 (Neural Engine capable), log-mel front end in float32
    fp32   everything float32 (GPU/CPU only: the Neural Engine computes in float16)
    int8   fp16 program with int8 per-channel weights (``linear_quantize_weights``)
    pal6   fp16 program with 6-bit k-means palettized weights (``palettize_weights``)
    pal4   the same with 4 bits (smallest; check its WER)

The front end stays float32 in every precision: its per-band variance sums hundreds of squared
log-mel deviations, which overflows float16 (max 65504) on long windows. Front-end ops are
recognised by the TorchScript module scope coremltools records (``frontend``), and its constants
(DFT basis, mel filterbank) are excluded from weight compression.

Input shapes (``shapes``):
- ``"enumerated"`` (default): ``pcm`` is ``[1, window_samples]`` for each window, zero-padded,
  with the real length in ``pcm_lens``. Core ML compiles each shape ahead of time, so the model
  can run on the Neural Engine (ANE). With a single window the input is simply static.
- ``"range"``: ``pcm`` is ``[1, 1..max_samples]`` (``ct.RangeDim``): no padding, but Core ML
  typically runs flexible-shape programs on the GPU or CPU, not the ANE.

Metadata (``user_defined_metadata``, keys ``asrkd.*``): tokens, blank id, sample rate, front-end
config, subsampling, output frame shift, windows, vocabulary hash: an app needs nothing else.

Core ML runs only on Apple platforms. On Linux ``export`` still converts, saves and then checks
the saved program (``check_package``: input and output names, types and shapes, the MIL
operations, weight precisions, metadata); ``predict`` needs macOS (eval/runners.py
``CoreMLRunner``), so the report says ``not_run`` with that reason. `CoreMLExporter` is this
format's `mobile_export.exporter.Exporter`.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from asrkd.contract import Contract
from mobile_export.bundle import Artifact
from mobile_export.exporter import Exporter
from mobile_export.graph import MIN_SECONDS, TENSOR_MEANINGS, ExportGraph

if TYPE_CHECKING:
    from mobile_export.options import ExportOptions
    from mobile_export.source import ExportSource

PRECISIONS = {
    "fp16": "float16 encoder (Neural Engine capable), float32 front end",
    "fp32": "float32 weights and compute (GPU/CPU)",
    "int8": "int8 per-channel encoder weights (linear_quantize_weights), float16 compute",
    "pal6": "6-bit k-means palettized encoder weights, float16 compute",
    "pal4": "4-bit k-means palettized encoder weights, float16 compute",
}
SHAPE_MODES = ("enumerated", "range")
DEFAULT_TARGET = "iOS17"
METADATA_PREFIX = "asrkd."
# Front-end ops carry this TorchScript module name in their scope.
FRONTEND_SCOPE = "frontend"
# Weight ops that coremltools writes for compressed weights.
COMPRESSED_WEIGHT_OPS = {
    "constexpr_affine_dequantize": "int8",
    "constexpr_blockwise_shift_scale": "int8",
    "constexpr_lut_to_dense": "palettized",
}
_OUTPUT_DTYPES = {"log_probs": np.float32, "confidence": np.float32, "calibrated_confidence": np.float32,
                  "out_lens": np.int32, "token_ids": np.int32}


class CoreMLCheckError(RuntimeError):
    """A saved .mlpackage does not have the inputs, outputs or metadata it was exported with."""


def deployment_target(name: str):
    """The ``coremltools.target`` called ``name`` (e.g. ``iOS17``)."""
    import coremltools as ct

    try:
        return getattr(ct.target, name)
    except AttributeError:
        known = [t.name for t in ct.target]
        raise ValueError(f"unknown Core ML deployment target {name!r}; choose one of {known}") from None


def _input_types(graph: ExportGraph, windows: list[float], shapes: str):
    import coremltools as ct

    lengths = [graph.input_length(s) for s in windows]
    tail = (graph.contract.n_mels,) if graph.features_in else ()
    if shapes == "enumerated" and len(lengths) == 1:
        x_shape = (1, lengths[0], *tail)  # Core ML enumerates two or more shapes; one is static
    elif shapes == "enumerated":
        x_shape = ct.EnumeratedShapes(shapes=[[1, n, *tail] for n in lengths], default=[1, lengths[-1], *tail])
    elif shapes == "range":
        low = graph.input_length(MIN_SECONDS)
        x_shape = ct.Shape(shape=(1, ct.RangeDim(lower_bound=low, upper_bound=lengths[-1], default=lengths[-1]), *tail))
    else:
        raise ValueError(f"Core ML shapes must be one of {SHAPE_MODES}, got {shapes!r}")
    x_name, len_name = graph.input_names
    return [
        ct.TensorType(name=x_name, shape=x_shape, dtype=np.float32),
        ct.TensorType(name=len_name, shape=(1,), dtype=np.int32),
    ]


def is_frontend_op(op) -> bool:
    """Whether a converted MIL op belongs to the front end (its TorchScript module scope)."""
    from coremltools.converters.mil.mil.scope import ScopeSource

    names = op.scopes.get(ScopeSource.TORCHSCRIPT_MODULE_NAME, [])
    return bool(names) and names[0] == FRONTEND_SCOPE


def metadata(contract: Contract, tokenizer, windows: list[float]) -> dict[str, str]:
    """``user_defined_metadata`` entries (strings; JSON for lists and dicts)."""
    return {
        f"{METADATA_PREFIX}sample_rate": str(contract.sample_rate),
        f"{METADATA_PREFIX}pcm": "float32 mono in [-1, 1]",
        f"{METADATA_PREFIX}frontend": json.dumps(contract.frontend.to_dict()),
        f"{METADATA_PREFIX}subsampling": str(contract.subsampling),
        f"{METADATA_PREFIX}output_frame_shift_seconds": repr(contract.output_frame_shift),
        f"{METADATA_PREFIX}blank_id": str(contract.blank_id),
        f"{METADATA_PREFIX}tokens": json.dumps(list(tokenizer.tokens), ensure_ascii=False),
        f"{METADATA_PREFIX}vocabulary_sha256": contract.vocabulary_sha256,
        f"{METADATA_PREFIX}windows_seconds": json.dumps(list(windows)),
    }


def convert(graph: ExportGraph, windows: list[float], precision: str = "fp16", *,
            shapes: str = "enumerated", minimum_deployment_target: str = DEFAULT_TARGET,
            traced: torch.jit.ScriptModule | None = None):
    """Convert ``graph`` to an in-memory ``ct.models.MLModel`` in float16 (front end float32) or
    float32 compute. ``traced``: a ``torch.jit.trace`` of the graph to reuse."""
    import coremltools as ct

    if precision not in ("fp16", "fp32"):
        raise ValueError(f"convert() makes fp16 or fp32 programs; {precision!r} is derived by compress()")
    if traced is None:
        traced = trace(graph, windows)
    compute = (
        ct.precision.FLOAT32
        if precision == "fp32"
        else ct.transform.FP16ComputePrecision(op_selector=lambda op: not is_frontend_op(op))
    )
    return ct.convert(
        traced,
        inputs=_input_types(graph, windows, shapes),
        outputs=[ct.TensorType(name=n, dtype=_OUTPUT_DTYPES[n]) for n in graph.output_names],
        convert_to="mlprogram",
        compute_precision=compute,
        minimum_deployment_target=deployment_target(minimum_deployment_target),
    )


def trace(graph: ExportGraph, windows: list[float]) -> torch.jit.ScriptModule:
    example = graph.example_inputs(graph.input_length(max(windows)))
    with torch.no_grad():
        # Traced directly (ExportGraph returns a flat tuple of tensors), so module scopes start
        # at "frontend" / "model", which is_frontend_op relies on.
        return torch.jit.trace(graph.eval(), example, check_trace=False)


def frontend_constants(mlmodel) -> list[str]:
    """Names of the const ops (DFT basis, mel filterbank) of the front end in a converted model."""
    names = []
    for op in mlmodel._mil_program.functions["main"].operations:
        if op.op_type == "const" and is_frontend_op(op):
            names.append(op.name)
    return names


def compress(mlmodel_fp16, precision: str):
    """Weight-compressed copy of a converted fp16 model: ``int8``, ``pal6`` or ``pal4``."""
    from coremltools.optimize.coreml import (
        OpLinearQuantizerConfig,
        OpPalettizerConfig,
        OptimizationConfig,
        linear_quantize_weights,
        palettize_weights,
    )

    skip = {name: None for name in frontend_constants(mlmodel_fp16)}
    if precision == "int8":
        config = OptimizationConfig(
            global_config=OpLinearQuantizerConfig(mode="linear_symmetric", granularity="per_channel"),
            op_name_configs=skip,
        )
        return linear_quantize_weights(mlmodel_fp16, config)
    if precision in ("pal6", "pal4"):
        config = OptimizationConfig(
            global_config=OpPalettizerConfig(mode="kmeans", nbits=int(precision[-1])),
            op_name_configs=skip,
        )
        return palettize_weights(mlmodel_fp16, config)
    raise ValueError(f"Core ML precision {precision!r} unknown; choose from {sorted(PRECISIONS)}")


def describe(mlmodel, source: ExportSource, windows: list[float], precision: str) -> None:
    """Descriptions and ``asrkd.*`` metadata on the model (in place)."""
    mlmodel.short_description = (
        f"asrkd Conformer-CTC speech recogniser ({precision}); see contract.json of its bundle"
    )
    for name in source.graph.input_names:
        mlmodel.input_description[name] = TENSOR_MEANINGS[name]
    for name in source.graph.output_names:
        mlmodel.output_description[name] = TENSOR_MEANINGS[name]
    mlmodel.user_defined_metadata.update(metadata(source.contract, source.tokenizer, windows))


# ------------------------------------------------------------------------ checks (no predict)
def array_shape(feature) -> dict[str, Any]:
    """A model description feature's dtype and shape (and its enumerated shapes or range)."""
    arr = feature.type.multiArrayType
    from coremltools.proto import FeatureTypes_pb2 as ft

    dtype = ft.ArrayFeatureType.ArrayDataType.Name(arr.dataType)
    info: dict[str, Any] = {"dtype": dtype, "shape": list(arr.shape)}
    kind = arr.WhichOneof("ShapeFlexibility")
    if kind == "enumeratedShapes":
        info["enumerated"] = [list(s.shape) for s in arr.enumeratedShapes.shapes]
    elif kind == "shapeRange":
        info["range"] = [[r.lowerBound, r.upperBound] for r in arr.shapeRange.sizeRanges]
    return info


def weights_summary(spec) -> dict[str, Any]:
    """Counts and elements of weight constants by storage type, from the program spec."""
    from coremltools.proto import MIL_pb2

    ops: Counter = Counter()
    weights: Counter = Counter()
    elements: Counter = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
                if op.type in COMPRESSED_WEIGHT_OPS:
                    weights[COMPRESSED_WEIGHT_OPS[op.type]] += 1
                elif op.type == "const" and op.outputs:
                    tensor = op.outputs[0].type.tensorType
                    dims = [d.constant.size for d in tensor.dimensions]
                    n = int(np.prod(dims)) if dims else 1
                    if n >= 64:  # weights, not scalars and small shape constants
                        dtype = MIL_pb2.DataType.Name(tensor.dataType).lower()
                        weights[dtype] += 1
                        elements[dtype] += n
    return {"mil_operations": dict(sorted(ops.items())), "weight_tensors": dict(weights),
            "uncompressed_weight_elements": dict(elements)}


def check_package(path: Path, graph: ExportGraph, windows: list[float], shapes: str,
                  precision: str) -> dict[str, Any]:
    """Load a saved .mlpackage without compiling it (works on Linux) and check it against the
    export: input/output names, dtypes and shapes, ``asrkd.*`` metadata, and that compressed
    precisions really hold compressed weights. Returns what was found; raises
    ``CoreMLCheckError`` naming the mismatch."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    found_in = {f.name: array_shape(f) for f in spec.description.input}
    found_out = {f.name: array_shape(f) for f in spec.description.output}
    problems = []
    if list(found_in) != list(graph.input_names):
        problems.append(f"inputs are {list(found_in)}, expected {list(graph.input_names)}")
    if list(found_out) != list(graph.output_names):
        problems.append(f"outputs are {list(found_out)}, expected {list(graph.output_names)}")
    x = found_in.get(graph.input_names[0], {})
    lengths = [graph.input_length(s) for s in windows]
    if shapes == "enumerated":
        got = sorted(s[1] for s in x.get("enumerated", [x.get("shape", [None, None])]))
        if got != sorted(lengths):
            problems.append(f"{graph.input_names[0]} accepts lengths {got}, expected the windows {lengths}")
    else:
        rng = x.get("range", [[None, None], [None, None]])
        if rng[1][1] != lengths[-1]:
            problems.append(f"{graph.input_names[0]} length range is {rng[1]}, expected up to {lengths[-1]}")
    for name, info in found_out.items():
        want = "FLOAT32" if _OUTPUT_DTYPES.get(name) is np.float32 else "INT32"
        if info["dtype"] != want:
            problems.append(f"output {name} is {info['dtype']}, expected {want}")
    meta = dict(spec.description.metadata.userDefined)
    missing = [k for k in metadata_keys() if k not in meta]
    if missing:
        problems.append(f"metadata keys missing: {missing}")
    summary = weights_summary(spec)
    kinds = summary["weight_tensors"]
    expect = {"int8": "int8", "pal6": "palettized", "pal4": "palettized"}.get(precision)
    if expect and not kinds.get(expect):
        problems.append(f"{precision} program holds no {expect} weights (found {kinds})")
    if precision == "fp16" and not kinds.get("float16"):
        problems.append(f"fp16 program holds no float16 weights (found {kinds})")
    if problems:
        raise CoreMLCheckError(f"{path}: " + "; ".join(problems))
    return {
        "inputs": found_in,
        "outputs": found_out,
        "specification_version": spec.specificationVersion,
        **summary,
        "metadata_keys": sorted(k for k in meta if k.startswith(METADATA_PREFIX)),
    }


def metadata_keys() -> list[str]:
    return [f"{METADATA_PREFIX}{k}" for k in (
        "sample_rate", "pcm", "frontend", "subsampling", "output_frame_shift_seconds", "blank_id",
        "tokens", "vocabulary_sha256", "windows_seconds")]


class CoreMLExporter(Exporter):
    """Core ML at fp16, fp32, int8, pal6 and pal4: ``options.windows`` as enumerated shapes or a
    range up to the largest (``options.coreml_shapes``), for ``options.coreml_target``."""

    name = "coreml"
    suffix = ".mlpackage"
    precisions = PRECISIONS

    def convert(self, source: ExportSource, out_dir: Path, precisions: Sequence[str],
                options: ExportOptions) -> dict[str, Artifact | Exception]:
        """The graph is traced once and converted to fp16 once (int8 and palettized programs
        compress that one); every saved package is checked with ``check_package`` (the
        artifact's ``checks``)."""
        graph, shapes, target = source.graph, options.coreml_shapes, options.coreml_target
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        windows = sorted(float(w) for w in options.windows)
        if shapes not in SHAPE_MODES:
            raise ValueError(f"Core ML shapes must be one of {SHAPE_MODES}, got {shapes!r}")
        try:
            traced = trace(graph, windows)
            fp16 = None
            if any(p != "fp32" for p in precisions):
                fp16 = convert(graph, windows, "fp16", shapes=shapes, minimum_deployment_target=target,
                               traced=traced)
        except Exception as e:
            return {p: e for p in precisions}

        def build(precision: str, path: Path) -> Artifact:
            if precision == "fp32":
                mlmodel = convert(graph, windows, "fp32", shapes=shapes, minimum_deployment_target=target,
                                  traced=traced)
            elif precision == "fp16":
                mlmodel = fp16
            else:
                mlmodel = compress(fp16, precision)
            describe(mlmodel, source, windows, precision)
            if path.exists():
                shutil.rmtree(path)
            mlmodel.save(str(path))
            checks = check_package(path, graph, windows, shapes, precision)
            checks.update(shapes=shapes, minimum_deployment_target=target)
            return Artifact(
                self.name, precision, path,
                windows_seconds=windows if shapes == "enumerated" else None,
                max_seconds=windows[-1], min_seconds=MIN_SECONDS if shapes == "range" else None,
                description=PRECISIONS[precision], checks=checks,
            )

        return self.each_precision(out_dir, precisions, build)

    def check(self, artifact: Artifact, source: ExportSource) -> dict[str, Any]:
        """``check_package`` on the saved program, with the shapes it was exported with."""
        return check_package(artifact.path, source.graph, artifact.windows_seconds or [artifact.max_seconds],
                             "enumerated" if artifact.windows_seconds else "range", artifact.precision)

    def cannot_run(self, checks: dict[str, Any] | None) -> str | None:
        return cannot_run_here(checks)


def cannot_run_here(checks: dict[str, Any] | None) -> str | None:
    """Core ML executes only on macOS (coremltools' predict needs the Core ML framework): None
    there, else the reason, quoting what ``checks`` (`check_package`'s) found instead."""
    if sys.platform == "darwin":
        return None
    c = checks or {}
    return (f"not run: needs macOS (Core ML predict); on {sys.platform} the saved program was "
            f"loaded and checked instead: inputs {list(c.get('inputs', {}))}, outputs "
            f"{list(c.get('outputs', {}))}, {sum(c.get('mil_operations', {}).values())} MIL "
            f"operations, weights {c.get('weight_tensors')}, asrkd metadata present")
