"""`asrkd demo`: its plans (recipes/demo/), every stage on the smoke plan, resuming, refusing a
mixed folder, the report and plots.

The smoke plan trains for seconds (its WERs mean nothing); the `--quick` plan itself runs as a
slow test (`pytest -m slow tests/test_demo.py`, run by .ci/run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asrkd.config import TrainConfig
from asrkd.demo import (
    STAGES,
    Demo,
    DemoError,
    DemoPlan,
    render_demo_markdown,
    run_demo,
    summary_table,
)
from asrkd.demo.plan import PLACED_FIELDS, RECIPES, TRAINING_STAGES
from eval import plots

PLANS = ("default", "quick", "smoke")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL_KEYS = {"checkpoint", "params", "wer", "cer", "rtf_1thread"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("demo")
    logs: list[str] = []
    report = run_demo(out, "smoke", threads=2, log=logs.append)
    return out, report, logs


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_smoke_demo_writes_the_report_contract(smoke):
    out, report, logs = smoke
    assert json.loads((out / "report.json").read_text()) == report
    for key in ("teacher", "student_kd", "student_ctc"):
        m = report[key]
        assert MODEL_KEYS <= set(m), key
        assert Path(m["checkpoint"]).is_dir()
        assert 0.0 <= m["wer"] and 0.0 <= m["cer"]
        assert m["rtf_1thread"] > 0
    assert report["teacher"]["params"] > report["student_kd"]["params"] == report["student_ctc"]["params"]
    export = report["export"]
    assert {"reference", "gate", "artifacts"} <= set(export)
    assert [(a["format"], a["precision"]) for a in export["artifacts"]] == [("onnx", "fp32"), ("onnx", "int8")]
    assert all(a["status"] == "ok" and (out / "bundle" / a["path"]).is_file() for a in export["artifacts"])
    assert (out / "bundle" / "contract.json").is_file()
    for name in ("pareto", "training", "sizes"):
        assert _is_png(out / report["plots"][name]), name
    md = (out / "REPORT.md").read_text()
    for needle in ("Teacher vs students", "student + KD", "student, CTC only", "onnx int8", "plots/pareto.png"):
        assert needle in md
    assert all((out / "stages" / f"{s}.json").is_file() for s in STAGES if s != "report")
    assert logs[-1].startswith("demo finished")
    # The summary table printed at the end names every model and artifact.
    table = "\n".join(summary_table(report))
    assert "teacher" in table and "onnx fp32" in table


def test_rerun_reuses_finished_stages_and_redoes_an_unfinished_one(smoke):
    out, report, _ = smoke
    ctc_ckpt = Path(report["student_ctc"]["checkpoint"])
    weights_mtime = (ctc_ckpt / "model.safetensors").stat().st_mtime_ns
    (out / "stages" / "student_ctc.json").unlink()  # as if killed during that stage
    logs: list[str] = []
    again = Demo(out, "smoke", threads=2, log=logs.append).run()
    reused = [s for s in STAGES if any(line.startswith("[") and f"] {s}: done earlier" in line for line in logs)]
    assert reused == ["data", "teacher", "cache", "student_kd", "export"]
    assert any("] student_ctc: finished" in line for line in logs)
    # The finished training resumed from its last checkpoint: nothing was retrained.
    assert (ctc_ckpt / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert again["student_ctc"]["wer"] == report["student_ctc"]["wer"]
    # Same weights: the report keeps the first measurement instead of re-timing the models.
    for key in ("teacher", "student_kd", "student_ctc"):
        assert any(line.strip() == f"{key}: measured earlier, reusing {out / 'stages' / f'measure_{key}.json'}"
                   for line in logs), key
        assert again[key]["rtf_1thread"] == report[key]["rtf_1thread"]


def test_real_manifest_adds_a_column(smoke):
    out, report, _ = smoke
    real = report["demo"]["test_manifest"]  # any labelled manifest will do
    logs: list[str] = []
    again = Demo(out, "smoke", threads=2, real_manifest=real, log=logs.append).run()
    assert sum(line.strip().startswith("measuring ") for line in logs) == 3  # another key: measured anew
    for key in ("teacher", "student_kd", "student_ctc"):
        assert again[key]["wer_real"] == pytest.approx(again[key]["wer"])
    assert "real-speech WER" in (out / "REPORT.md").read_text()


def test_another_plan_in_the_same_folder_is_refused(smoke):
    out, _, _ = smoke
    with pytest.raises(DemoError, match="--force"):
        Demo(out, "quick", log=lambda m: None).run()


def test_missing_real_manifest_is_refused(tmp_path):
    with pytest.raises(DemoError, match="not found"):
        Demo(tmp_path, "smoke", real_manifest=tmp_path / "nope.jsonl")


def test_unknown_plan_is_refused():
    with pytest.raises(DemoError, match="unknown demo plan"):
        DemoPlan.named("huge")


def _without(d: dict, fields) -> dict:
    d = json.loads(json.dumps(d))
    for section, key in fields:
        d[section].pop(key)
    return d


@pytest.mark.parametrize("name", PLANS)
def test_the_two_students_differ_by_the_kd_section_only(name):
    """The no-KD baseline is only a baseline if it trains on the same batches for the same steps."""
    plan = DemoPlan.named(name)
    kd, ctc = (plan.stages[s].to_dict() for s in ("student_kd", "student_ctc"))
    assert kd["kd"]["weights"]["feature"]["value"] > 0 and kd["kd"]["layer_map"]
    for d in (kd, ctc):
        d.pop("kd")
        d["run"].pop("out_dir")
    assert kd == ctc
    assert plan.cache_layers == tuple(sorted(set(plan.stages["student_kd"].kd.layer_map.values())))


@pytest.mark.parametrize("name", PLANS)
def test_a_stage_file_replays_the_stage_of_the_default_folder(name):
    """`asrkd train --config recipes/demo/<plan>/<stage>.yaml` trains what the demo trains in
    runs/demo[-<plan>] (the CLI's default folder), on that folder's data, into its replay/ folder."""
    folder = {"default": "runs/demo"}.get(name, f"runs/demo-{name}")
    demo = Demo(RECIPES.parents[1] / folder, name, threads=1, log=lambda m: None)
    outputs = {"cache": {"cache": str(demo.out / "cache")},
               "teacher": {"checkpoint": str(demo.out / "runs" / "teacher" / "checkpoints" / "best")}}
    for stage in TRAINING_STAGES:
        replay = TrainConfig.from_yaml(RECIPES / name / f"{stage}.yaml")
        placed = demo.train_config(stage, outputs=outputs if stage == "student_kd" else None)
        assert replay.run.out_dir == str(demo.out / "replay" / stage)
        out_dir_and_threads = [("run", "out_dir"), ("run", "threads")]
        assert _without(replay.to_dict(), out_dir_and_threads) == _without(placed.to_dict(), out_dir_and_threads)


def test_the_fingerprint_ignores_the_folder_and_sees_every_setting(tmp_path):
    plan = DemoPlan.named("smoke")
    a, b = Demo(tmp_path / "a", plan), Demo(tmp_path / "b", plan)
    assert a.plan.fingerprint() == b.plan.fingerprint()
    for section, key in PLACED_FIELDS:
        assert key not in plan.to_dict()["stages"]["student_kd"][section]
    folder = tmp_path / "smoke"
    shutil.copytree(RECIPES / "smoke", folder)
    for name in ("teacher.yaml", "student_ctc.yaml", "student_kd.yaml"):
        shutil.copy(RECIPES / name, tmp_path / name)
    assert DemoPlan.from_folder(folder).fingerprint() == plan.fingerprint()
    with open(folder / "teacher.yaml", "a") as f:
        f.write("augment:\n  noise_prob: 0.5\n")
    assert DemoPlan.from_folder(folder).fingerprint() != plan.fingerprint()


@pytest.mark.parametrize("edit, message", [
    ("export:\n  formats: [onnx]\n  windos: [5.0]\n", r"plan.yaml: export: unknown key\(s\) \['windos'\]"),
    ("export:\n  formats: [onyx]\n", r"plan.yaml: export: unknown format"),
    ("synth:\n  task: digits\n  train: {n: 0, seed: 1}\n  dev: {n: 1, seed: 2}\n  test: {n: 1, seed: 3}\n",
     r"plan.yaml: synth.train must be"),
])
def test_plan_file_errors_name_the_file_and_key(tmp_path, edit, message):
    folder = tmp_path / "smoke"
    shutil.copytree(RECIPES / "smoke", folder)
    for name in ("teacher.yaml", "student_ctc.yaml", "student_kd.yaml"):
        shutil.copy(RECIPES / name, tmp_path / name)
    raw = yaml.safe_load((folder / "plan.yaml").read_text())
    raw.update(yaml.safe_load(edit))
    (folder / "plan.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(DemoError, match=message):
        DemoPlan.from_folder(folder)


def _fake_report(tmp_path: Path) -> dict:
    def model(params, wer, rtf):
        return {"checkpoint": "x", "params": params, "wer": wer, "cer": wer / 3, "rtf_1thread": rtf,
                "gflops_per_audio_second": params / 1e7, "run_dir": str(tmp_path / f"run{params}")}

    for params, steps in ((7_500_000, 30), (750_000, 40)):
        run = tmp_path / f"run{params}"
        run.mkdir()
        rows = ["step,loss,ctc,lr,grad_norm,audio_sec_per_sec,epoch,dev_wer,dev_cer"]
        rows += [f"{s},{100 / s},{90 / s},0.001,1.0,20.0,0,," for s in range(1, steps)]
        rows += [f"{steps},,,,,,,{0.5},{0.2}", f"{2 * steps},,,,,,,{0.2},{0.1}"]
        (run / "train_log.csv").write_text("\n".join(rows) + "\n")

    def art(fmt, prec, wer, rtf, size, status="ok"):
        return {"format": fmt, "precision": prec, "status": status, "wer": wer, "cer": None,
                "agreement": 1.0 if wer is not None else None, "rtf_1thread": rtf,
                "rtf_all_threads": rtf, "size_bytes": size, "reason": None if status == "ok" else "needs macOS",
                "load_seconds": 0.1, "path": "p"}

    return {
        "demo": {"plan": {"name": "test"}, "stage_seconds": {s: 1.0 for s in STAGES},
                 "data": {"train": {"utterances": 10, "audio_seconds": 20.0, "voices": 5},
                          "test": {"utterances": 4, "audio_seconds": 8.0, "voices": 2}},
                 "cache": "c", "real_manifest": None},
        "teacher": model(7_500_000, 0.05, 0.05),
        "student_kd": model(750_000, 0.10, 0.01),
        "student_ctc": model(750_000, 0.14, 0.01),
        "export": {"gate": {"max_wer_increase": 1.0, "passed": True},
                   "artifacts": [art("onnx", "fp32", 0.10, 0.005, 3_000_000),
                                 art("tflite", "int8", 0.11, 0.004, 1_000_000),
                                 art("coreml", "fp16", None, None, 1_500_000, "not_run")]},
    }


def test_plots_and_markdown_from_a_report(tmp_path):
    report = _fake_report(tmp_path)
    paths = plots.demo_plots(report, tmp_path / "plots")
    assert set(paths) == {"pareto", "training", "sizes"}
    assert all(_is_png(p) for p in paths.values())
    loss, dev = plots.read_train_log(tmp_path / "run750000")
    assert len(loss) == 39 and dev == [(40, 0.5), (80, 0.2)]
    md = render_demo_markdown(report)
    assert "10.0x fewer parameters" in md and "5.0x faster" in md
    assert "from 14.0 % (CTC only) to 10.0 % (0.71x)" in md
    assert "coreml fp16 | not_run: needs macOS" in md


def test_markdown_has_the_edge_case_table_when_the_plan_runs_the_suite(tmp_path):
    report = _fake_report(tmp_path)
    assert "## Edge cases" not in render_demo_markdown(report)

    def row(wer, agreement, empty=False):
        return {"description": "d", "utterances": 2, "audio_seconds": 2.0, "wer": None if empty else wer,
                "agreement": agreement, "non_empty": 0, "expects_empty": empty,
                "confidence": {"p10": 0.5, "median": 0.8, "p90": 0.9}}

    report["export"]["edge_cases"] = {"noise_20db": row(0.2, None), "silence_only": row(None, None, empty=True)}
    for a in report["export"]["artifacts"][:2]:
        a["edge_cases"] = {"noise_20db": row(0.25, 0.5), "silence_only": row(None, 1.0, empty=True)}
    md = render_demo_markdown(report)
    assert "## Edge cases (the KD student and its artifacts, test set)" in md
    assert "| condition | PyTorch WER | confidence | fallback % | onnx fp32 | tflite int8 |" in md
    assert "| noise_20db | 20.00 | 0.800 | – | 25.00 (50.00) | 25.00 (50.00) |" in md
    assert "| silence_only | 0 of 2 not empty |" in md
    assert md.index("## Edge cases") < md.index("## Training")


def test_pareto_front():
    pts = [(1.0, 10.0), (0.5, 20.0), (2.0, 5.0), (2.0, 12.0), (0.5, 25.0)]
    assert plots.pareto_points(pts) == [1, 0, 2]


@pytest.mark.slow
def test_cli_demo_quick(tmp_path):
    """The README's `asrkd demo --quick`, end to end (about 6 minutes on 2 cores)."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "quick"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "asrkd.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for key in ("teacher", "student_kd", "student_ctc"):
        assert MODEL_KEYS <= set(report[key])
    formats = {a["format"] for a in report["export"]["artifacts"]}
    assert formats == {"coreml", "tflite", "onnx", "executorch", "sherpa-onnx"}
    # Everything but Core ML (macOS only) ran in its runtime.
    assert all(a["status"] == "ok" for a in report["export"]["artifacts"] if a["format"] != "coreml")
    assert "report:" in proc.stdout


def test_markdown_says_the_students_trained_side_by_side_only_when_they_did(tmp_path):
    report = _fake_report(tmp_path)
    report["demo"]["plan"]["parallel_students"] = True
    side_by_side = "The CTC-only student trains in a second process"
    assert side_by_side in render_demo_markdown(report)  # a report of before the run recorded it
    report["demo"]["parallel_students"] = False  # --threads 1: one after the other
    assert side_by_side not in render_demo_markdown(report)
    report["demo"]["parallel_students"] = True
    assert side_by_side in render_demo_markdown(report)
