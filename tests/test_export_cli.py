"""``asrkd export`` end to end on a tiny checkpoint and four synthetic utterances: the bundle, the
report contract, and the gate (a damaged artifact, a crashed export, a missing manifest)."""

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from asrkd.audio import load_audio
from asrkd.checkpoint import save_checkpoint
from asrkd.cli import main
from asrkd.data import read_manifest, write_manifest
from asrkd.decoding import greedy_decode
from asrkd.features import FrontendConfig, LogMel
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.synth import synthesize_corpus
from asrkd.text import CharTokenizer, normalize_text
from eval.runners import TorchRunner
from mobile_export.graph import ExportGraph

REPORT_KEYS = {"format", "precision", "path", "size_bytes", "status", "reason", "wer", "cer",
               "agreement", "max_abs_logprob_diff", "rtf_1thread", "rtf_all_threads", "load_seconds"}
TOKENIZER = CharTokenizer.default_english()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained student whose CTC head favours blank on every frame: it transcribes nothing,
    so its WER is exactly 100 % (all deletions) on any labelled set, whatever the runtime."""
    torch.manual_seed(0)
    model = ConformerCTC(build_preset("student-xs", vocab_size=TOKENIZER.vocab_size, n_layers=1,
                                      d_model=32, subsampling_channels=8))
    with torch.no_grad():
        model.ctc_head.bias[TOKENIZER.blank_id] = 30.0
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, FrontendConfig(), TOKENIZER)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return synthesize_corpus(task="digits", n=4, out_dir=tmp_path_factory.mktemp("digits"),
                             workers=1, progress=False)


def export(checkpoint, manifest, out, *extra) -> int:
    return main(["export", str(checkpoint), "--eval-manifest", str(manifest), "--out", str(out),
                 "--rtf-repeats", "1", "--rtf-utterances", "2", *extra])


@pytest.fixture(scope="module")
def bundle(checkpoint, manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "out"
    rc = export(checkpoint, manifest, out, "--formats", "onnx,coreml", "--quantize", "fp32,int8,pal6",
                "--windows", "5", "--zip")
    return rc, out


def read_report(out) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def entry(report, fmt, precision) -> dict:
    return next(a for a in report["artifacts"] if (a["format"], a["precision"]) == (fmt, precision))


def test_export_writes_a_verified_bundle(bundle):
    rc, out = bundle
    assert rc == 0
    report = read_report(out)
    assert report["reference"]["wer"] == 1.0 and report["reference"]["rtf_1thread"] > 0
    assert report["gate"] == {"max_wer_increase": 0.5, "unit": "WER percentage points",
                              "passed": True, "failed": [], "reason": None}
    assert [(a["format"], a["precision"]) for a in report["artifacts"]] == [
        ("onnx", "fp32"), ("onnx", "int8"), ("onnx", "pal6"),
        ("coreml", "fp32"), ("coreml", "int8"), ("coreml", "pal6")]
    for a in report["artifacts"]:
        assert REPORT_KEYS <= set(a), a["format"]
    for precision in ("fp32", "int8"):
        onnx = entry(report, "onnx", precision)
        assert onnx["status"] == "ok" and onnx["gate_passed"] is True
        assert onnx["wer"] == 1.0 and onnx["agreement"] == 1.0 and onnx["wer_increase"] == 0.0
        assert onnx["rtf_1thread"] > 0 and onnx["load_seconds"] > 0
        assert onnx["size_bytes"] == (out / onnx["path"]).stat().st_size
    assert entry(report, "onnx", "fp32")["max_abs_logprob_diff"] < 1e-4
    pal = entry(report, "onnx", "pal6")
    assert pal["status"] == "not_run" and pal["gate_passed"] is None and "offers onnx at" in pal["reason"]
    for precision in ("fp32", "int8", "pal6"):
        cml = entry(report, "coreml", precision)
        assert (out / cml["path"]).is_dir() and cml["size_bytes"] > 0
        if sys.platform != "darwin":
            assert cml["status"] == "not_run" and cml["reason"].startswith("not run: needs macOS")
            assert cml["wer"] is None and cml["checks"]["inputs"]["pcm"]["shape"] == [1, 80000]


def test_bundle_holds_contract_tokens_card_and_per_utterance_results(bundle, manifest):
    _, out = bundle
    contract = json.loads((out / "contract.json").read_text(encoding="utf-8"))
    assert contract["audio"]["sample_rate"] == 16000
    assert contract["window_samples"] == [80000]
    assert contract["output_frame_shift_seconds"] == pytest.approx(0.04)
    assert contract["blank_id"] == 0 and contract["vocabulary_sha256"] == TOKENIZER.fingerprint()
    assert list(contract["inputs"]) == ["pcm", "pcm_lens"]
    assert list(contract["outputs"]) == ["log_probs", "out_lens", "token_ids", "confidence"]
    files = {a["file"] for a in contract["artifacts"]}
    assert files == {"model.fp32.onnx", "model.int8.onnx", "model.fp32.mlpackage",
                     "model.int8.mlpackage", "model.pal6.mlpackage"}
    assert CharTokenizer.load(out / "tokens.txt") == TOKENIZER
    rows = [json.loads(line) for line in (out / "utterances.jsonl").read_text().splitlines()]
    assert {r["artifact"] for r in rows} == {"torch", "onnx-fp32", "onnx-int8"}
    assert all(r["hyp"] == "" and r["wer"] == 1.0 for r in rows)
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Training data" in card and "## Limitations" in card and "onnx int8" in card
    assert "| onnx fp32 | ok |" in (out / "REPORT.md").read_text(encoding="utf-8")
    assert (out.parent / "out.zip").is_file()


@pytest.fixture(scope="module")
def pseudo_labelled(manifest, tmp_path_factory):
    """(checkpoint, manifest) of an untrained student and the same four utterances labelled with
    its own greedy transcripts: its reference WER is (about) 0, so any change in what an
    artifact transcribes shows as a WER increase."""
    torch.manual_seed(1)
    model = ConformerCTC(build_preset("student-xs", vocab_size=TOKENIZER.vocab_size, n_layers=1,
                                      d_model=32, subsampling_channels=8)).eval()
    folder = tmp_path_factory.mktemp("pseudo")
    ckpt = save_checkpoint(folder / "ckpt", model, FrontendConfig(), TOKENIZER)
    runner = TorchRunner(ckpt, graph=ExportGraph(LogMel(FrontendConfig()), model))
    labelled = []
    for u in read_manifest(manifest):
        lp = runner.run(load_audio(u.audio_filepath))
        text = TOKENIZER.decode(greedy_decode(lp[None], np.array([len(lp)]))[0])
        labelled.append(replace(u, text=normalize_text(text)))
    assert all(u.text for u in labelled)
    write_manifest(folder / "pseudo.jsonl", labelled)
    return ckpt, folder / "pseudo.jsonl"


def damage_ctc_head(path):
    """Rewrite the CTC head of an exported ONNX file: only "▁" and "a" keep (random) weights and
    blank loses its bias, so the artifact transcribes runs of "a" whatever it hears."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    add = next(n for n in model.graph.node if "model.ctc_head.bias" in n.input)
    matmul = producer[next(x for x in add.input if x != "model.ctc_head.bias")]
    weight_name = next(x for x in matmul.input if x in inits)
    weight = numpy_helper.to_array(inits[weight_name]).copy()  # [d_model, vocab]
    rng = np.random.default_rng(0)
    weight[:] = 0
    for token in ("\u2581", "a"):
        weight[:, TOKENIZER.tokens.index(token)] = 5 * rng.standard_normal(weight.shape[0])
    inits[weight_name].CopyFrom(numpy_helper.from_array(weight, weight_name))
    bias = inits["model.ctc_head.bias"]
    bias.CopyFrom(numpy_helper.from_array(np.zeros(weight.shape[1], np.float32), bias.name))
    onnx.save(model, str(path))


