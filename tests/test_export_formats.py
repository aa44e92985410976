"""Each format exported from a tiny model and run in its own runtime (Core ML: exported and its
saved program checked; predict needs macOS), compared with the PyTorch graph."""

import json
import sys

import numpy as np
import pytest
from test_export_graph import SR, speechlike, tiny_graph

from asrkd.features import FrontendConfig
from asrkd.text import CharTokenizer
from eval.runners import (
    CoreMLRunner,
    ExecuTorchRunner,
    LiteRTRunner,
    OnnxRunner,
    RunnerUnavailable,
    TorchRunner,
)
from mobile_export import coreml
from mobile_export.formats import EXPORTERS
from mobile_export.options import ExportOptions
from mobile_export.source import ExportSource

TOKENIZER = CharTokenizer.default_english()


@pytest.fixture(scope="module")
def graph():
    return tiny_graph()


@pytest.fixture(scope="module")
def torch_runner(graph):
    return TorchRunner("unused", threads=1, graph=graph)


def exported(fmt: str, graph, out, precisions: list[str], **options) -> dict:
    """``fmt``'s exporter on ``graph`` (``options``: ExportOptions fields); fails with the
    converter's own exception if any precision did not export."""
    results = EXPORTERS[fmt].convert(ExportSource(graph, TOKENIZER), out, precisions, ExportOptions(**options))
    for precision, outcome in results.items():
        if isinstance(outcome, Exception):
            raise AssertionError(f"{precision} export failed") from outcome
    return results


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a.astype(np.float64) - b)))


# ------------------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def onnx_artifacts(graph, tmp_path_factory):
    return exported("onnx", graph, tmp_path_factory.mktemp("onnx"), ["fp32", "int8"])


def test_onnx_fp32_matches_pytorch_at_any_length_and_batch(graph, torch_runner, onnx_artifacts):
    runner = OnnxRunner(onnx_artifacts["fp32"].path)
    for seconds in (1 / SR, 0.05, 1.3, 3.7):  # from one sample up
        pcm = speechlike(seconds)
        assert max_diff(runner.run(pcm), torch_runner.run(pcm)) <= 1e-4
    # A padded batch of two in one session call (the time and batch axes are both dynamic).
    a, b = speechlike(2.0, seed=4), speechlike(0.7, seed=5)
    x = np.zeros((2, len(a)), np.float32)
    x[0], x[1, : len(b)] = a, b
    log_probs, out_lens = runner.session.run(
        ["log_probs", "out_lens"], {"pcm": x, "pcm_lens": np.array([len(a), len(b)])})
    assert max_diff(log_probs[1, : out_lens[1]], torch_runner.run(b)) <= 1e-4


def test_onnx_padding_invariance_2s_vs_5s_window(onnx_artifacts):
    runner = OnnxRunner(onnx_artifacts["fp32"].path)
    pcm = speechlike(1.3)
    runner.windows = [2 * SR]
    in_2s = runner.run(pcm)
    runner.windows = [5 * SR]
    in_5s = runner.run(pcm)
    assert max_diff(in_2s, in_5s) <= 1e-5


