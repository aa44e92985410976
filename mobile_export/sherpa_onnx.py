"""sherpa-onnx: the student as a NeMo CTC model that ``OfflineRecognizer.from_nemo_ctc`` loads.

    OUT/sherpa-onnx/
        model.onnx          fp32
        model.int8.onnx     onnxruntime dynamic int8 of the encoder's MatMul/Gemm
        tokens.txt          the vocabulary ("symbol id", <blk> first), as asrkd writes it

The contract sherpa-onnx (2.0.1) reads for ``model_type="nemo_ctc"``
(sherpa-onnx/csrc/offline-nemo-enc-dec-ctc-model.cc, offline-recognizer-ctc-impl.h):

- inputs ``audio_signal`` float32 [B, n_mels, T] (sherpa's features, channels first) and
  ``length`` int64 [B]; output 0 is the log-probs [B, T', V] (its greedy search takes the argmax
  per frame, blank = the id of ``<blk>`` in tokens.txt). sherpa computes the number of output
  frames itself as ``length // subsampling_factor`` and ignores every other output; asrkd's
  encoder gives ``ceil(T / subsampling)`` frames, so a last partial frame (under one output frame
  shift at the very end of the audio) is not decoded;
- metadata ``vocab_size``, ``subsampling_factor`` (sherpa calls ``exit(255)`` when one is
  missing), ``normalize_type`` (``per_feature``: sherpa normalises each mel band over the
  utterance before the model). ``model_type`` is what the NeMo export scripts of sherpa-onnx
  write; ``feature_dim`` and ``sample_rate`` are asrkd's, for loaders (eval/runners.py) that must
  pass them to ``from_nemo_ctc``.

The features are sherpa-onnx's, not the checkpoint's: the artifact is exact only for a student
trained with ``FrontendConfig.preset("sherpa")``; with another front end it still decodes, and
the report's agreement says how many transcripts change (`frontend_note`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asrkd.contract import Contract
from asrkd.features import FrontendConfig
from eval.runners import SHERPA_LOADER, check_sherpa_loads
from mobile_export.bundle import Artifact
from mobile_export.exporter import Exporter
from mobile_export.graph import ExportGraph
from mobile_export.onnx import convert_via_fp32, quantize_int8
from mobile_export.onnx import export_fp32 as onnx_export_fp32

if TYPE_CHECKING:
    from mobile_export.options import ExportOptions
    from mobile_export.source import ExportSource

FOLDER = "sherpa-onnx"
INPUTS = ("audio_signal", "length")
NORMALIZE_TYPE = "per_feature"
MODEL_TYPE = "EncDecCTCModelBPE"
PRECISIONS = {
    "fp32": "float32 NeMo CTC model (features in) for sherpa-onnx's OfflineRecognizer.from_nemo_ctc",
    "int8": "int8 encoder weights, dynamically quantised activations (onnxruntime), for "
    "sherpa-onnx's OfflineRecognizer.from_nemo_ctc",
}
# File names inside FOLDER, as sherpa-onnx's own model folders name them.
FILE_NAMES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def metadata(contract: Contract) -> dict[str, str]:
    """The ONNX metadata sherpa-onnx reads for a NeMo CTC model (module docstring), as strings."""
    return {
        "vocab_size": str(contract.vocab_size),
        "subsampling_factor": str(contract.subsampling),
        "normalize_type": NORMALIZE_TYPE,
        "model_type": MODEL_TYPE,
        "feature_dim": str(contract.n_mels),
        "sample_rate": str(contract.sample_rate),
        "model_author": "asrkd",
        "comment": "asrkd Conformer-CTC student; features as sherpa-onnx computes them for NeMo CTC",
    }


def set_metadata(path: Path, meta: dict[str, str]) -> None:
    """Replace the metadata of the ONNX file at ``path`` with ``meta`` (in place)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def export_fp32(graph: ExportGraph, path: Path) -> Path:
    """The student in NeMo's CTC contract at ``path``: ``audio_signal [B, n_mels, T] float32,
    length [B] int64 -> log_probs [B, T', V] float32, out_lens [B] int64``, T' = ceil(T /
    subsampling), dynamic batch and time axes.

    It is the export graph's features-in variant (no token ids or confidence: sherpa reads output
    0 only) exported as every ONNX artifact is (mobile_export/onnx.py), with a Transpose in front
    for NeMo's channels-first features and the inputs renamed."""
    import onnx
    from onnx import helper

    features_in = ExportGraph(graph.frontend, graph.model, features_in=True, with_tokens=False,
                              with_confidence=False, blank_id=graph.blank_id)
    onnx_export_fp32(features_in, path)
    model = onnx.load(str(path))
    feats_name, lens_name = features_in.input_names
    feats, lens = (next(i for i in model.graph.input if i.name == n) for n in (feats_name, lens_name))
    batch, frames, mels = (d.dim_param or d.dim_value for d in feats.type.tensor_type.shape.dim)
    audio_signal = helper.make_tensor_value_info(INPUTS[0], feats.type.tensor_type.elem_type, [batch, mels, frames])
    for node in model.graph.node:
        node.input[:] = [INPUTS[1] if name == lens_name else name for name in node.input]
    lens.name = INPUTS[1]
    model.graph.node.insert(0, helper.make_node("Transpose", [INPUTS[0]], [feats_name], perm=[0, 2, 1]))
    model.graph.input.remove(feats)
    model.graph.input.insert(0, audio_signal)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def frontend_note(frontend: FrontendConfig) -> str:
    """What the artifact's features are, against the checkpoint's front end."""
    if frontend.matches_preset("sherpa"):
        return ("front end: the checkpoint was trained with FrontendConfig.preset('sherpa'), the "
                "features sherpa-onnx computes: transcripts are PyTorch's over the output frames "
                "sherpa reads (all but a last partial one, docs/SHERPA.md)")
    return ("front-end mismatch: sherpa-onnx computes its own NeMo features (Kaldi framing, "
            "pre-emphasis 0.97, 512-point FFT, log(mel + 2^-24), per-feature normalisation); this "
            "checkpoint was trained with another front end, so some transcripts differ from "
            "PyTorch's (see agreement). Train with `frontend: {preset: sherpa}` for an exact match")


