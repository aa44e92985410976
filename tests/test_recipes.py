"""The recipes in recipes/: every config loads, run.sh names configs that exist, and the FSDD KD
ablation changes the loss only, as its RESULTS.md says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asrkd.config import TrainConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FSDD = RECIPES / "fsdd" / "conf"
CONFIGS = sorted(p for p in RECIPES.rglob("*.yaml") if p.name != "plan.yaml")  # plan.yaml: tests/test_demo.py


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(RECIPES)) for p in CONFIGS])
def test_every_recipe_config_loads(path):
    TrainConfig.from_yaml(path)


def test_fsdd_run_sh_runs_every_stage_config_in_order():
    text = (RECIPES / "fsdd" / "run.sh").read_text(encoding="utf-8")
    named = re.findall(r"--config \$conf/(\S+\.yaml)", text)
    assert named == ["teacher_stage1.yaml", "teacher.yaml", "teacher_ft.yaml", "student_stage1.yaml",
                     "student_ctc.yaml", "student_kd.yaml"]
    assert sorted(named) == sorted(p.name for p in FSDD.glob("*.yaml"))
    # the KD student reads the recipe's last teacher, through the cache that stage 5 builds
    kd = TrainConfig.from_yaml(FSDD / "student_kd.yaml").kd
    teacher_ft = TrainConfig.from_yaml(FSDD / "teacher_ft.yaml")
    assert kd.teacher == str(Path(teacher_ft.run.out_dir) / "checkpoints" / "best")
    layers = " ".join(str(t) for t in sorted(set(kd.layer_map.values())))
    assert f"--teacher $exp/{Path(teacher_ft.run.out_dir).name}/checkpoints/best --out $exp/{Path(kd.cache).name}" in text
    assert f"--hidden-layers {layers}" in text


@pytest.mark.parametrize("name", sorted(p.stem for p in (FSDD / "ablations").glob("kd_*.yaml")
                                        if "unlabelled" not in p.stem))
def test_fsdd_kd_ablations_change_the_loss_only(name):
    def setup(path: Path) -> dict:
        d = TrainConfig.from_yaml(path).to_dict()
        for section, key in (("kd", "weights"), ("kd", "layer_map"), ("run", "out_dir")):
            d[section].pop(key)
        return d

    assert setup(FSDD / "ablations" / f"{name}.yaml") == setup(FSDD / "student_kd.yaml")


def test_fsdd_streaming_table_rows_differ_in_streaming_only():
    """run_streaming.sh runs every conf/streaming config in order, and each streaming student's
    config is its full-context twin's but for the model's streaming settings (RESULTS.md's
    streaming table compares them at the same data, steps and front end)."""
    conf = FSDD / "streaming"
    text = (RECIPES / "fsdd" / "run_streaming.sh").read_text(encoding="utf-8")
    named = re.findall(r"--config \$(?:rows_)?conf/(\S+\.yaml)", text)
    named += [f"{row}_kd.yaml" for row in re.findall(r"^  distil (\w+)$", text, re.MULTILINE)]
    assert named == ["student_stage1.yaml", "stream_stage1.yaml", "student_ctc.yaml", "stream_ctc.yaml",
                     "student_kd.yaml", "stream_kd.yaml"]
    assert sorted(named) == sorted(p.name for p in conf.glob("*.yaml"))
    assert "--config $kd_conf/$1_kd.yaml" in text and "--config $kd_conf/$1_stage1.yaml" in text
    # --teacher ctc: the KD rows distil from stage 3's student through the cache stage 5 builds
    kd = TrainConfig.from_yaml(conf / "ctc_teacher" / "stream_kd.yaml").kd
    teacher_run = Path(TrainConfig.from_yaml(conf / "student_ctc.yaml").run.out_dir)
    assert kd.teacher == str(teacher_run / "checkpoints" / "best")
    layers = " ".join(str(t) for t in sorted(set(kd.layer_map.values())))
    assert (f"--teacher $exp/{teacher_run.name}/checkpoints/best --out $exp/{Path(kd.cache).name} \\\n"
            f"      --hidden-layers {layers}") in text

    def without(path: Path, *fields: str) -> dict:
        """The resolved config of ``path`` less ``fields`` ("section" or "section.key")."""
        d = TrainConfig.from_yaml(path).to_dict()
        for field in fields:
            section, _, key = field.partition(".")
            d[section].pop(key) if key else d.pop(section)
        return d

    def setup(path: Path) -> dict:
        return without(path, "model.preset", "model.init_from", "model.dynamic_chunks", "run.out_dir")

    # --teacher fsdd: run.sh's teacher, through run.sh stage 5's cache; sequence KD (RESULTS.md)
    fsdd = TrainConfig.from_yaml(conf / "fsdd_teacher" / "student_kd.yaml").kd
    recipe = TrainConfig.from_yaml(FSDD / "student_kd.yaml").kd
    assert (fsdd.cache, fsdd.teacher) == (recipe.cache, recipe.teacher)
    assert fsdd.enabled_terms() == ["ctc", "sequence"]

    # --teacher whisper-adapt: run_whisper.sh's adapted students (stages 10, 11 and the label-free
    # stage 1 of stage 3) with the raw front end and 16 epochs; the CTC-only rows start from
    # stages 1-2 like the table's, the KD rows from their own stage 1 on the pseudo-labels
    whisper, adapt = FSDD / "whisper", conf / "whisper_adapt"

    def recipe_setup(path: Path) -> dict:
        return without(path, "model.init_from", "run.out_dir", "optim.epochs", "frontend")

    for ours, theirs in (("student_kd", "student_adapt"), ("student_ctc", "student_gt_adapt"),
                         ("student_stage1", "student_stage1")):
        assert recipe_setup(adapt / f"{ours}.yaml") == recipe_setup(whisper / f"{theirs}.yaml")
    assert TrainConfig.from_yaml(adapt / "student_kd.yaml").optim.epochs == 16
    assert TrainConfig.from_yaml(adapt / "student_ctc.yaml").optim.epochs == 16
    assert TrainConfig.from_yaml(adapt / "student_ctc.yaml").model.init_from == TrainConfig.from_yaml(
        conf / "student_ctc.yaml").model.init_from

    for folder, row in (("", "stage1"), ("", "ctc"), ("", "kd"), ("ctc_teacher", "kd"), ("fsdd_teacher", "kd"),
                        ("whisper_adapt", "stage1"), ("whisper_adapt", "ctc"), ("whisper_adapt", "kd")):
        full = TrainConfig.from_yaml(conf / folder / f"student_{row}.yaml")
        stream = TrainConfig.from_yaml(conf / folder / f"stream_{row}.yaml")
        assert (full.model.preset, stream.model.preset) == ("student", "student-stream")
        assert stream.model.dynamic_chunks.enabled
        assert full.frontend == stream.frontend == {"normalize": "none"}
        assert setup(conf / folder / f"student_{row}.yaml") == setup(conf / folder / f"stream_{row}.yaml")


def test_the_dev_speakers_untranscribed_audio_holds_no_take_of_a_dev_utterance(fsdd_dir, tmp_path):
    """run_whisper.sh stage 9: adaptation audio of the dev speaker without text, none of whose
    takes is in a dev utterance (FSDD's connected utterances are made of its isolated takes)."""
    import json
    import subprocess
    import sys

    from asrkd.data import read_manifest

    script = RECIPES / "fsdd" / "local" / "untranscribed_dev_speaker.py"
    subprocess.run([sys.executable, str(script), str(fsdd_dir), str(tmp_path), "--connected", "5"], check=True,
                   capture_output=True)
    dev = [json.loads(line) for line in (fsdd_dir / "manifests" / "fsdd_connected.jsonl").open(encoding="utf-8")]
    in_dev = {take for d in dev if d["speaker"] == "fsdd_yweweler" for take in d["components"]}
    audio, truth = read_manifest(tmp_path / "manifest.jsonl"), read_manifest(tmp_path / "transcribed.jsonl")
    assert len(audio) == 500 - len(in_dev) + 5 and all(u.text is None for u in audio)
    takes = {t for u in audio for t in u.extra["components"]}
    assert takes and not takes & in_dev and all(t.split("_")[1] == "yweweler" for t in takes)
    # the transcribed twin: the same audio, the digits the takes were recorded with
    digits = "zero one two three four five six seven eight nine".split()
    assert [u.audio_filepath for u in truth] == [u.audio_filepath for u in audio]
    for u in truth:
        assert u.text == " ".join(digits[int(t.split("_")[0])] for t in u.extra["components"])