def test_onnx_int8_keeps_the_front_end_in_float32(torch_runner, onnx_artifacts):
    import onnx as onnx_lib

    int8 = onnx_lib.load(str(onnx_artifacts["int8"].path))
    ops = {n.op_type for n in int8.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops  # the encoder is int8
    assert "Conv" in ops  # the DFT of the front end was left alone
    assert onnx_artifacts["int8"].size_bytes < onnx_artifacts["fp32"].size_bytes
    pcm = speechlike(1.3)
    assert max_diff(OnnxRunner(onnx_artifacts["int8"].path).run(pcm), torch_runner.run(pcm)) <= 0.2


@pytest.mark.slow
def test_onnx_fp16_has_a_half_encoder_and_float32_io(graph, torch_runner, tmp_path):
    import onnx as onnx_lib

    fp16 = exported("onnx", graph, tmp_path, ["fp16"])["fp16"]
    model = onnx_lib.load(str(fp16.path))
    dtypes = {i.data_type for i in model.graph.initializer if len(i.dims) >= 2}
    assert dtypes == {onnx_lib.TensorProto.FLOAT16, onnx_lib.TensorProto.FLOAT}
    assert [i.type.tensor_type.elem_type for i in model.graph.input][0] == onnx_lib.TensorProto.FLOAT
    pcm = speechlike(1.3)
    assert max_diff(OnnxRunner(fp16.path).run(pcm), torch_runner.run(pcm)) <= 1e-2


# ----------------------------------------------------------------------------------- TFLite
@pytest.fixture(scope="module")
def tflite_artifacts(graph, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    return exported("tflite", graph, out, ["fp32", "int8"], windows=(2.0, 5.0))


def test_tflite_signatures_are_the_windows(tflite_artifacts):
    artifact = tflite_artifacts["fp32"]
    assert artifact.signatures == {"2": "pcm_2s", "5": "pcm_5s"}
    runner = LiteRTRunner(artifact.path)
    assert runner.windows == [2 * SR, 5 * SR]
    sigs = runner.interpreter.get_signature_list()
    assert sorted(sigs) == ["pcm_2s", "pcm_5s"]
    assert sorted(sigs["pcm_2s"]["outputs"]) == ["confidence", "log_probs", "out_lens", "token_ids"]


def test_tflite_fp32_matches_pytorch(torch_runner, tflite_artifacts):
    runner = LiteRTRunner(tflite_artifacts["fp32"].path)
    for seconds in (1 / SR, 0.05, 1.3, 4.2):
        pcm = speechlike(seconds)
        assert max_diff(runner.run(pcm), torch_runner.run(pcm)) <= 1e-4


def test_tflite_padding_invariance_2s_vs_5s_window(tflite_artifacts):
    """The same 1.3 s utterance through the 2 s and the 5 s signature gives the same frames."""
    runner = LiteRTRunner(tflite_artifacts["fp32"].path)
    pcm = speechlike(1.3)
    in_2s = runner.run(pcm)
    runner.windows = [5 * SR]  # force the larger signature
    in_5s = runner.run(pcm)
    assert max_diff(in_2s, in_5s) <= 1e-5


def test_tflite_splits_audio_longer_than_the_largest_window(torch_runner, tflite_artifacts):
    runner = LiteRTRunner(tflite_artifacts["fp32"].path)
    pcm = speechlike(6.0)
    out = runner.run(pcm)
    assert runner.last_chunks == 2  # 5 s + 1 s
    head = torch_runner.run(pcm[: 5 * SR])
    assert max_diff(out[: len(head)], head) <= 1e-4


def test_tflite_int8_is_smaller_and_close(torch_runner, tflite_artifacts):
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_path=str(tflite_artifacts["int8"].path)).get_tensor_details()
    assert any(t["dtype"] == np.int8 for t in tensors)
    assert tflite_artifacts["int8"].size_bytes < tflite_artifacts["fp32"].size_bytes
    pcm = speechlike(1.3)
    assert max_diff(LiteRTRunner(tflite_artifacts["int8"].path).run(pcm), torch_runner.run(pcm)) <= 0.2


def test_tflite_quantizer_shows_its_progress_bar_on_a_terminal_only(tflite_artifacts, tmp_path, monkeypatch):
    """A log (stderr not a terminal) gets no carriage-return updates from ai-edge-quantizer's tqdm."""
    from ai_edge_quantizer import quantizer

    from mobile_export import tflite

    asked, quantize = [], quantizer.Quantizer.quantize
    monkeypatch.setattr(quantizer.Quantizer, "quantize",
                        lambda self, **kw: asked.append(kw.get("enable_progress_bar", "unset")) or quantize(self, **kw))
    for terminal in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda terminal=terminal: terminal, raising=False)
        out = tflite.quantize(tflite_artifacts["fp32"].path, tmp_path / f"int8_{terminal}.tflite", "int8")
        assert out.stat().st_size < tflite_artifacts["fp32"].path.stat().st_size
    assert asked == [False, None]  # None: the quantizer's own rule (a bar for large models)


