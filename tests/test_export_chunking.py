"""``asrkd export --chunk-size N --left-chunks L``: an app team picks the streaming chunk at export
time. The streaming artifact is built at that chunking and equals the PyTorch streaming model at
it chunk by chunk, contract.json and report.json state it (the attention state's shape follows:
``left_chunks x chunk_size`` frames), --verify-only re-verifies at it, and what a checkpoint
cannot do is refused with exit status 2 and one line naming the option."""

import json

import numpy as np
import pytest
import torch
from test_streaming_export import SMALL, _check_bundle, _manifest, _parts, _wave, one_thread  # noqa: F401

from asrkd.checkpoint import save_checkpoint
from asrkd.cli import main
from asrkd.inference import ChunkingError
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.streaming import StreamingTranscriber
from eval.streaming_runners import open_stepper
from mobile_export.export import ExportOptions, export_model
from mobile_export.options import ExportError
from mobile_export.source import ExportSource

# Not the checkpoint's chunking (SMALL: 4 frames, 2 left chunks): other chunks and another cache.
CHUNK, LEFT = 2, 3


def test_the_artifact_runs_at_the_chunking_asked_for_and_its_contract_says_so(tmp_path):
    frontend, model, tok = _parts()
    report = export_model((frontend, model, tok), tmp_path / "bundle", _manifest(tmp_path),
                          ExportOptions(formats=("onnx-stream",), precisions=("fp32",), rtf_utterances=3,
                                        rtf_repeats=1, cold_start=False, chunk_size=CHUNK, left_chunks=LEFT))
    bundle = tmp_path / "bundle"
    # The artifact's tensors are contract.json's, it agrees with the PyTorch reference (token
    # agreement >= 99 %) and REPORT.md's latency row is at the new chunk's length.
    _check_bundle(bundle, "onnx-stream", report)

    # The PyTorch streaming model at that chunking, built apart from the export, gives the
    # artifact's log-probs chunk by chunk; at the checkpoint's own chunking it does not.
    stepper = open_stepper(bundle, "onnx-stream", "fp32")
    wav = _wave(9 * stepper.chunk_samples + 321, seed=5)
    transcriber = StreamingTranscriber(model, frontend, tok, chunk_size=CHUNK, left_chunks=LEFT)
    transcriber.accept_waveform(wav)
    transcriber.finalize()
    got, expected = stepper.run(wav), transcriber.log_probs.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    own = StreamingTranscriber(model, frontend, tok)
    own.accept_waveform(wav)
    own.finalize()
    assert np.abs(got - own.log_probs.numpy()).max() > 1e-2

    contract = json.loads((bundle / "contract.json").read_text())
    s, c = contract["streaming"], model.config
    assert (s["chunk_frames"], s["left_chunks"], s["left_context_frames"]) == (CHUNK, LEFT, CHUNK * LEFT)
    assert s["chunk_samples"] == CHUNK * c.subsampling * frontend.config.hop_length
    states = {t["name"]: t["shape"] for t in s["states"]}
    assert states["attention"] == [c.n_layers, c.n_heads, LEFT * CHUNK, 2 * c.d_model // c.n_heads]
    assert s["outputs"]["log_probs"]["shape"] == [1, CHUNK, c.vocab_size]
    assert (contract["model"]["config"]["chunk_size"], contract["model"]["config"]["left_chunks"]) == (CHUNK, LEFT)
    chunk_ms = 1000.0 * s["chunk_samples"] / contract["audio"]["sample_rate"]
    assert json.loads((bundle / "report.json").read_text())["chunking"] == {
        "chunk_size": CHUNK, "left_chunks": LEFT, "chunk_ms": chunk_ms, "left_context_ms": LEFT * chunk_ms,
        "checkpoint": {"chunk_size": SMALL["chunk_size"], "left_chunks": SMALL["left_chunks"]}}
    assert (f"({CHUNK} encoder frames), {LEFT} chunks ({LEFT * chunk_ms:.0f} ms) of left context, chosen at export"
            in (bundle / "REPORT.md").read_text())

    # --verify-only re-verifies at the bundle's chunking without being told; another is refused.
    options = dict(formats=("onnx-stream",), precisions=("fp32",), rtf_repeats=0)
    again = export_model((frontend, model, tok), bundle, tmp_path / "eval.jsonl", ExportOptions(**options),
                         verify_only=True)
    (entry,) = again.artifacts
    assert entry.status == "ok" and entry.streaming["token_agreement"] == 1.0
    with pytest.raises(ChunkingError, match="--chunk-size/--left-chunks 4/None: .* exported at chunk_size 2"):
        export_model((frontend, model, tok), bundle, tmp_path / "eval.jsonl",
                     ExportOptions(**options, chunk_size=4), verify_only=True)


def test_without_the_options_the_export_is_the_checkpoints():
    """The checkpoint's own chunking, asked or not, is the same source: nothing changes."""
    frontend, model, tok = _parts()
    source = ExportSource.of((frontend, model, tok))
    assert source.at_chunking(None, None) is source
    assert source.at_chunking(SMALL["chunk_size"], SMALL["left_chunks"]) is source
    assert source.chunking()["checkpoint"] == {"chunk_size": SMALL["chunk_size"], "left_chunks": SMALL["left_chunks"]}
    chunked = source.at_chunking(CHUNK, None)  # the checkpoint's left_chunks
    assert chunked.graph.model.fixed_state_shapes()["attention"][2] == CHUNK * SMALL["left_chunks"]
    assert chunked.graph.model.config.chunk_size == CHUNK and model.config.chunk_size == SMALL["chunk_size"]
    assert all(torch.equal(a, b) for a, b in zip(chunked.graph.model.state_dict().values(),
                                                 model.state_dict().values(), strict=True))


def test_chunkings_a_checkpoint_cannot_stream_are_refused():
    frontend, model, tok = _parts()
    full = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size)).eval()
    with pytest.raises(ChunkingError, match="--chunk-size: the model is not a streaming checkpoint .*student-stream"):
        ExportSource.of((frontend, full, tok)).at_chunking(3, None)
    unlimited = ExportSource.of(_parts(left_chunks=-1))
    with pytest.raises(ChunkingError, match="--chunk-size 3: .*left_chunks is -1 .*give --left-chunks"):
        unlimited.at_chunking(3, None)
    assert unlimited.at_chunking(3, 5).graph.model.fixed_state_shapes()["attention"][2] == 15
    for field, value, flag in (("chunk_size", 0, "--chunk-size"), ("chunk_size", -1, "--chunk-size"),
                               ("left_chunks", 0, "--left-chunks"), ("left_chunks", -1, "--left-chunks")):
        with pytest.raises(ExportError, match=f"{field} \\({flag}\\) must be >= 1"):
            ExportOptions(**{field: value})


def test_the_cli_refuses_with_one_line_and_status_2(tmp_path, capsys):
    frontend, model, tok = _parts()
    full = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size)).eval()
    save_checkpoint(tmp_path / "full", full, frontend.config, tok)
    save_checkpoint(tmp_path / "stream", model, frontend.config, tok)
    manifest = str(_manifest(tmp_path, seconds=(0.5,)))
    for checkpoint, flags, message in (
        ("full", ["--chunk-size", "3", "--left-chunks", "21"],
         f"--chunk-size/--left-chunks: {tmp_path / 'full'} is not a streaming checkpoint"),
        ("stream", ["--chunk-size", "0"], "chunk_size (--chunk-size) must be >= 1"),
        ("stream", ["--left-chunks", "0"], "left_chunks (--left-chunks) must be >= 1"),
    ):
        code = main(["export", str(tmp_path / checkpoint), "--eval-manifest", manifest, "--formats", "onnx-stream",
                     "--out", str(tmp_path / f"out_{checkpoint}"), *flags])
        err = capsys.readouterr().err
        assert code == 2, err
        assert message in err.splitlines()[0], err