def test_gate_fails_on_a_damaged_artifact(pseudo_labelled, tmp_path):
    checkpoint, manifest = pseudo_labelled
    out = tmp_path / "out"
    assert export(checkpoint, manifest, out, "--formats", "onnx", "--quantize", "fp32") == 0
    good = entry(read_report(out), "onnx", "fp32")
    assert good["status"] == "ok" and good["agreement"] == 1.0

    damage_ctc_head(out / "model.fp32.onnx")
    (out / "report.json").unlink()
    assert export(checkpoint, manifest, out, "--verify-only") == 1
    report = read_report(out)
    bad = entry(report, "onnx", "fp32")
    assert bad["status"] == "failed_gate" and bad["gate_passed"] is False
    assert bad["agreement"] < 1.0 and bad["wer_increase"] > 0.5
    assert "points above PyTorch" in bad["reason"]
    assert report["gate"]["passed"] is False and report["gate"]["failed"] == ["onnx-fp32"]


def test_crashed_export_is_not_run_and_fails_the_gate(checkpoint, manifest, tmp_path):
    rc = export(checkpoint, manifest, tmp_path / "out", "--formats", "coreml", "--quantize", "fp16",
                "--coreml-target", "iOS99")
    assert rc == 1
    report = read_report(tmp_path / "out")
    crashed = entry(report, "coreml", "fp16")
    assert crashed["status"] == "not_run" and crashed["gate_passed"] is False
    assert crashed["reason"].startswith("export failed: ValueError: unknown Core ML deployment target 'iOS99'")
    assert report["gate"]["passed"] is False and report["gate"]["failed"] == ["coreml-fp16"]


def test_report_is_written_when_the_export_cannot_start(checkpoint, tmp_path, capsys):
    rc = export(checkpoint, tmp_path / "missing.jsonl", tmp_path / "out", "--formats", "onnx")
    assert rc == 1
    report = read_report(tmp_path / "out")
    assert "missing.jsonl" in report["error"] and report["gate"]["passed"] is False
    assert report["artifacts"] == [] and set(report["reference"]) >= {"wer", "cer", "rtf_1thread"}
    assert "asrkd export: error" in capsys.readouterr().err


def test_bad_options_are_refused_before_any_work(checkpoint, manifest, tmp_path, capsys):
    assert export(checkpoint, manifest, tmp_path / "out", "--formats", "onnx,tensorrt") == 2
    assert "unknown format(s) ['tensorrt']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
