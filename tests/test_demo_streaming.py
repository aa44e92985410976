"""The demo's streaming student (plans with a student_stream.yaml): the plan files, the stage
and its measurement on a tiny corpus and cache, and its rows in the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_demo import _fake_report, _without
from test_distill import corpus, teacher_ckpt  # noqa: F401

from asrkd.cache import build_cache
from asrkd.config import TrainConfig
from asrkd.demo import Demo, DemoPlan, render_demo_markdown, summary_table
from asrkd.demo.plan import RECIPES, STREAMING_STAGE
from asrkd.demo.stages import (
    PIPELINE,
    STREAMING,
    STREAMING_ARTIFACT,
    _measure_streaming,
    _measured,
    pipeline,
    stream_export,
    student_stream,
)
from asrkd.teacher import CheckpointTeacher


@pytest.mark.parametrize("name", ["default", "quick"])
def test_the_streaming_student_is_the_kd_student_made_streaming(name):
    """Same data, steps, seed and KD terms as the KD student: only the model and its front end differ."""
    plan = DemoPlan.named(name)
    assert plan.streaming and pipeline(plan) == (*PIPELINE[:-1], *STREAMING, PIPELINE[-1])
    stream, kd = (plan.stages[s].to_dict() for s in (STREAMING_STAGE, "student_kd"))
    assert stream["model"]["preset"] == "student-stream" and stream["frontend"]["normalize"] == "none"
    for d in (stream, kd):
        for key in ("model", "frontend"):
            d.pop(key)
        d["run"].pop("out_dir")
    assert stream == kd
    # Its stage file replays the stage of the plan's default folder, as the other stages' do.
    folder = {"default": "runs/demo"}.get(name, f"runs/demo-{name}")
    demo = Demo(RECIPES.parents[1] / folder, name, threads=1, log=lambda m: None)
    outputs = {"cache": {"cache": str(demo.out / "cache")},
               "teacher": {"checkpoint": str(demo.out / "runs" / "teacher" / "checkpoints" / "best")}}
    replay = TrainConfig.from_yaml(RECIPES / name / f"{STREAMING_STAGE}.yaml")
    placed = demo.train_config(STREAMING_STAGE, outputs=outputs)
    assert replay.run.out_dir == str(demo.out / "replay" / STREAMING_STAGE)
    fields = [("run", "out_dir"), ("run", "threads")]
    assert _without(replay.to_dict(), fields) == _without(placed.to_dict(), fields)


def test_the_smoke_plan_has_no_streaming_student():
    plan = DemoPlan.named("smoke")
    assert not plan.streaming and pipeline(plan) == PIPELINE


def test_streaming_stages_train_export_and_measure_latency(corpus, teacher_ckpt, tmp_path):  # noqa: F811
    """The stages on the smoke plan with a streaming student (two blocks, for a quicker export):
    6 utterances, a random teacher."""
    pytest.importorskip("onnxruntime")
    plan_dir = tmp_path / "recipes" / "smoke"
    shutil.copytree(RECIPES / "smoke", plan_dir)
    for name in ("teacher.yaml", "student_ctc.yaml", "student_kd.yaml", "student_stream.yaml"):
        shutil.copy(RECIPES / name, plan_dir.parent / name)
    (plan_dir / "student_stream.yaml").write_text(
        "base: ../student_stream.yaml\nmodel: {overrides: {n_layers: 2}}\noptim: {epochs: 1, warmup_steps: 5}\n"
        "kd: {layer_map: {1: 0}}\n")
    demo = Demo(tmp_path / "demo", DemoPlan.from_folder(plan_dir), threads=1, log=lambda m: None)
    assert demo.plan.streaming and demo.plan.cache_layers == (0, 1)
    for split in ("train", "dev", "test"):
        demo.manifests[split] = corpus
    cache = tmp_path / "cache"
    build_cache(CheckpointTeacher(teacher_ckpt), [corpus], cache, hidden_layers=[0, 1], progress=False)
    outputs = {"cache": {"cache": str(cache)}, "teacher": {"checkpoint": str(teacher_ckpt)}}

    trained = student_stream(demo, outputs)
    assert Path(trained["checkpoint"]).is_dir()
    config = json.loads((Path(trained["checkpoint"]) / "config.json").read_text())
    assert config["model"]["causal"] and config["frontend"]["normalize"] == "none"
    outputs[STREAMING_STAGE] = trained
    exported = stream_export(demo, outputs)
    bundle = Path(exported["bundle"])
    assert json.loads((bundle / "contract.json").read_text())["streaming"]["chunk_frames"] == 8
    figures = _measured(demo, STREAMING_STAGE, trained["checkpoint"], lambda d, c: _measure_streaming(d, c, bundle))
    artifact, latency = figures["artifact"], figures["latency"]
    assert (artifact["format"], artifact["precision"], artifact["status"]) == (*STREAMING_ARTIFACT, "ok")
    assert figures["latency_of"] == " ".join(STREAMING_ARTIFACT)
    assert latency["utterances"] == 6 and latency["chunk_samples"] == 8 * 4 * 160
    assert latency["final"]["median"] > 0 and figures["rtf_1thread"] == latency["rtf"]["median"]
    assert (figures["chunk_size"], figures["left_chunks"]) == (8, 8) and 0 <= figures["wer"]
    assert (demo.stage_file(f"measure_{STREAMING_STAGE}")).is_file()


def test_report_rows_of_the_streaming_student(tmp_path):
    report = _fake_report(tmp_path)
    assert "Streaming student" not in render_demo_markdown(report)  # a plan without one
    latency = {"chunk_seconds": 0.32, "utterances": 4, "no_token": 1,
               "first_partial": {"median": 0.3514, "p95": 0.52}, "final": {"median": 0.012, "p95": 0.02},
               "chunk_compute": {"median": 0.0031, "p95": 0.006}, "rtf": {"median": 0.02, "p95": 0.03}}
    artifact = {"format": "onnx-stream", "precision": "int8", "status": "ok", "reason": None, "wer": 0.21,
                "cer": 0.11, "agreement": 0.99, "size_bytes": 2_040_000}
    report[STREAMING_STAGE] = {"checkpoint": "s", "params": 750_000, "wer": 0.2, "cer": 0.1, "chunk_size": 8,
                               "left_chunks": 8, "artifact": artifact, "rtf_1thread": 0.02, "latency": latency,
                               "latency_of": "onnx-stream int8"}
    md = render_demo_markdown(report)
    assert "## Streaming student" in md
    assert "| streaming student 320 ms (PyTorch) | reference | 20.0 | - | - | - | - | - |" in md
    assert ("| onnx-stream int8 | ok | 21.0 | 351 (520) (1 of 4 without a token) | 12 (20) | 3.1 | 0.0200 | 2.04 |"
            in md)
    table = summary_table(report)
    assert table[-2].startswith("streaming student 320 ms") and "first partial" not in table[-2]
    assert table[-1].startswith("onnx-stream int8") and "first partial 351 (520) ms" in table[-1]
    # an artifact that did not run: the latency is the PyTorch model's, on its row
    report[STREAMING_STAGE].update(artifact={**artifact, "status": "failed", "wer": None, "size_bytes": None},
                                   latency_of="pytorch")
    md = render_demo_markdown(report)
    assert "| streaming student 320 ms (PyTorch) | reference | 20.0 | 351 (520) (1 of 4 without a token) |" in md
    assert "| onnx-stream int8 (failed) | failed | - | - | - | - | - | - |" in md