class SherpaOnnxExporter(Exporter):
    """A sherpa-onnx model folder (module docstring) at fp32 and int8; dynamic axes, so no window
    option applies. Each model is loaded by sherpa-onnx in a subprocess once written, so a
    contract sherpa rejects is an export error instead of a dead process."""

    name = "sherpa-onnx"
    suffix = ".onnx"
    precisions = PRECISIONS

    def path(self, out_dir: Path, precision: str) -> Path:
        """``out_dir/sherpa-onnx/model.onnx`` (fp32) or ``model.<precision>.onnx``."""
        return Path(out_dir) / FOLDER / FILE_NAMES.get(precision, f"model.{precision}{self.suffix}")

    def convert(self, source: ExportSource, out_dir: Path, precisions: Sequence[str],
                options: ExportOptions) -> dict[str, Artifact | Exception]:
        """The fp32 export is made once; int8 is quantised from it (kept in a temporary file when
        fp32 itself is not requested). tokens.txt goes next to the models."""
        folder = Path(out_dir) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        source.tokenizer.save(folder)
        meta = metadata(source.contract)
        frontend = source.contract.frontend
        expected = FrontendConfig.preset("sherpa", sample_rate=frontend.sample_rate, n_mels=frontend.n_mels)
        checks: dict[str, Any] = {
            "loader": SHERPA_LOADER,
            "metadata": meta,
            "expected_frontend": {"preset": "sherpa", **expected.to_dict()},
            "frontend_matches_sherpa": frontend.matches_preset("sherpa"),
            "frontend_note": frontend_note(frontend),
        }

        def make_fp32(path: Path) -> None:
            export_fp32(source.graph, path)
            set_metadata(path, meta)

        def derive(precision: str, fp32_path: Path, path: Path) -> Artifact:
            if precision == "int8":
                quantize_int8(fp32_path, path)
                set_metadata(path, meta)
            elif precision != "fp32":
                raise ValueError(f"sherpa-onnx precision {precision!r} unknown; choose from {sorted(PRECISIONS)}")
            check_sherpa_loads(path)
            return Artifact(self.name, precision, path, checks=dict(checks),
                            description=f"{PRECISIONS[precision]}; {checks['frontend_note']}")

        return convert_via_fp32(self, out_dir, precisions, make_fp32, derive)
