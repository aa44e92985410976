"""Streaming export (issue 15 item 4): the fixed-state chunk step equals the PyTorch streaming
model chunk by chunk, the ONNX and TFLite streaming artifacts equal it in their runtimes, their
real tensor shapes are contract.json's, and a non-streaming checkpoint is refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asrkd.audio import write_wav
from asrkd.contract import SAMPLE_RATE
from asrkd.features import FrontendConfig, LogMel
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.streaming import StreamingError, StreamingTranscriber
from asrkd.text import CharTokenizer
from eval.latency import ChunkStepper
from eval.streaming_runners import STEPPERS, open_stepper
from mobile_export.export import ExportOptions, export_model
from mobile_export.formats import DEFAULT_FORMATS, FORMATS, STREAMING_FORMATS, formats_for
from mobile_export.source import ExportSource
from mobile_export.stream_graph import StreamGraph, TorchStreamStepper

# Small enough to export in seconds; 2 left chunks of 4 frames, so a few chunks fill the
# attention cache and later ones drop its oldest frames.
SMALL = dict(d_model=32, n_layers=2, subsampling_channels=16, chunk_size=4, left_chunks=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is several times faster than many on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _parts(**overrides):
    tok = CharTokenizer.default_english()
    torch.manual_seed(0)
    model = ConformerCTC(build_preset("student-stream", vocab_size=tok.vocab_size, **{**SMALL, **overrides}))
    return LogMel(FrontendConfig(normalize="none")), model.eval(), tok


def _wave(n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def test_chunk_step_equals_the_streaming_transcriber():
    """Over the first chunk, full chunks, a wrapped cache and the flush cases (less than the
    lookahead's 40 samples after the last full chunk, a last chunk of two frames, of a chunk but
    a frame), the graph run as an app runs it (the contract's loop) gives the transcriber's
    log-probs."""
    frontend, model, tok = _parts()
    graph = StreamGraph(frontend, model)
    stepper = TorchStreamStepper(graph)
    transcriber = StreamingTranscriber(model, frontend, tok)
    for extra in (39, 41 + 160, graph.chunk_samples - 1):
        wav = _wave(6 * graph.chunk_samples + extra, seed=extra)
        transcriber.reset()
        transcriber.accept_waveform(wav)
        transcriber.finalize()
        expected = transcriber.log_probs.numpy()
        got = stepper.run(wav)
        assert got.shape == expected.shape, extra
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=str(extra))


def test_steps_in_the_latency_protocol_give_the_transcribers_tokens():
    """`step` with the first piece chunk + lookahead long, then chunk-sized pieces, and `finish`,
    emit the greedy tokens of the whole utterance."""
    frontend, model, tok = _parts()
    stepper = TorchStreamStepper(StreamGraph(frontend, model))
    assert isinstance(stepper, ChunkStepper)
    wav = _wave(5 * stepper.chunk_samples + 1234, seed=1)
    transcriber = StreamingTranscriber(model, frontend, tok)
    transcriber.accept_waveform(wav)
    expected = transcriber.finalize().tokens
    first = stepper.chunk_samples + stepper.lookahead_samples
    stepper.reset()
    tokens = stepper.step(wav[:first])
    for start in range(first, len(wav), stepper.chunk_samples):
        tokens += stepper.step(wav[start : start + stepper.chunk_samples])
    assert tokens + stepper.finish() == expected


def test_non_streaming_checkpoints_and_front_ends_are_refused():
    frontend, model, tok = _parts()
    with pytest.raises(StreamingError, match="frontend.normalize='per_feature'"):
        StreamGraph(LogMel(FrontendConfig()), model)
    full = ConformerCTC(build_preset("student", vocab_size=tok.vocab_size)).eval()
    with pytest.raises(StreamingError, match="not a streaming one.*student-stream"):
        StreamGraph(frontend, full)
    with pytest.raises(StreamingError, match="left_chunks=-1"):
        StreamGraph(frontend, _parts(left_chunks=-1)[1])
    # The default formats gain the streaming ones for a streaming model only.
    assert formats_for(DEFAULT_FORMATS, ExportSource.of((frontend, model, tok))) == DEFAULT_FORMATS + STREAMING_FORMATS
    assert formats_for(DEFAULT_FORMATS, ExportSource.of((frontend, full, tok))) == DEFAULT_FORMATS


def _manifest(root: Path, seconds=(0.7, 1.3, 2.1)) -> Path:
    lines = []
    for i, s in enumerate(seconds):
        path = root / f"u{i}.wav"
        write_wav(path, _wave(round(s * SAMPLE_RATE), seed=10 + i))
        lines.append(json.dumps({"audio_filepath": str(path), "text": "one two", "duration": s}) + "\n")
    manifest = root / "eval.jsonl"
    manifest.write_text("".join(lines), encoding="utf-8")
    return manifest


def _export(root: Path, formats, model_parts=None, **options):
    parts = model_parts or _parts()
    return export_model(parts, root / "bundle", _manifest(root),
                        ExportOptions(formats=formats, precisions=("fp32",), **options))


def _check_bundle(bundle: Path, fmt: str, report) -> None:
    """The artifact's real tensors are contract.json's, and it agrees with PyTorch."""
    contract = json.loads((bundle / "contract.json").read_text())
    streaming = contract["streaming"]
    stepper = open_stepper(bundle, fmt, "fp32")
    specs = stepper.io_specs()
    for side in ("inputs", "outputs"):
        assert {n: (list(s), d) for n, (s, d) in specs[side].items()} == {
            n: (t["shape"], t["dtype"]) for n, t in streaming[side].items()}, side
    assert [t["name"] for t in streaming["states"]] == [n for n in streaming["inputs"] if n not in
                                                          ("pcm", "feature_frames")]
    (entry,) = [a for a in report.artifacts if a.format == fmt]
    assert entry.status == "ok", entry.reason
    assert entry.streaming["token_agreement"] >= 0.99
    assert entry.scores.agreement == 1.0 and entry.scores.max_abs_logprob_diff < 1e-4
    latency = entry.streaming["latency"]
    assert latency["chunk_samples"] == streaming["chunk_samples"] and latency["utterances"] == 3
    # REPORT.md gives the person reading it the same latency row.
    md = (bundle / "REPORT.md").read_text(encoding="utf-8")
    row = next(line for line in md.splitlines() if line.startswith(f"| {fmt} fp32 | {streaming['chunk_ms']:g} |"))
    assert f"{1000 * latency['final']['median']:.0f} (" in row


def test_onnx_stream_export_matches_pytorch_and_its_contract(tmp_path):
    report = _export(tmp_path, ("onnx-stream",), rtf_utterances=3, rtf_repeats=1, cold_start=False)
    _check_bundle(tmp_path / "bundle", "onnx-stream", report)
    # --verify-only re-runs the bundle's streaming artifact from its contract.json
    again = export_model(_parts(), tmp_path / "bundle", tmp_path / "eval.jsonl",
                         ExportOptions(formats=("onnx-stream",), precisions=("fp32",), rtf_repeats=0),
                         verify_only=True)
    (entry,) = again.artifacts
    assert entry.status == "ok" and entry.streaming == {"token_agreement": 1.0, "latency": None}


@pytest.mark.slow
def test_tflite_stream_export_matches_pytorch_and_its_contract(tmp_path):
    report = _export(tmp_path, ("tflite-stream",), rtf_utterances=3, rtf_repeats=1, cold_start=False)
    _check_bundle(tmp_path / "bundle", "tflite-stream", report)


@pytest.mark.slow
def test_coreml_stream_program_has_the_contracts_tensors(tmp_path):
    """On Linux the Core ML programs are converted and checked (not run): their inputs and
    outputs are contract.json's, int8 holds int8 weights."""
    from mobile_export.formats import EXPORTERS

    frontend, model, tok = _parts()
    made = EXPORTERS["coreml-stream"].convert(ExportSource.of((frontend, model, tok)), tmp_path,
                                              ["fp32", "int8"], ExportOptions())
    spec = StreamGraph(frontend, model).streaming_contract()
    for precision, artifact in made.items():
        assert {n: t["shape"] for n, t in artifact.checks["inputs"].items()} == {
            n: t["shape"] for n, t in spec["inputs"].items()}, precision
        assert list(artifact.checks["outputs"]) == list(spec["outputs"])
    assert made["int8"].checks["weight_tensors"].get("int8")


@pytest.mark.slow
def test_the_full_context_coreml_program_of_a_streaming_model_converts(tmp_path):
    """The chunk mask of the whole-utterance graph converts too (coremltools has no aten::__or__)."""
    from mobile_export.formats import EXPORTERS

    made = EXPORTERS["coreml"].convert(ExportSource.of(_parts()), tmp_path, ["fp32"], ExportOptions(windows=(2.0,)))
    assert made["fp32"].checks["weight_tensors"].get("float32"), made["fp32"]


def test_a_streaming_format_asked_for_a_non_streaming_checkpoint_fails_with_the_reason(tmp_path):
    tok = CharTokenizer.default_english()
    full = (LogMel(FrontendConfig()), ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size)), tok)
    report = _export(tmp_path, ("onnx-stream",), model_parts=full, rtf_repeats=0)
    (entry,) = report.artifacts
    assert entry.gate_passed is False and "not a streaming one" in entry.reason
    assert "streaming" not in json.loads((tmp_path / "bundle" / "contract.json").read_text())


