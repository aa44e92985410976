"""Config values are type- and range-checked when a YAML loads (issue 18, finding 4): a bad value
is a ConfigError ``FILE: section.key: what is wrong (allowed: ...)`` before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from asrkd.cli import main
from asrkd.config import ConfigError, OptimConfig, TrainConfig, _Loader

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _load(tmp_path, text: str) -> TrainConfig:
    path = tmp_path / "train.yaml"
    path.write_text(text, encoding="utf-8")
    return TrainConfig.from_yaml(path)


def test_on_bad_audio_defaults_to_error_and_accepts_skip(tmp_path):
    assert TrainConfig().data.on_bad_audio == "error"
    assert _load(tmp_path, "data:\n  on_bad_audio: skip\n").data.on_bad_audio == "skip"


def test_on_bad_audio_rejects_an_unknown_value(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.yaml: data\.on_bad_audio: 'ignore' is not allowed "
                                          r"\(allowed: one of 'error', 'skip'\)"):
        _load(tmp_path, "data:\n  on_bad_audio: ignore\n")


def test_yaml_1_2_floats_without_a_dot_are_numbers(tmp_path):
    cfg = _load(tmp_path, "optim:\n  lr: 3e-3\n  weight_decay: 1E-4\nkd:\n  temperature: 2e0\n")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.kd.temperature) == (3e-3, 1e-4, 2.0)


@pytest.mark.parametrize("text, message", [
    ("optim: {max_steps: '4'}", r"optim\.max_steps: '4' is a string \(allowed: a whole number >= 1, or null: "),
    ("optim: {max_steps: 0}", r"optim\.max_steps: 0 is out of range \(allowed: a whole number >= 1, or null: "),
    ("optim: {epochs: 2.5}", r"optim\.epochs: 2\.5 is a number \(allowed: a whole number >= 1\)"),
    ("optim: {lr: -1e-3}", r"optim\.lr: -0\.001 is out of range \(allowed: a number > 0\)"),
    ("optim: {lr: '0.1'}", r"optim\.lr: '0\.1' is a string \(allowed: a number > 0\)"),
    ("optim: {lr: .nan}", r"optim\.lr: nan is not a finite number"),
    ("optim: {schedule: linear}", r"optim\.schedule: 'linear' is not allowed \(allowed: one of 'cosine', 'constant'\)"),
    ("optim: {betas: [0.9, 1.5]}", r"optim\.betas: \[0\.9, 1\.5\] is out of range \(allowed: a list of numbers in \[0, 1\)\)"),
    ("optim: {betas: [0.9]}", r"optim\.betas: \[0\.9\] has 1 values \(allowed: \[beta1, beta2\]\)"),
    ("data: {num_workers: -1}", r"data\.num_workers: -1 is out of range \(allowed: a whole number >= 0\)"),
    ("data: {max_batch_seconds: 0}", r"data\.max_batch_seconds: 0 is out of range \(allowed: a number > 0\)"),
    ("data: {cache_audio: 'yes'}", r"data\.cache_audio: 'yes' is a string \(allowed: true or false\)"),
    ("run: {seed: -1}", r"run\.seed: -1 is out of range \(allowed: a whole number >= 0\)"),
    ("run: {log_every: 0}", r"run\.log_every: 0 is out of range"),
    ("run: {threads: true}", r"run\.threads: True is true or false \(allowed: a whole number >= 1, or null: "),
    ("augment: {noise_prob: 1.5}", r"augment\.noise_prob: 1\.5 is out of range \(allowed: a number in \[0, 1\]\)"),
    ("augment: {speed_factors: [0.9, fast]}", r"augment\.speed_factors: \[0\.9, 'fast'\] holds 'fast', a string"),
    ("kd: {blank_mode: drop}", r"kd\.blank_mode: 'drop' is not allowed \(allowed: one of 'all', 'downweight'"),
    ("kd: {temperature: 0}", r"kd\.temperature: 0 is out of range \(allowed: a number > 0\)"),
    ("kd: {blank_weight: 2}", r"kd\.blank_weight: 2 is out of range \(allowed: a number in \[0, 1\]\)"),
    ("kd: {layer_map: {a: 1}}", r"kd\.layer_map: \{'a': 1\} holds 'a', a string \(allowed: a mapping of whole numbers"),
    ("kd: {weights: {frame: true}}", r"kd\.weights\.frame: True is true or false \(allowed: a number >= 0 \(a constant "),
    ("kd: {weights: {frame: -0.5}}", r"kd\.weights\.frame\.value: -0\.5 is out of range \(allowed: a number >= 0\)"),
    ("kd: {pseudo_label: {min_confidence: 1.1}}", r"kd\.pseudo_label\.min_confidence: 1\.1 is out of range"),
    ("model: {dynamic_chunks: {max_chunk_size: 0}}", r"model\.dynamic_chunks\.max_chunk_size: 0 is out of range"),
    ("model: {dynamic_chunks: {foo: 1}}", r"model\.dynamic_chunks: unknown key\(s\) \['foo'\]"),
    ("optim: 4", r"optim: 4 is a whole number \(allowed: a mapping of OptimConfig keys\)"),
    ("model: {preset: student-nope}", r"model\.preset: 'student-nope' is not allowed \(allowed: one of 'student', "),
    ("model: {overrides: {n_layers: 0}}", r"model\.overrides: invalid ConformerConfig: n_layers=0 must be >= 1"),
    ("model: {overrides: {vocab_size: 5}}", r"model\.overrides: \['vocab_size'\] cannot be overridden"),
    ("frontend: {hop_lenght: 160}", r"frontend: unknown FrontendConfig field\(s\) \['hop_lenght'\]"),
])
def test_a_bad_value_is_named_with_its_file_and_key_and_what_is_allowed(tmp_path, text, message):
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'train.yaml'}: {message}"):
        _load(tmp_path, text + "\n")


def test_values_set_in_python_are_checked_too():
    with pytest.raises(ConfigError, match=r"^config: optim\.max_steps: '4' is a string"):
        TrainConfig.from_dict({"optim": {"max_steps": "4"}})
    with pytest.raises(ConfigError, match=r"^lr: -1 is out of range"):
        OptimConfig(lr=-1)


@pytest.mark.parametrize("command", ["train", "distill"])
def test_a_bad_value_ends_the_command_before_it_writes_anything(tmp_path, capsys, command):
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {{train: [train.jsonl]}}\noptim: {{lr: -1}}\nrun: {{out_dir: {out}}}\n")
    assert main([command, "--config", str(config)]) == 2
    assert f"asrkd {command}: {config}: optim.lr: -1 is out of range" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.yaml"]


def _train_configs() -> list[Path]:
    """Every YAML under recipes/ that is a training config (the demo's plan.yaml files are not)."""
    return [p for p in sorted(RECIPES.rglob("*.yaml")) if p.name != "plan.yaml"]


def test_every_recipe_config_loads_to_the_values_its_yaml_holds():
    """The YAML 1.2 float rule and the value checks change no value of a shipped config."""
    configs = _train_configs()
    assert len(configs) >= 30
    for path in configs:
        cfg = TrainConfig.from_yaml(path)
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg, path
        text = path.read_text(encoding="utf-8")
        assert yaml.load(text, Loader=_Loader) == yaml.safe_load(text), path


def test_kd_teacher_whisper_specs_stay_specs_and_only_their_folder_is_a_path(tmp_path):
    def teacher(spec):
        return _load(tmp_path, f"kd:\n  teacher: '{spec}'\n  weights: {{sequence: 1.0}}\n").kd.teacher

    assert teacher("whisper") == "whisper"
    assert teacher("whisper?numbers=digits&beam_size=5") == "whisper?numbers=digits&beam_size=5"
    assert teacher("whisper:models/tiny?beam_size=5") == f"whisper:{(tmp_path / 'models/tiny').resolve()}?beam_size=5"
    assert teacher("runs/teacher") == str((tmp_path / "runs/teacher").resolve())


def test_kd_cache_takes_one_folder_or_a_list_each_resolved_against_the_file(tmp_path):
    assert _load(tmp_path, "kd:\n  cache: runs/a\n").kd.cache == str((tmp_path / "runs/a").resolve())
    assert _load(tmp_path, "kd:\n  cache: [runs/a, /abs/b]\n").kd.cache == [str((tmp_path / "runs/a").resolve()),
                                                                              "/abs/b"]
    with pytest.raises(ConfigError, match="kd.cache must be a path or a list of paths"):
        _load(tmp_path, "kd:\n  cache: [runs/a, 3]\n")
