"""``asrkd export`` end to end on a tiny checkpoint and four synthetic utterances: the bundle, the
report contract, and the gate (a damaged artifact, a crashed export, a missing manifest).

The checkpoint is untrained, so its "references" are its own transcripts: what matters here is
that every artifact is scored against the same texts as PyTorch and that the gate sees changes."""

import json
import shutil
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from asrkd.audio import load_audio
from asrkd.checkpoint import load_checkpoint, save_checkpoint
from asrkd.cli import main
from asrkd.contract import SAMPLE_RATE
from asrkd.data import read_manifest, write_manifest
from asrkd.decoding import greedy_decode
from asrkd.features import FrontendConfig, LogMel
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.synth import synthesize_corpus
from asrkd.text import CharTokenizer, normalize_text
from eval.runners import TorchRunner
from mobile_export.export import ExportOptions, export_model
from mobile_export.graph import ExportGraph

REPORT_KEYS = {"format", "precision", "path", "size_bytes", "status", "reason", "wer", "cer",
               "agreement", "max_abs_logprob_diff", "rtf_1thread", "rtf_all_threads", "load_seconds"}
TOKENIZER = CharTokenizer.default_english()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """(checkpoint, manifest): an untrained student and four synthetic utterances labelled with
    its own greedy transcripts, so its reference WER is (about) 0 and any change in what an
    artifact transcribes shows as a WER increase. Its CTC head is scaled up so that no frame is
    a near tie that float rounding could flip between runtimes."""
    torch.manual_seed(1)
    model = ConformerCTC(build_preset("student-xs", vocab_size=TOKENIZER.vocab_size, n_layers=1,
                                      d_model=32, subsampling_channels=8)).eval()
    with torch.no_grad():
        model.ctc_head.weight *= 10
    folder = tmp_path_factory.mktemp("tiny")
    ckpt = save_checkpoint(folder / "ckpt", model, FrontendConfig(), TOKENIZER)
    synth = synthesize_corpus(task="digits", n=4, out_dir=folder / "digits", workers=1, progress=False)
    runner = TorchRunner(ckpt, graph=ExportGraph(LogMel(FrontendConfig()), model))
    labelled = []
    for u in read_manifest(synth):
        lp = runner.run(load_audio(u.audio_filepath))
        text = TOKENIZER.decode(greedy_decode(lp[None], np.array([len(lp)]))[0])
        labelled.append(replace(u, text=normalize_text(text)))
    assert all(u.text for u in labelled)
    write_manifest(folder / "labelled.jsonl", labelled)
    return ckpt, folder / "labelled.jsonl"


