"""The export graph (PCM -> log-mel -> Conformer -> log-probs), the runners' length handling and
the RTF harness, in PyTorch only: no converter runs here (see test_export_formats.py)."""

import os

import numpy as np
import pytest
import torch

from asrkd.contract import SAMPLE_RATE
from asrkd.decoding import batch_confidence
from asrkd.features import FrontendConfig, LogMel
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.text import CharTokenizer
from eval.rtf import measure
from eval.runners import TorchRunner
from mobile_export.graph import ExportGraph, confidence, with_encoder_dtype

SR = SAMPLE_RATE


def tiny_graph(frontend: FrontendConfig | None = None, **overrides) -> ExportGraph:
    torch.manual_seed(0)
    vocab = CharTokenizer.default_english().vocab_size
    config = build_preset("student-xs", vocab_size=vocab, n_layers=1, d_model=32,
                          subsampling_channels=8, **overrides)
    return ExportGraph(LogMel(frontend or FrontendConfig()), ConformerCTC(config).eval())


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding pitch under a syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3.0 * t)) ** 2
    return (0.1 * voiced * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def graph():
    return tiny_graph()


def run_window(graph, pcm: np.ndarray, window_seconds: float, fill: float = 0.0):
    """The utterance placed at the start of a fixed window; the rest holds ``fill`` noise."""
    n = graph.input_length(window_seconds)
    x = torch.from_numpy(fill * np.random.default_rng(1).standard_normal((1, n)).astype(np.float32))
    x[0, : len(pcm)] = torch.from_numpy(pcm)
    with torch.no_grad():
        return graph(x, torch.tensor([len(pcm)]))


def test_padding_does_not_change_the_valid_frames(graph):
    pcm = speechlike(1.3)
    lp2, lens2, ids2, conf2 = run_window(graph, pcm, 2.0)
    lp5, lens5, ids5, conf5 = run_window(graph, pcm, 5.0, fill=0.5)  # loud garbage as padding
    n = int(lens2[0])
    assert n == int(lens5[0]) == graph.contract.output_frames(len(pcm))
    assert lp5.shape[1] > lp2.shape[1] > n  # both windows hold padding frames
    torch.testing.assert_close(lp5[0, :n], lp2[0, :n], atol=2e-5, rtol=0)
    assert torch.equal(ids5[0, :n], ids2[0, :n])
    torch.testing.assert_close(conf5, conf2, atol=1e-5, rtol=0)


def test_outputs_are_framewise_argmax_and_decoding_confidence(graph):
    pcms = [speechlike(1.0, seed=1), speechlike(0.6, seed=2)]
    x = torch.zeros(2, len(pcms[0]))
    for i, p in enumerate(pcms):
        x[i, : len(p)] = torch.from_numpy(p)
    with torch.no_grad():
        log_probs, out_lens, token_ids, conf = graph(x, torch.tensor([len(p) for p in pcms]))
    assert torch.equal(token_ids, log_probs.argmax(-1))
    torch.testing.assert_close(conf, batch_confidence(log_probs, out_lens), atol=1e-6, rtol=0)


def test_confidence_matches_decoding_on_blank_only_and_empty_utterances():
    """The converter-friendly rewrite keeps batch_confidence's corner cases: every frame blank
    (falls back to all valid frames) and no valid frame at all (0)."""
    torch.manual_seed(0)
    log_probs = torch.randn(3, 7, 5).log_softmax(-1)
    log_probs[1, :, 0] = 10.0  # utterance 1: blank wins every frame
    log_probs = log_probs.log_softmax(-1)
    lens = torch.tensor([7, 4, 0])
    ours = confidence(log_probs, lens)
    torch.testing.assert_close(ours, batch_confidence(log_probs, lens), atol=1e-6, rtol=0)
    assert ours[2] == 0


def test_features_in_graph_matches_pcm_graph(graph):
    pcm = torch.from_numpy(speechlike(1.1))[None]
    lens = torch.tensor([pcm.shape[1]])
    features_graph = ExportGraph(graph.frontend, graph.model, features_in=True)
    assert features_graph.input_names == ("feats", "feat_lens")
    with torch.no_grad():
        feats, feat_lens = graph.frontend(pcm, lens)
        torch.testing.assert_close(features_graph(feats, feat_lens)[0], graph(pcm, lens)[0])


def test_contract_comes_from_the_configs():
    graph = tiny_graph(subsampling=8)
    contract = graph.contract
    assert contract.output_frame_shift == pytest.approx(0.08)  # 10 ms hop x 8
    assert contract.samples(2.0) == 2 * SR and graph.input_length(2.0) == 2 * SR
    assert contract.output_frames(SR) == 13  # 101 frames -> 51 -> 26 -> 13
    assert contract.blank_id == graph.blank_id and contract.vocab_size == graph.model.config.vocab_size
    assert graph.output_names == ("log_probs", "out_lens", "token_ids", "confidence")
    assert ExportGraph(graph.frontend, graph.model, with_tokens=False).output_names == (
        "log_probs", "out_lens", "confidence")


def test_half_encoder_keeps_float32_front_end_and_outputs(graph):
    half = with_encoder_dtype(graph, torch.float16)
    assert half.model.ctc_head.weight.dtype == torch.float16
    assert graph.model.ctc_head.weight.dtype == torch.float32  # the original is untouched
    pcm = torch.from_numpy(speechlike(1.0))[None]
    with torch.no_grad():
        lp_half = half(pcm, torch.tensor([pcm.shape[1]]))[0]
        lp = graph(pcm, torch.tensor([pcm.shape[1]]))[0]
    assert lp_half.dtype == torch.float32
    assert (lp_half - lp).abs().max() < 2e-2


def test_runner_pads_to_the_smallest_window_and_splits_long_audio(graph):
    """What every runner does with lengths, shown on the PyTorch runner given two windows (as a
    TFLite or Core ML artifact would have)."""
    runner = TorchRunner("unused", threads=1, graph=graph)
    alone = runner.run(speechlike(1.3))  # dynamic: run as is
    runner.windows, runner.max_samples = [SR, 2 * SR], 2 * SR
    assert runner.input_length(int(1.3 * SR)) == 2 * SR
    np.testing.assert_allclose(runner.run(speechlike(1.3)), alone, atol=2e-5, rtol=0)
    assert runner.last_chunks == 1

    long = speechlike(4.5)
    out = runner.run(long)
    assert runner.last_chunks == 3  # 2 s + 2 s + 0.5 s
    expected = sum(graph.contract.output_frames(n) for n in (2 * SR, 2 * SR, len(long) - 4 * SR))
    assert out.shape == (expected, graph.contract.vocab_size)
    np.testing.assert_allclose(out[:10], runner.run(long[: 2 * SR])[:10], atol=2e-5, rtol=0)


def test_rtf_harness_times_every_repeat(graph):
    pcms = [speechlike(0.5), speechlike(0.8, seed=3)]
    timing = measure(lambda: TorchRunner("unused", threads=1, graph=graph), pcms, SR, repeats=3)
    assert len(timing.pass_seconds) == 3
    assert timing.median_seconds == sorted(timing.pass_seconds)[1]
    assert timing.audio_seconds == pytest.approx(1.3, abs=1e-3)
    assert timing.rtf == pytest.approx(timing.median_seconds / timing.audio_seconds)
    assert timing.load_seconds >= 0
    if not os.path.exists("/proc/self/clear_refs"):
        assert timing.peak_rss_delta_bytes is None


def test_every_format_is_an_exporter_with_a_runner(tmp_path):
    """The registry is what `asrkd export --formats` offers: each entry names its runtime's runner,
    offers only known precisions, and writes ``model.<precision><suffix>``."""
    from eval.runners import RUNNERS
    from eval.streaming_runners import STEPPERS
    from mobile_export.formats import EXPORTERS
    from mobile_export.options import PRECISIONS, ExportOptions

    assert tuple(EXPORTERS) == ("coreml", "tflite", "onnx", "executorch", "sherpa-onnx", "coreml-stream",
                                "tflite-stream", "onnx-stream")
    # sherpa-onnx on request; the streaming formats by default for a streaming checkpoint only
    assert ExportOptions().formats == ("coreml", "tflite", "onnx", "executorch")
    for name, exporter in EXPORTERS.items():
        assert exporter.name == name and (STEPPERS if exporter.streaming else RUNNERS)[name].format == name
        assert set(exporter.precisions) <= set(PRECISIONS) and "fp32" in exporter.precisions
        folder = tmp_path / "sherpa-onnx" if name == "sherpa-onnx" else tmp_path  # sherpa's own layout
        assert exporter.path(tmp_path, "int8") == folder / f"model.int8{exporter.suffix}"


def test_a_model_in_memory_is_an_export_source(graph):
    """``ExportSource.of`` takes the modules themselves; its contract adds the vocabulary."""
    from mobile_export.source import ExportSource

    tokenizer = CharTokenizer.default_english()
    source = ExportSource.of((graph.frontend, graph.model, tokenizer))
    assert source.checkpoint is None and source.config["model"] == graph.model.config.to_dict()
    assert source.contract.vocabulary_sha256 == tokenizer.fingerprint()
    assert source.contract.output_frame_shift == graph.contract.output_frame_shift
    with pytest.raises(TypeError, match="pass a checkpoint folder"):
        ExportSource.of(graph)