def test_token_agreement_counts_token_errors_against_the_reference():
    from eval.report import Transcripts
    from mobile_export.stream_export import token_agreement

    def transcripts(*frame_ids):  # one utterance per argument: its frames' argmax ids (vocab 4)
        return Transcripts([np.log(np.eye(4, dtype=np.float32)[list(ids)] + 1e-3) for ids in frame_ids],
                           [""] * len(frame_ids), [1] * len(frame_ids))

    reference = transcripts([1, 0, 2, 2, 3], [1, 1])  # tokens 1 2 3 | 1
    assert token_agreement(reference, reference, blank_id=0) == 1.0
    assert token_agreement(reference, transcripts([1, 0, 0, 0, 3], [2, 0]), blank_id=0) == pytest.approx(1 - 2 / 4)


def test_every_streaming_format_has_a_stepper():
    assert set(STREAMING_FORMATS) == set(STEPPERS)


def test_a_default_export_of_a_streaming_checkpoint_converts_the_streaming_formats(monkeypatch, tmp_path):
    """`asrkd export` without --formats: the export's conversion step asks every default format
    and, for a streaming checkpoint only, the streaming ones (each exporter records the call)."""
    import mobile_export.export as export_module

    class Recording:
        precisions = ("fp32",)

        def __init__(self, name):
            self.name = name

        def convert(self, source, out_dir, precisions, options):
            asked.append(self.name)
            return {}

    monkeypatch.setattr(export_module, "EXPORTERS", {name: Recording(name) for name in FORMATS})
    frontend, model, tok = _parts()
    full = ConformerCTC(build_preset("student", vocab_size=tok.vocab_size)).eval()
    for m, expected in ((model, DEFAULT_FORMATS + STREAMING_FORMATS), (full, DEFAULT_FORMATS)):
        asked = []
        export_module.convert(ExportSource.of((frontend, m, tok)), tmp_path, ExportOptions(precisions=("fp32",)),
                              lambda line: None)
        assert tuple(asked) == expected


def test_open_stepper_names_what_is_wrong_with_the_bundle(tmp_path):
    with pytest.raises(StreamingError, match="unknown streaming format 'onnx'"):
        open_stepper(tmp_path, "onnx", "fp32")
    with pytest.raises(StreamingError, match="contract.json: missing; .* is not an asrkd export bundle"):
        open_stepper(tmp_path, "onnx-stream", "fp32")
    (tmp_path / "contract.json").write_text("{", encoding="utf-8")
    with pytest.raises(StreamingError, match="contract.json: not readable JSON"):
        open_stepper(tmp_path, "onnx-stream", "fp32")
    (tmp_path / "contract.json").write_text("{}", encoding="utf-8")
    with pytest.raises(StreamingError, match="no 'streaming' section"):
        open_stepper(tmp_path, "onnx-stream", "fp32")
