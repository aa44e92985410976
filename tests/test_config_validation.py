"""Config values are type- and range-checked when a YAML loads (issue 18, finding 4)."""

from __future__ import annotations

import pytest

from asrkd.config import ConfigError, TrainConfig


def _load(tmp_path, text: str) -> TrainConfig:
    path = tmp_path / "train.yaml"
    path.write_text(text, encoding="utf-8")
    return TrainConfig.from_yaml(path)


def test_on_bad_audio_defaults_to_error_and_accepts_skip(tmp_path):
    assert TrainConfig().data.on_bad_audio == "error"
    assert _load(tmp_path, "data:\n  on_bad_audio: skip\n").data.on_bad_audio == "skip"


def test_on_bad_audio_rejects_an_unknown_value(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.yaml: data: on_bad_audio 'ignore' is not one of \['error', 'skip'\]"):
        _load(tmp_path, "data:\n  on_bad_audio: ignore\n")