def export(checkpoint, manifest, out, *extra) -> int:
    return main(["export", str(checkpoint), "--eval-manifest", str(manifest), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def bundle(labelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "out"
    rc = export(*labelled, out, "--formats", "onnx,coreml", "--quantize", "fp32,pal6", "--windows", "5",
                "--zip", "--rtf-repeats", "1", "--rtf-utterances", "2")
    return rc, out


def read_report(out) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def entry(report, fmt, precision) -> dict:
    return next(a for a in report["artifacts"] if (a["format"], a["precision"]) == (fmt, precision))


def test_export_writes_a_verified_bundle(bundle):
    rc, out = bundle
    assert rc == 0
    report = read_report(out)
    ref = report["reference"]
    assert ref["wer"] < 0.2 and ref["rtf_1thread"] > 0 and ref["load_seconds"] > 0
    assert report["gate"] == {"max_wer_increase": 0.5, "unit": "WER percentage points",
                              "passed": True, "failed": [], "reason": None}
    assert [(a["format"], a["precision"]) for a in report["artifacts"]] == [
        ("onnx", "fp32"), ("onnx", "pal6"), ("coreml", "fp32"), ("coreml", "pal6")]
    for a in report["artifacts"]:
        assert REPORT_KEYS <= set(a), a["format"]
    onnx = entry(report, "onnx", "fp32")
    assert onnx["status"] == "ok" and onnx["gate_passed"] is True
    assert onnx["wer"] == ref["wer"] and onnx["agreement"] == 1.0 and onnx["wer_increase"] == 0.0
    assert onnx["max_abs_logprob_diff"] < 1e-4
    assert onnx["rtf_1thread"] > 0 and onnx["rtf_all_threads"] > 0 and onnx["load_seconds"] > 0
    assert onnx["size_bytes"] == (out / onnx["path"]).stat().st_size
    pal = entry(report, "onnx", "pal6")
    assert pal["status"] == "not_run" and pal["gate_passed"] is None and "offers onnx at" in pal["reason"]
    for precision in ("fp32", "pal6"):
        cml = entry(report, "coreml", precision)
        assert (out / cml["path"]).is_dir() and cml["size_bytes"] > 0
        if sys.platform != "darwin":
            assert cml["status"] == "not_run" and cml["reason"].startswith("not run: needs macOS")
            assert cml["wer"] is None and cml["checks"]["inputs"]["pcm"]["shape"] == [1, 80000]
    assert entry(report, "coreml", "pal6")["checks"]["weight_tensors"]["palettized"] > 0


def test_bundle_holds_contract_tokens_card_and_per_utterance_results(bundle):
    _, out = bundle
    contract = json.loads((out / "contract.json").read_text(encoding="utf-8"))
    assert contract["audio"]["sample_rate"] == SAMPLE_RATE
    assert contract["window_samples"] == [80000]
    assert contract["output_frame_shift_seconds"] == pytest.approx(0.04)
    assert contract["blank_id"] == 0 and contract["vocabulary_sha256"] == TOKENIZER.fingerprint()
    assert list(contract["inputs"]) == ["pcm", "pcm_lens"]
    assert list(contract["outputs"]) == ["log_probs", "out_lens", "token_ids", "confidence"]
    files = {a["file"] for a in contract["artifacts"]}
    assert files == {"model.fp32.onnx", "model.fp32.mlpackage", "model.pal6.mlpackage"}
    assert CharTokenizer.load(out / "tokens.txt") == TOKENIZER
    rows = [json.loads(line) for line in (out / "utterances.jsonl").read_text().splitlines()]
    assert {r["artifact"] for r in rows} == {"torch", "onnx-fp32"}
    assert len(rows) == 8 and all(r["agrees_with_pytorch"] for r in rows)
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Training data" in card and "## Limitations" in card and "| onnx fp32 | ok |" in card
    assert "| onnx fp32 | ok |" in (out / "REPORT.md").read_text(encoding="utf-8")
    assert (out.parent / "out.zip").is_file()


def test_export_takes_a_model_in_memory(bundle, labelled, tmp_path):
    """The Python API exports modules that were never saved, to the same report keys as the CLI."""
    loaded = load_checkpoint(labelled[0])
    report = export_model((loaded.frontend, loaded.model, loaded.tokenizer), tmp_path / "out", labelled[1],
                          ExportOptions(formats=("onnx",), precisions=("fp32",), rtf_repeats=0))
    assert report.checkpoint is None and report.gate.passed and report.reference.wer < 0.2
    (onnx,) = report.artifacts
    assert onnx.status == "ok" and onnx.scores.agreement == 1.0 and onnx.wer_increase == 0.0
    assert list(onnx.to_dict()) == list(entry(read_report(bundle[1]), "onnx", "fp32"))
    assert read_report(tmp_path / "out") == json.loads(json.dumps(report.to_dict()))
    contract = json.loads((tmp_path / "out" / "contract.json").read_text(encoding="utf-8"))
    assert contract["model"]["step"] is None and contract["vocabulary_sha256"] == TOKENIZER.fingerprint()


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


def test_gate_fails_on_a_damaged_artifact(bundle, labelled, tmp_path):
    _, out = bundle
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    damage_ctc_head(damaged / "model.fp32.onnx")
    (damaged / "report.json").unlink()
    assert export(*labelled, damaged, "--verify-only", "--rtf-repeats", "0") == 1
    report = read_report(damaged)
    bad = entry(report, "onnx", "fp32")
    assert bad["status"] == "failed_gate" and bad["gate_passed"] is False
    assert bad["agreement"] < 1.0 and bad["wer_increase"] > 0.5
    assert "points above PyTorch" in bad["reason"]
    assert bad["rtf_1thread"] is None and "not measured" in report["eval"]["timing"]
    assert report["gate"]["passed"] is False and report["gate"]["failed"] == ["onnx-fp32"]


def test_crashed_export_is_not_run_and_fails_the_gate(labelled, tmp_path):
    rc = export(*labelled, tmp_path / "out", "--formats", "coreml", "--quantize", "fp16",
                "--coreml-target", "iOS99", "--rtf-repeats", "0")
    assert rc == 1
    report = read_report(tmp_path / "out")
    crashed = entry(report, "coreml", "fp16")
    assert crashed["status"] == "not_run" and crashed["gate_passed"] is False
    assert crashed["reason"].startswith("export failed: ValueError: unknown Core ML deployment target 'iOS99'")
    assert report["gate"]["passed"] is False and report["gate"]["failed"] == ["coreml-fp16"]


def test_report_is_written_when_the_export_cannot_start(labelled, tmp_path, capsys):
    rc = export(labelled[0], tmp_path / "missing.jsonl", tmp_path / "out", "--formats", "onnx")
    assert rc == 2  # bad input (docs/ERRORS.md); 1 is a failed gate
    report = read_report(tmp_path / "out")
    assert "missing.jsonl" in report["error"] and report["gate"]["passed"] is False
    assert report["artifacts"] == [] and set(report["reference"]) >= {"wer", "cer", "rtf_1thread"}
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("asrkd export: ") and "missing.jsonl" in err.splitlines()[-1]
    assert "Traceback" not in err


def test_bad_options_are_refused_before_any_work(labelled, tmp_path, capsys):
    assert export(*labelled, tmp_path / "out", "--formats", "onnx,tensorrt") == 2
    assert "unknown format(s) ['tensorrt']" in capsys.readouterr().err
    report = read_report(tmp_path / "out")  # written even so, for CI to find
    assert "tensorrt" in report["error"] and report["gate"]["passed"] is False
    assert report["artifacts"] == [] and not list((tmp_path / "out").glob("model.*"))


def test_fallback_threshold_calibration_and_edge_cases(labelled, tmp_path, capsys):
    """--fallback-target-precision: the calibration set has two of four transcripts made wrong,
    so the threshold must separate; the same audio unlabelled serves as the out-of-scope set.
    --edge-cases: every condition is reported for PyTorch and the artifact."""
    from mobile_export.bundle import read_confidence

    utts = read_manifest(labelled[1])
    wrong = [replace(u, text=u.text + " nine") if i % 2 else u for i, u in enumerate(utts)]
    write_manifest(tmp_path / "cal.jsonl", wrong)
    write_manifest(tmp_path / "oos.jsonl", [replace(u, text=None) for u in utts])
    out = tmp_path / "out"
    rc = export(*labelled, out, "--formats", "onnx", "--quantize", "fp32", "--rtf-repeats", "0",
                "--no-cold-start", "--fallback-target-precision", "0.9", "--calibration-manifest",
                str(tmp_path / "cal.jsonl"), "--oos-manifest", str(tmp_path / "oos.jsonl"), "--edge-cases",
                "--max-wer-increase-noisy", "100")
    assert "fallback threshold" in capsys.readouterr().out
    conf = read_report(out)["confidence"]
    assert not conf["in_sample"] and conf["calibration"]["fitted_on"] == {"utterances": 4, "correct": 2}
    assert conf["calibration_set"]["correct"] == 0.5 and conf["eval"]["correct"] == 1.0
    fb = conf["fallback"]
    assert fb["target_precision"] == 0.9 and 0 < fb["coverage"] <= 1
    assert fb["reached"] == (fb["precision"] >= 0.9)
    # Every eval utterance is right, so what is kept is right; coverage and rejection are shares.
    assert conf["eval"]["accuracy"] in (1.0, None) and 0 <= conf["eval"]["coverage"] <= 1
    assert conf["oos"]["utterances"] == 4 and conf["oos"]["rejection"] == 1 - conf["eval"]["coverage"]
    (onnx,) = read_report(out)["artifacts"]
    # The artifact is measured on its own outputs; the threshold is one of these very utterances'
    # confidences, so a float rounding apart may move that one utterance (1 / 4) across it.
    assert onnx["fallback"]["eval"]["coverage"] == pytest.approx(conf["eval"]["coverage"], abs=0.25)
    assert onnx["fallback"]["oos"]["rejection"] == 1 - onnx["fallback"]["eval"]["coverage"]
    calibration, threshold = read_confidence(out)
    assert calibration.to_dict() == conf["calibration"] and threshold == fb["threshold"]
    # The temperature calibration is in the graph: the artifact outputs p itself.
    contract = json.loads((out / "contract.json").read_text())
    assert contract["confidence"]["calibrated_output"] == "calibrated_confidence"
    assert list(contract["outputs"])[-2:] == ["confidence", "calibrated_confidence"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / onnx["path"]), providers=["CPUExecutionProvider"])
    pcm = load_audio(utts[0].audio_filepath)[None]
    raw, p = session.run(["confidence", "calibrated_confidence"],
                         {"pcm": pcm, "pcm_lens": np.array([pcm.shape[1]], dtype=np.int64)})
    assert p == pytest.approx(calibration.apply(raw), abs=1e-5)
    assert (out / conf["reliability_png"]).read_bytes()[:4] == b"\x89PNG"
    assert "## Confidence and fallback" in (out / "REPORT.md").read_text(encoding="utf-8")

    report = read_report(out)
    names = ["noise_20db", "noise_10db", "noise_0db", "speed_0.9", "speed_1.1", "level_-30db", "clipping",
             "telephone_8khz", "silence_padding", "long_concatenation", "silence_only"]
    assert list(report["edge_cases"]) == names == list(onnx["edge_cases"])
    long, quiet = report["edge_cases"]["long_concatenation"], onnx["edge_cases"]["silence_only"]
    assert long["utterances"] == 1 and long["audio_seconds"] >= 60 and long["wer"] is not None
    assert quiet["expects_empty"] and quiet["wer"] is None and quiet["utterances"] == 2
    for row in onnx["edge_cases"].values():
        assert 0 <= row["agreement"] <= 1 and 0 <= row["fallback_rate"] <= 1
        assert 0 <= row["confidence"]["p10"] <= row["confidence"]["median"] <= row["confidence"]["p90"] <= 1
    # An untrained model may speak on silence; the gate says so by name (here with 100 points of slack).
    assert onnx["gate_passed"] is (quiet["non_empty"] == 0) and rc == (0 if onnx["gate_passed"] else 1)
    if quiet["non_empty"]:
        assert "silence_only" in onnx["reason"] and report["gate"]["failed"] == ["onnx-fp32"]
    assert "## Edge cases" in (out / "REPORT.md").read_text(encoding="utf-8")
    # asrkd monitor on the bundle (its ONNX artifact) against the checkpoint as teacher, on the
    # evaluation set itself: full agreement, and no shift against the values report.json holds.
    assert main(["monitor", str(out), "--teacher", str(labelled[0]), "--manifest", str(labelled[1]),
                 "--out", str(tmp_path / "monitor")]) == 0
    summary = json.loads((tmp_path / "monitor" / "summary.json").read_text())
    assert summary["student"]["artifact"] == onnx["path"] and summary["bundle_values_from"] == "onnx fp32"
    assert summary["agreement"] == 1.0 and summary["fallback_threshold"] == threshold
    assert summary["fallback_rate_shift"] == pytest.approx(0, abs=1e-9)
    assert summary["median_confidence_shift"] == pytest.approx(0, abs=1e-6)
    # Re-verifying the bundle without the flags keeps its calibration.
    assert export(*labelled, out, "--verify-only", "--rtf-repeats", "0", "--no-cold-start") == 0
    assert read_confidence(out) == (calibration, threshold) and "confidence" not in read_report(out)


def test_edge_gate_fails_on_a_condition_and_on_speech_in_silence():
    from mobile_export.gate import apply_edge_gate
    from mobile_export.report import ArtifactEntry

    reference = {"noise_0db": {"wer": 0.30, "expects_empty": False},
                 "silence_only": {"wer": None, "expects_empty": True}}

    def artifact(noisy_wer, non_empty):
        entry = ArtifactEntry("onnx", "int8", status="ok", gate_passed=True)
        entry.edge_cases = {"noise_0db": {"wer": noisy_wer, "expects_empty": False, "non_empty": 4, "utterances": 4},
                            "silence_only": {"wer": None, "expects_empty": True, "non_empty": non_empty,
                                             "utterances": 2}}
        apply_edge_gate(entry, reference, max_increase=2.0)
        return entry

    assert artifact(0.32, 0).gate_passed is True
    noisy = artifact(0.33, 0)
    assert noisy.status == "failed_gate" and "noise_0db: WER 33.00 % is 3.00 points above" in noisy.reason
    speaks = artifact(0.30, 1)
    assert speaks.gate_passed is False and "silence_only: 1 of 2 outputs not empty" in speaks.reason


def test_calibration_and_edge_case_options_are_checked(labelled, tmp_path, capsys):
    assert export(*labelled, tmp_path / "out", "--oos-manifest", str(labelled[1])) == 2
    assert "need fallback_target_precision" in capsys.readouterr().err
    assert export(*labelled, tmp_path / "out", "--fallback-target-precision", "95") == 2
    assert "must be a share in (0, 1]" in capsys.readouterr().err
    assert export(*labelled, tmp_path / "out", "--max-wer-increase-noisy", "1") == 2
    assert "need edge_cases (--edge-cases)" in capsys.readouterr().err
    write_manifest(tmp_path / "one.jsonl", read_manifest(labelled[1])[:1])
    assert export(*labelled, tmp_path / "out", "--formats", "onnx", "--rtf-repeats", "0", "--no-cold-start",
                  "--fallback-target-precision", "0.9", "--calibration-manifest", str(tmp_path / "one.jsonl")) == 1
    assert "one.jsonl: cannot calibrate on it (need >= 2 scores" in capsys.readouterr().err


def test_a_runner_that_decodes_by_itself_is_scored_on_its_text():
    """sherpa-onnx's runner returns no log-probs, only its text (eval/runners.py decodes_text)."""
    from eval.report import compare, transcribe

    class TextRunner:
        last_chunks, last_text = 1, ""

        def run(self, pcm):
            self.last_text = "one two" if len(pcm) > 10 else ""
            return None

    out = transcribe(TextRunner(), [np.zeros(100, np.float32), np.zeros(5, np.float32)], TOKENIZER)
    assert out.texts == ["one two", ""] and out.log_probs == [None, None]
    scores, rows = compare(out, out, ["one two", "three"], ["a", "b"])
    assert scores.agreement == 1.0 and scores.max_abs_logprob_diff is None and scores.wer == 1 / 3
    assert [r["max_abs_logprob_diff"] for r in rows] == [None, None]


def test_a_pass_after_the_speed_measurement_runs_a_reopened_runner(labelled):
    """ExecuTorch's thread pool is process-wide: a method loaded before the speed measurement
    resets it deadlocks after it, so the out-of-scope and edge-case passes open the artifact
    again (the quick demo's .pte hung there). A PyTorch runner, maybe only in memory, is kept."""
    from eval.runners import Runner
    from mobile_export.fallback import reopened

    class Loaded(Runner):
        format = "fake"

        def _forward(self, pcm, length):
            raise NotImplementedError

    first = Loaded("model.pte", threads=1)
    again = reopened(first)
    assert again is not first and type(again) is Loaded and again.path == first.path and again.threads == 1
    torch_runner = TorchRunner(labelled[0], graph=lambda x, n: None)
    assert reopened(torch_runner) is torch_runner


def test_the_graph_applies_the_temperature_calibration_as_asrkd_confidence_does():
    from asrkd.confidence import Calibration
    from mobile_export.graph import calibrated

    cal = Calibration("entropy", "temperature", temperature=0.583, bias=-1.657)
    c = np.array([0.0, 1e-7, 0.3, 0.673, 0.86, 0.999, 1.0], dtype=np.float32)
    p = calibrated(torch.from_numpy(c), cal.temperature, cal.bias).numpy()
    assert p.dtype == np.float32 and p == pytest.approx(cal.apply(c), abs=1e-6)
    assert np.all(np.diff(p) >= 0) and 0 < p[0] < p[-1] <= 1  # monotone; float32 saturates at the top