def test_tflite_quantizer_bars_it_draws_anyway_reach_a_log_as_their_last_state(tflite_artifacts, tmp_path,
                                                                                monkeypatch, capsys):
    """ai-edge-quantizer 0.10 draws its transformation bar whatever enable_progress_bar says."""
    from ai_edge_quantizer import quantizer

    from mobile_export import tflite

    quantize = quantizer.Quantizer.quantize

    def drawing(self, **kw):
        sys.stderr.write("Applying: 0/854\rApplying: 854/854\nwarning: kept\n")
        return quantize(self, **kw)

    monkeypatch.setattr(quantizer.Quantizer, "quantize", drawing)
    tflite.quantize(tflite_artifacts["fp32"].path, tmp_path / "int8.tflite", "int8")
    err = capsys.readouterr().err
    assert "\r" not in err and "Applying: 854/854\nwarning: kept\n" in err and "0/854" not in err


def test_level_rms_front_end_exports_and_matches_pytorch(tmp_path):
    """`FrontendConfig(level="rms")` (per-utterance level, masked to the valid samples) in the
    runtimes that convert the front end themselves: ONNX and TFLite, in a padded window."""
    graph = tiny_graph(FrontendConfig(level="rms"))
    reference = TorchRunner("unused", threads=1, graph=graph)
    runners = [OnnxRunner(exported("onnx", graph, tmp_path / "onnx", ["fp32"])["fp32"].path),
               LiteRTRunner(exported("tflite", graph, tmp_path / "tflite", ["fp32"], windows=(2.0,))["fp32"].path)]
    for seconds, gain in ((0.05, 1.0), (1.3, 1.0), (1.3, 0.03)):  # 0.03: a recording 30 dB quieter
        pcm = gain * speechlike(seconds)
        for runner in runners:
            assert max_diff(runner.run(pcm), reference.run(pcm)) <= 1e-4, (type(runner).__name__, seconds, gain)
    # The level is part of the graph: a quieter copy decodes to (nearly) the same log-probs.
    assert max_diff(runners[0].run(0.03 * speechlike(1.3)), runners[0].run(speechlike(1.3))) <= 1e-2


# ------------------------------------------------------------------------------- ExecuTorch
@pytest.fixture(scope="module")
def pte_fp32(graph, tmp_path_factory):
    return exported("executorch", graph, tmp_path_factory.mktemp("pte"), ["fp32"], windows=(3.0,))["fp32"]


def test_executorch_fp32_matches_pytorch_at_dynamic_lengths(torch_runner, pte_fp32):
    runner = ExecuTorchRunner(pte_fp32.path)
    assert runner.max_samples == 3 * SR  # memory is planned for the upper bound
    for seconds in (1 / SR, 0.05, 1.3, 3.0):  # below the exported lower bound (0.1 s) too
        pcm = speechlike(seconds)
        assert max_diff(runner.run(pcm), torch_runner.run(pcm)) <= 1e-4
    runner.run(speechlike(3.5))
    assert runner.last_chunks == 2


@pytest.mark.slow
def test_executorch_int8_and_fp16_run(graph, torch_runner, tmp_path):
    results = exported("executorch", graph, tmp_path, ["int8", "fp16"], windows=(3.0,))
    pcm = speechlike(1.3)
    ref = torch_runner.run(pcm)
    assert max_diff(ExecuTorchRunner(results["fp16"].path).run(pcm), ref) <= 1e-2
    assert max_diff(ExecuTorchRunner(results["int8"].path).run(pcm), ref) <= 0.2


