"""`asrkd monitor` (eval/monitor.py): a student that agrees with its teacher passes, a swapped one
(its output weights shuffled) is flagged with exit status 1 and its worst utterances listed; a
rerun skips what is done; the confidence shift is measured against a bundle's stored values.

The teacher is an untrained tiny checkpoint (its CTC head scaled up so that no frame is a near
tie); the right student is the same checkpoint, the wrong one the same weights with the output
rows rolled by one token, as if a checkpoint of another vocabulary or task had been shipped."""

import json

import numpy as np
import pytest
import torch

from asrkd.audio import write_wav
from asrkd.checkpoint import save_checkpoint
from asrkd.cli import main
from asrkd.confidence import Calibration
from asrkd.contract import SAMPLE_RATE
from asrkd.features import FrontendConfig
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.text import CharTokenizer
from eval.monitor import RESULTS, MonitorError, Student, _bundle_baseline, open_student, summarize

TOKENIZER = CharTokenizer.default_english()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(teacher = right student, wrong student, audio folder of 6 one-second clips)."""
    folder = tmp_path_factory.mktemp("monitor")
    torch.manual_seed(1)
    model = ConformerCTC(build_preset("student-xs", vocab_size=TOKENIZER.vocab_size, n_layers=1,
                                      d_model=32, subsampling_channels=8)).eval()
    with torch.no_grad():
        model.ctc_head.weight *= 10
    right = save_checkpoint(folder / "right", model, FrontendConfig(), TOKENIZER)
    with torch.no_grad():
        model.ctc_head.weight.copy_(model.ctc_head.weight.roll(1, dims=0))
        model.ctc_head.bias.copy_(model.ctc_head.bias.roll(1, dims=0))
    wrong = save_checkpoint(folder / "wrong", model, FrontendConfig(), TOKENIZER)
    rng = np.random.default_rng(0)
    audio = folder / "audio"
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for i in range(6):
        tone = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) * (1 + np.sin(2 * np.pi * (2 + i) * t))
        write_wav(audio / ("sub" if i % 2 else "") / f"clip{i}.wav",
                  (tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
    return right, wrong, audio


def _monitor(student, teacher, audio, out, *extra):
    return main(["monitor", str(student), "--teacher", str(teacher), "--audio-dir", str(audio),
                 "--out", str(out), "--min-agreement", "0.9", *extra])


def test_the_right_student_passes_and_a_swapped_one_is_flagged(setup, tmp_path):
    right, wrong, audio = setup
    assert _monitor(right, right, audio, tmp_path / "right") == 0
    summary = json.loads((tmp_path / "right" / "summary.json").read_text())
    assert summary["utterances"] == 6 and summary["agreement"] == 1.0 and summary["exact_match"] == 1.0
    assert summary["teacher_words"] > 0  # the teacher says something: agreement is not 1 by silence
    assert (tmp_path / "right" / "disagreements.jsonl").read_text() == ""

    assert _monitor(wrong, right, audio, tmp_path / "wrong") == 1
    summary = json.loads((tmp_path / "wrong" / "summary.json").read_text())
    assert summary["agreement"] < 0.5 and not summary["passed"]
    worst = [json.loads(line) for line in (tmp_path / "wrong" / "disagreements.jsonl").read_text().splitlines()]
    assert worst and [r["errors"] for r in worst] == sorted((r["errors"] for r in worst), reverse=True)
    assert {"utt_id", "teacher", "student", "errors", "confidence"} <= set(worst[0])
    assert {r["utt_id"] for r in worst} <= {"clip0.wav", "sub/clip1.wav", "clip2.wav", "sub/clip3.wav",
                                             "clip4.wav", "sub/clip5.wav"}


def test_a_rerun_skips_done_utterances_and_redoes_a_torn_line(setup, tmp_path, monkeypatch):
    right, _, audio = setup
    out = tmp_path / "out"
    assert _monitor(right, right, audio, out) == 0
    lines = (out / RESULTS).read_text().splitlines()
    (out / RESULTS).write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])  # killed while writing line 5
    import eval.monitor as monitor_module

    ran = []
    real = monitor_module.measure
    monkeypatch.setattr(monitor_module, "measure", lambda s, t, utt, *a: ran.append(utt.utt_id) or real(s, t, utt, *a))
    assert _monitor(right, right, audio, out) == 0
    assert len(ran) == 2
    records = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    assert len(records) == 6 == len({r["utt_id"] for r in records})
    ran.clear()
    assert _monitor(right, right, audio, out) == 0 and ran == []


def test_another_student_in_the_same_folder_is_refused(setup, tmp_path):
    right, wrong, audio = setup
    assert _monitor(right, right, audio, tmp_path) == 0
    assert _monitor(wrong, right, audio, tmp_path) == 2  # MonitorError: an input error, exit 2


def test_artifact_needs_a_bundle(setup):
    right, _, _ = setup
    with pytest.raises(MonitorError, match="not a bundle"):
        open_student(right, artifact="model.int8.onnx")


def test_shift_against_the_bundle_values():
    report = {"confidence": {"eval": {"median_confidence": 0.6, "coverage": 0.3}},
              "artifacts": [{"format": "onnx", "precision": "int8",
                             "fallback": {"eval": {"median_confidence": 0.55, "coverage": 0.25}}}]}
    assert _bundle_baseline(report, "tflite", "int8") == {"median_confidence": 0.6, "fallback_rate": 0.7,
                                                          "source": "pytorch"}
    baseline = _bundle_baseline(report, "onnx", "int8")
    assert baseline["median_confidence"] == 0.55 and baseline["source"] == "onnx int8"
    student = Student(None, TOKENIZER, SAMPLE_RATE, {}, Calibration("entropy", "temperature", temperature=1.0,
                                                                    bias=0.0), 0.5, baseline)
    records = [{"utt_id": str(i), "teacher": "one two", "student": "one two" if i else "one",
                "errors": 0 if i else 1, "teacher_words": 2, "confidence": c, "calibrated_confidence": c}
               for i, c in enumerate([0.2, 0.4, 0.6, 0.8])]
    s = summarize(records, student, min_agreement=0.9)
    assert s["wer_vs_teacher"] == 1 / 8 and s["agreement"] == 7 / 8 and not s["passed"]
    assert s["fallback_rate"] == 0.5 and s["fallback_rate_shift"] == pytest.approx(0.5 - 0.75)
    assert s["median_confidence"] == pytest.approx(0.5) and s["median_confidence_shift"] == pytest.approx(-0.05)
