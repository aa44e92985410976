"""An input error ends an asrkd command with one line `asrkd <command>: <what, where>` and status 2;
`--debug` / ASRKD_DEBUG=1 shows the traceback instead."""

import pytest

from asrkd.cli import main
from asrkd.config import ConfigError
from asrkd.errors import AsrkdError


def test_a_config_with_an_unknown_key_is_one_line_and_status_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim: {lr: 0.001, lrr: 2}\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asrkd train: {cfg}: optim: unknown key(s) ['lrr']")
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_missing_manifest_names_the_subcommand(tmp_path, capsys):
    assert main(["manifest", "filter", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asrkd manifest filter: ") and "nope.jsonl" in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(tmp_path, monkeypatch, how):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim: {lrr: 2}\n")
    argv = ["train", "--config", str(cfg)]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("ASRKD_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(argv)


def test_every_input_error_class_derives_from_asrkd_error():
    from asrkd.audio import AudioError
    from asrkd.cache import CacheError, StaleCacheError
    from asrkd.checkpoint import CheckpointError
    from asrkd.data import ManifestError
    from asrkd.decoding import LexiconError
    from asrkd.kd import KDSettingError
    from asrkd.losses import FrameRateError, VocabularyMismatchError
    from asrkd.text import TokenizerFileError, UnknownCharactersError

    for cls in (AudioError, CacheError, StaleCacheError, CheckpointError, ConfigError, ManifestError,
                LexiconError, KDSettingError, FrameRateError, VocabularyMismatchError, TokenizerFileError,
                UnknownCharactersError):
        assert issubclass(cls, AsrkdError) and issubclass(cls, ValueError), cls


@pytest.mark.parametrize(("flag", "value", "why"), [("--max-batch-seconds", "nan", "a finite number > 0"),
                                                    ("--max-batch-seconds", "inf", "a finite number > 0"),
                                                    ("--shard-size", "0", "> 0")])
def test_a_count_or_length_must_be_positive_and_finite(flag, value, why, capsys):
    with pytest.raises(SystemExit) as e:
        main(["cache", "build", "--teacher", "t", "--manifest", "m.jsonl", "--out", "o", flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: must be {why}, got {value}" in capsys.readouterr().err