# ---------------------------------------------------------------------------------- Core ML
@pytest.fixture(scope="module")
def mlpackages(graph, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml")
    return exported("coreml", graph, out, ["fp16", "int8"], windows=(2.0, 5.0))


def test_coreml_program_has_the_contract(mlpackages):
    import coremltools as ct

    checks = mlpackages["fp16"].checks
    assert checks["inputs"]["pcm"]["enumerated"] == [[1, 5 * SR], [1, 2 * SR]]
    assert checks["inputs"]["pcm_lens"]["dtype"] == "INT32"
    assert {k: v["dtype"] for k, v in checks["outputs"].items()} == {
        "log_probs": "FLOAT32", "out_lens": "INT32", "token_ids": "INT32", "confidence": "FLOAT32"}
    # fp16 encoder, float32 front end (DFT basis and mel filterbank)
    assert checks["weight_tensors"]["float16"] > 0 and checks["weight_tensors"]["float32"] == 2
    assert checks["mil_operations"]["conv"] >= 3 and "softmax" in checks["mil_operations"]
    meta = ct.models.MLModel(str(mlpackages["fp16"].path), skip_model_load=True).user_defined_metadata
    assert meta["asrkd.tokens"] == json.dumps(TOKENIZER.tokens, ensure_ascii=False)
    assert meta["asrkd.sample_rate"] == str(SR)
    assert meta["asrkd.vocabulary_sha256"] == TOKENIZER.fingerprint()
    assert float(meta["asrkd.output_frame_shift_seconds"]) == pytest.approx(0.04)


def test_coreml_int8_compresses_encoder_weights_only(mlpackages):
    checks = mlpackages["int8"].checks
    assert checks["weight_tensors"]["int8"] > 0
    assert checks["weight_tensors"]["float32"] == 2  # the front end stays float32
    assert mlpackages["int8"].size_bytes < mlpackages["fp16"].size_bytes


def test_coreml_check_catches_a_program_that_does_not_match(graph, mlpackages):
    with pytest.raises(coreml.CoreMLCheckError, match="accepts lengths"):
        coreml.check_package(mlpackages["fp16"].path, graph, [2.0, 10.0], "enumerated", "fp16")
    with pytest.raises(coreml.CoreMLCheckError, match="no int8 weights"):
        coreml.check_package(mlpackages["fp16"].path, graph, [2.0, 5.0], "enumerated", "int8")


def test_coreml_range_shapes(graph, tmp_path):
    results = exported("coreml", graph, tmp_path, ["fp32"], windows=(2.0, 5.0), coreml_shapes="range")
    assert results["fp32"].checks["inputs"]["pcm"]["range"][1] == [SR // 10, 5 * SR]
    assert results["fp32"].windows_seconds is None and results["fp32"].max_seconds == 5.0


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS Core ML runs; see CoreMLRunner")
def test_coreml_predict_is_refused_off_macos(mlpackages):
    with pytest.raises(RunnerUnavailable, match="needs macOS"):
        CoreMLRunner(mlpackages["fp16"].path)


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predict needs macOS")
def test_coreml_fp16_close_to_pytorch_on_macos(torch_runner, mlpackages):
    pcm = speechlike(1.3)
    assert max_diff(CoreMLRunner(mlpackages["fp16"].path).run(pcm), torch_runner.run(pcm)) <= 5e-2



def test_band_limited_audio_matches_pytorch(torch_runner, onnx_artifacts):
    """8 kHz audio upsampled to 16 kHz (as FSDD): nothing above 4 kHz."""
    from asrkd.audio import resample

    pcm = resample(speechlike(2.6)[::2].copy(), SR // 2, SR)
    assert max_diff(OnnxRunner(onnx_artifacts["fp32"].path).run(pcm), torch_runner.run(pcm)) <= 1e-4
