"""The bad-input battery (issue 18 acceptance, docs/ERRORS.md).

Every fault below is one bad input (an audio file, a manifest, a config, a checkpoint, a cache, an
export option or an output folder) handed to the `asrkd` command that consumes it, in a fresh
process as a user would. For each the battery asserts three things:

- no traceback on stderr (an input error is one line, ``asrkd <command>: ...``);
- the exit status: 2 bad input (refused, or bad items named and skipped), 1 a failed check,
  0 handled (the item is read, or skipped and counted as the config asks);
- every file that existed before the command is byte-identical afterwards (the tree of the case
  folder and of the shared fixtures is hashed before and after), save those the fault names as
  the command's own output.

The heavy fixtures (a random student-xs checkpoint, three noise WAVs, a manifest, a teacher cache)
are built once for the module. A few representative faults run in the default suite; the whole
battery is ``pytest -m slow tests/test_bad_input_battery.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from safetensors.torch import load_file, save_file

from asrkd.audio import write_wav
from asrkd.cache import build_cache
from asrkd.checkpoint import write_checksums
from asrkd.contract import SAMPLE_RATE
from asrkd.data import Utterance, write_manifest
from asrkd.teacher import CheckpointTeacher
from tests.test_bad_items import random_model_and_noise


@dataclass
class World:
    """What every fault starts from (read-only for the faults: its tree is hashed too)."""

    root: Path
    ckpt: Path
    wavs: list[Path]
    manifest: Path
    cache: Path

    def config(self, case: Path, **sections) -> dict:
        """A 2-step student-xs training config writing into ``case/run``; ``sections`` update it."""
        cfg = {
            "data": {"train": [str(self.manifest)], "max_batch_seconds": 10.0, "num_workers": 0},
            "model": {"preset": "student-xs", "overrides": {"dropout": 0.0}},
            "augment": {"speed_factors": [1.0], "noise_prob": 0.0, "freq_masks": 0, "time_masks": 0},
            "optim": {"lr": 3e-3, "warmup_steps": 1, "schedule": "constant", "max_steps": 2},
            "run": {"out_dir": str(case / "run"), "threads": 1, "checkpoint_every": 1000, "progress": False},
        }
        for section, values in sections.items():
            cfg.setdefault(section, {}).update(values)
        return cfg

    def bundle(self) -> Path:
        """An ONNX fp32 bundle of the checkpoint, exported when a fault first asks for it."""
        folder = self.root / "bundle"
        if not folder.exists():
            from mobile_export.export import ExportOptions, export_bundle

            export_bundle(self.ckpt, folder, self.manifest, ExportOptions(
                formats=("onnx",), precisions=("fp32",), rtf_repeats=0, cold_start=False))
        return folder

    def kd_config(self, case: Path, **kd) -> dict:
        """`config` with a kd: section distilling from the module's teacher cache."""
        return self.config(case, kd={"cache": str(self.cache), "weights": {"ctc": 1.0, "frame": 1.0}, **kd})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("battery")
    ckpt, wavs = random_model_and_noise(root, 3)
    manifest = root / "good.jsonl"
    write_manifest(manifest, [Utterance(str(w), "one two", 0.5, utt_id=f"u{i}") for i, w in enumerate(wavs)])
    cache = root / "cache"
    build_cache(CheckpointTeacher(ckpt), [manifest], cache, top_k=4, shard_size=2, progress=False)
    return World(root, ckpt, wavs, manifest, cache)


# ------------------------------------------------------------------------------ the faults
@dataclass(frozen=True)
class Fault:
    """One bad input: ``make(world, case)`` writes it into the empty folder ``case`` and returns
    the command line after ``asrkd`` (str or bytes items), which must end with ``status`` and
    print ``says``."""

    name: str
    area: str
    make: Callable[[World, Path], list]
    status: int
    says: str = ""
    fast: bool = False


FAULTS: list[Fault] = []


def fault(area: str, status: int, says: str = "", *, fast: bool = False):
    """Register the decorated ``make`` function as a fault of ``area`` expecting ``status``."""

    def register(make):
        FAULTS.append(Fault(make.__name__, area, make, status, says, fast))
        return make

    return register


def _noise(seconds: float = 0.5, rate: int = SAMPLE_RATE, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(1)
    shape = (round(seconds * rate),) if channels == 1 else (round(seconds * rate), channels)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def _transcribe(w: World, *paths) -> list:
    return ["transcribe", str(w.ckpt), str(w.wavs[0]), *paths]


def _manifest(case: Path, *lines: str, name: str = "m.jsonl", prefix: bytes = b"") -> Path:
    path = case / name
    path.write_bytes(prefix + "".join(line + "\n" for line in lines).encode())
    return path


def _line(audio, text: str = "one two", duration=0.5, **extra) -> str:
    return json.dumps({"audio_filepath": str(audio), "text": text, "duration": duration, **extra})


def _yaml(case: Path, cfg: dict | str, name: str = "train.yaml") -> Path:
    path = case / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _copy_ckpt(w: World, case: Path) -> Path:
    return Path(shutil.copytree(w.ckpt, case / "ckpt"))


# -- audio: `asrkd transcribe` names the bad file (2) or reads it (0)
@fault("audio", 2, fast=True)
def corrupt_wav(w, case):
    (case / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio" + bytes(range(256)))
    return _transcribe(w, case / "corrupt.wav")


@fault("audio", 2)
def empty_file(w, case):
    (case / "empty.wav").write_bytes(b"")
    return _transcribe(w, case / "empty.wav")


@fault("audio", 2)
def wav_header_without_samples(w, case):
    sf.write(case / "none.wav", np.zeros(0, np.float32), SAMPLE_RATE, subtype="PCM_16")
    return _transcribe(w, case / "none.wav")


@fault("audio", 0, "truncated")
def truncated_wav(w, case):
    data = w.wavs[1].read_bytes()
    (case / "cut.wav").write_bytes(data[: len(data) // 2])  # the header still promises every sample
    return _transcribe(w, case / "cut.wav")


@fault("audio", 0)
def wrong_sample_rate(w, case):
    write_wav(case / "8k.wav", _noise(rate=8000), 8000)  # resampled to the model's rate
    return _transcribe(w, case / "8k.wav")


@fault("audio", 0)
def stereo(w, case):
    write_wav(case / "stereo.wav", _noise(channels=2))  # channels averaged
    return _transcribe(w, case / "stereo.wav")


@fault("audio", 2)
def nan_samples(w, case):
    wav = _noise()
    wav[100:200] = np.nan
    sf.write(case / "nan.wav", wav, SAMPLE_RATE, subtype="FLOAT")
    return _transcribe(w, case / "nan.wav")


@fault("audio", 2)
def inf_samples(w, case):
    wav = _noise()
    wav[-1] = np.inf
    sf.write(case / "inf.wav", wav, SAMPLE_RATE, subtype="FLOAT")
    return _transcribe(w, case / "inf.wav")


@fault("audio", 0)
def non_utf8_file_name(w, case):
    name = os.fsencode(case) + b"/caf\xe9.wav"
    with open(name, "wb") as f:
        f.write(w.wavs[1].read_bytes())
    return [*_transcribe(w), name]


@fault("audio", 2)
def missing_audio_file(w, case):
    return _transcribe(w, case / "missing.wav")


@fault("audio", 2)
def directory_as_audio(w, case):
    (case / "folder.wav").mkdir()
    return _transcribe(w, case / "folder.wav")


@fault("audio", 2)
def text_file_as_audio(w, case):
    (case / "notes.wav").write_text("not audio, a note\n")
    return _transcribe(w, case / "notes.wav")


@fault("audio", 0)
def ten_samples(w, case):
    write_wav(case / "tiny.wav", _noise(10 / SAMPLE_RATE))  # shorter than one output frame
    return _transcribe(w, case / "tiny.wav")


@fault("audio", 0)
def silence(w, case):
    write_wav(case / "silence.wav", np.zeros(SAMPLE_RATE, np.float32))
    return _transcribe(w, case / "silence.wav")


# -- manifests: `asrkd eval` (and the commands that read one) name the line
@fault("manifest", 2, fast=True)
def malformed_json_line(w, case):
    m = _manifest(case, _line(w.wavs[0]), '{"audio_filepath": "a.wav", "text": "x"')
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 2)
def missing_text_key(w, case):
    m = _manifest(case, json.dumps({"audio_filepath": str(w.wavs[0]), "duration": 0.5}))
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 2)
def duration_of_wrong_type(w, case):
    m = _manifest(case, _line(w.wavs[0], duration="half a second"))
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 2)
def text_of_wrong_type(w, case):
    m = _manifest(case, _line(w.wavs[0], text=12))
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 2)
def manifest_line_is_a_list(w, case):
    m = _manifest(case, json.dumps([str(w.wavs[0]), "one two", 0.5]))
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 2)
def manifest_names_a_missing_file(w, case):  # skipped and counted, the rest is scored
    m = _manifest(case, _line(w.wavs[0]), _line(case / "gone.wav"), _line(w.wavs[1]))
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 2)
def duration_much_shorter_than_the_audio(w, case):  # would cut the audio to 0.2 s
    m = _manifest(case, _line(w.wavs[0], duration=0.2), _line(w.wavs[1]))
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 2)
def negative_duration(w, case):
    m = _manifest(case, _line(w.wavs[0], duration=-1.0))
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 0)
def byte_order_mark(w, case):  # a manifest saved by a Windows editor
    m = _manifest(case, _line(w.wavs[0]), _line(w.wavs[1]), prefix=b"\xef\xbb\xbf")
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 2)
def manifest_not_utf8(w, case):
    m = case / "latin1.jsonl"
    line = {"audio_filepath": str(w.wavs[0]), "text": "caf\u00e9", "duration": 0.5}
    m.write_bytes(json.dumps(line, ensure_ascii=False).encode("latin-1") + b"\n")
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 2)
def empty_manifest(w, case):
    return ["eval", str(w.ckpt), "--manifest", str(_manifest(case))]


@fault("manifest", 2)
def missing_manifest(w, case):
    return ["eval", str(w.ckpt), "--manifest", str(case / "none.jsonl")]


@fault("manifest", 2)
def empty_reference_text(w, case):
    m = _manifest(case, _line(w.wavs[0], text=""), _line(w.wavs[1]))
    return ["eval", str(w.ckpt), "--manifest", str(m)]


@fault("manifest", 1)
def manifest_check_finds_faults(w, case):
    m = _manifest(case, _line(w.wavs[0]), "{not json", _line(case / "gone.wav"), _line(w.wavs[1], duration=3.0))
    return ["manifest", "check", str(m)]


@fault("manifest", 1)
def manifest_check_of_a_missing_manifest(w, case):
    return ["manifest", "check", str(case / "none.jsonl")]


@fault("manifest", 2)
def train_manifest_with_unreadable_audio(w, case):  # data.on_bad_audio: error (the default)
    m = _manifest(case, _line(w.wavs[0]), _line(w.wavs[1]), _line(case / "gone.wav"))
    return ["train", "--config", str(_yaml(case, w.config(case, data={"train": [str(m)]})))]


@fault("manifest", 0, "left out 1 bad audio line")
def train_skips_and_counts_unreadable_audio(w, case):  # data.on_bad_audio: skip
    (case / "corrupt.wav").write_bytes(b"RIFF....WAVE" + bytes(64))
    m = _manifest(case, _line(w.wavs[0]), _line(case / "corrupt.wav"), _line(w.wavs[1]))
    cfg = w.config(case, data={"train": [str(m)], "on_bad_audio": "skip"})
    return ["train", "--config", str(_yaml(case, cfg))]


@fault("manifest", 2)
def cache_build_manifest_with_missing_audio(w, case):
    m = _manifest(case, _line(w.wavs[0]), _line(case / "gone.wav"))
    return ["cache", "build", "--teacher", str(w.ckpt), "--manifest", str(m), "--out", str(case / "c")]


# -- configs: refused at load, naming the file and key, before anything is written
def _train_with(w: World, case: Path, **sections) -> list:
    return ["train", "--config", str(_yaml(case, w.config(case, **sections)))]


@fault("config", 2, fast=True)
def unknown_key(w, case):
    return _train_with(w, case, optim={"warmup": 3})


@fault("config", 0)
def lr_written_3e_3(w, case):  # YAML 1.1 reads 3e-3 as the string "3e-3"
    text = yaml.safe_dump(w.config(case)).replace("lr: 0.003", "lr: 3e-3")
    assert "lr: 3e-3" in text
    return ["train", "--config", str(_yaml(case, text))]


@fault("config", 2)
def max_steps_as_a_string(w, case):
    return _train_with(w, case, optim={"max_steps": "4"})


@fault("config", 2)
def max_steps_zero(w, case):
    return _train_with(w, case, optim={"max_steps": 0})


@fault("config", 2)
def negative_num_workers(w, case):
    return _train_with(w, case, data={"num_workers": -1})


@fault("config", 2)
def negative_learning_rate(w, case):
    return _train_with(w, case, optim={"lr": -0.1})


@fault("config", 2)
def noise_probability_above_one(w, case):
    return _train_with(w, case, augment={"noise_prob": 1.5})


@fault("config", 2)
def unknown_preset(w, case):
    return _train_with(w, case, model={"preset": "student-xxl"})


@fault("config", 2)
def unknown_on_bad_audio(w, case):
    return _train_with(w, case, data={"on_bad_audio": "ignore"})


@fault("config", 2)
def train_manifest_missing(w, case):
    return _train_with(w, case, data={"train": [str(case / "none.jsonl")]})


@fault("config", 2)
def yaml_syntax_error(w, case):
    return ["train", "--config", str(_yaml(case, "optim:\n  lr: [0.1\n"))]


@fault("config", 2)
def config_is_a_list(w, case):
    return ["train", "--config", str(_yaml(case, "- data\n- model\n"))]


@fault("config", 2)
def missing_config_file(w, case):
    return ["train", "--config", str(case / "none.yaml")]


@fault("config", 2)
def kd_weight_of_wrong_type(w, case):
    cfg = w.kd_config(case)
    cfg["kd"]["weights"]["frame"] = "strong"
    return ["distill", "--config", str(_yaml(case, cfg))]


# -- checkpoints: named with their file
@fault("checkpoint", 2, fast=True)
def truncated_weights(w, case):
    ckpt = _copy_ckpt(w, case)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    return ["transcribe", str(ckpt), str(w.wavs[0])]


@fault("checkpoint", 2)
def random_bytes_as_weights(w, case):
    ckpt = _copy_ckpt(w, case)
    size = (ckpt / "model.safetensors").stat().st_size
    (ckpt / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(size))
    return ["eval", str(ckpt), "--manifest", str(w.manifest)]


@fault("checkpoint", 2)
def missing_config_json(w, case):
    ckpt = _copy_ckpt(w, case)
    (ckpt / "config.json").unlink()
    return ["transcribe", str(ckpt), str(w.wavs[0])]


@fault("checkpoint", 2)
def config_json_not_json(w, case):
    ckpt = _copy_ckpt(w, case)
    (ckpt / "config.json").write_text("{ not json")
    return ["transcribe", str(ckpt), str(w.wavs[0])]


@fault("checkpoint", 2)
def foreign_vocabulary(w, case):  # same size, other symbols: the text would be garbage
    ckpt = _copy_ckpt(w, case)
    config = json.loads((ckpt / "config.json").read_text())
    tokens = config["tokenizer"]["tokens"]
    config["tokenizer"]["tokens"] = tokens[:1] + tokens[1:][::-1]
    (ckpt / "config.json").write_text(json.dumps(config))
    return ["transcribe", str(ckpt), str(w.wavs[0])]


@fault("checkpoint", 2)
def missing_checkpoint(w, case):
    return ["transcribe", str(case / "no-such-run"), str(w.wavs[0])]


@fault("checkpoint", 2)
def truncated_weights_for_export(w, case):
    ckpt = _copy_ckpt(w, case)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:100])
    return ["export", str(ckpt), "--eval-manifest", str(w.manifest), "--out", str(case / "bundle"),
            "--formats", "onnx", "--quantize", "fp32"]


@fault("checkpoint", 2)
def truncated_teacher_for_cache_build(w, case):
    ckpt = _copy_ckpt(w, case)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:-10])
    return ["cache", "build", "--teacher", str(ckpt), "--manifest", str(w.manifest), "--out", str(case / "c")]


# -- caches: `asrkd distill` refuses a cache it cannot trust before it trains
def _copy_cache(w: World, case: Path) -> Path:
    return Path(shutil.copytree(w.cache, case / "cache"))


@fault("cache", 2, fast=True)
def truncated_cache_shard(w, case):
    cache = _copy_cache(w, case)
    shard = max((p for p in cache.rglob("*") if p.is_file() and p.suffix == ".npy"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return ["distill", "--config", str(_yaml(case, w.kd_config(case, cache=str(cache))))]


@fault("cache", 2)
def cache_of_another_teacher(w, case):
    other = _copy_ckpt(w, case)  # the same model with other weights, named as kd.teacher
    weights = load_file(other / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, other / "model.safetensors")
    write_checksums(other)
    return ["distill", "--config", str(_yaml(case, w.kd_config(case, teacher=str(other))))]


@fault("cache", 2)
def cache_of_other_data(w, case):
    m = _manifest(case, _line(w.wavs[2]), _line(w.wavs[0]))
    cfg = w.kd_config(case)
    cfg["data"]["train"] = [str(m)]
    return ["distill", "--config", str(_yaml(case, cfg))]


@fault("cache", 2)
def missing_cache_folder(w, case):
    return ["distill", "--config", str(_yaml(case, w.kd_config(case, cache=str(case / "none"))))]


@fault("cache", 2)
def cache_build_force_over_user_files(w, case):
    (case / "mine").mkdir()
    (case / "mine" / "notes.txt").write_text("my notes\n")
    write_wav(case / "mine" / "take1.wav", _noise())
    return ["cache", "build", "--teacher", str(w.ckpt), "--manifest", str(w.manifest),
            "--out", str(case / "mine"), "--force"]


@fault("cache", 2)
def cache_build_over_a_stale_cache(w, case):
    cache = _copy_cache(w, case)
    m = _manifest(case, _line(w.wavs[1]))
    return ["cache", "build", "--teacher", str(w.ckpt), "--manifest", str(m), "--out", str(cache)]


@fault("cache", 2)
def cache_build_top_k_zero(w, case):
    return ["cache", "build", "--teacher", str(w.ckpt), "--manifest", str(w.manifest), "--out",
            str(case / "c"), "--top-k", "0"]


# -- export options: refused before anything is converted (an earlier bundle stays untouched)
def _export(w: World, case: Path, *options: str, out: Path | None = None, manifest: Path | None = None) -> list:
    return ["export", str(w.ckpt), "--eval-manifest", str(manifest or w.manifest),
            "--out", str(out or case / "bundle"), *options]


@fault("export", 2, fast=True)
def format_typo(w, case):
    return _export(w, case, "--formats", "onnxx")


@fault("export", 2)
def unknown_precision(w, case):
    return _export(w, case, "--formats", "onnx", "--quantize", "int3")


@fault("export", 2)
def windows_not_numbers(w, case):
    return _export(w, case, "--windows", "two,five")


@fault("export", 2)
def negative_window(w, case):
    return _export(w, case, "--windows", "-1,5")


@fault("export", 2)
def negative_wer_gate(w, case):
    return _export(w, case, "--max-wer-increase", "-1")


@fault("export", 2)
def calibration_without_a_target_precision(w, case):
    return _export(w, case, "--calibration-manifest", str(w.manifest))


@fault("export", 2)
def target_precision_above_one(w, case):
    return _export(w, case, "--fallback-target-precision", "1.5")


@fault("export", 2)
def verify_only_without_a_bundle(w, case):
    (case / "bundle").mkdir()
    return _export(w, case, "--verify-only")


@fault("export", 2)
def export_of_a_missing_checkpoint(w, case):
    return ["export", str(case / "no-such-run"), "--eval-manifest", str(w.manifest), "--out", str(case / "b"),
            "--formats", "onnx", "--quantize", "fp32"]


@fault("export", 2)
def noise_folder_without_audio(w, case):
    (case / "noise").mkdir()
    (case / "noise" / "readme.txt").write_text("no audio here\n")
    return _export(w, case, "--formats", "onnx", "--quantize", "fp32", "--edge-cases",
                   "--edge-case-noise", str(case / "noise"))


@fault("export", 2)
def missing_eval_manifest(w, case):
    return _export(w, case, "--formats", "onnx", "--quantize", "fp32", manifest=case / "none.jsonl")


@fault("export", 2)
def eval_manifest_with_corrupt_audio(w, case):
    (case / "corrupt.wav").write_bytes(b"RIFF....WAVE" + bytes(64))
    m = _manifest(case, _line(w.wavs[0]), _line(case / "corrupt.wav"))
    return _export(w, case, "--formats", "onnx", "--quantize", "fp32", manifest=m)


# -- bundles: `asrkd monitor` on a student it cannot run
@fault("bundle", 2)
def truncated_artifact(w, case):
    bundle = Path(shutil.copytree(w.bundle(), case / "bundle"))
    onnx = bundle / "model.fp32.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    return ["monitor", str(bundle), "--teacher", str(w.ckpt), "--manifest", str(w.manifest), "--out", str(case / "m")]


@fault("bundle", 2)
def artifact_missing_from_its_bundle(w, case):
    bundle = Path(shutil.copytree(w.bundle(), case / "bundle"))
    (bundle / "model.fp32.onnx").unlink()
    return ["monitor", str(bundle), "--teacher", str(w.ckpt), "--manifest", str(w.manifest), "--out", str(case / "m")]


@fault("bundle", 2)
def student_is_neither_bundle_nor_checkpoint(w, case):
    (case / "notes").mkdir()
    (case / "notes" / "todo.txt").write_text("my notes\n")
    return ["monitor", str(case / "notes"), "--teacher", str(w.ckpt), "--manifest", str(w.manifest),
            "--out", str(case / "m")]


# -- output folders: a folder the command did not make is never emptied or mixed into
@fault("output", 2, fast=True)
def export_into_a_foreign_folder(w, case):
    (case / "bundle").mkdir()
    (case / "bundle" / "notes.txt").write_text("my notes\n")
    (case / "bundle" / "other.onnx").write_bytes(b"another model")
    return _export(w, case, "--formats", "onnx", "--quantize", "fp32")


@fault("output", 2)
def export_out_is_a_file(w, case):
    (case / "bundle").write_text("a file, not a folder\n")
    return _export(w, case, "--formats", "onnx", "--quantize", "fp32")


@fault("output", 2)
def train_out_is_a_file(w, case):
    (case / "run").write_text("a file, not a folder\n")
    return _train_with(w, case)


@fault("output", 2)
def train_out_holds_user_files(w, case):
    (case / "run").mkdir()
    (case / "run" / "notes.txt").write_text("my notes\n")
    return _train_with(w, case)


@fault("output", 2)
def cache_build_out_is_a_file(w, case):
    (case / "c").write_text("a file\n")
    return ["cache", "build", "--teacher", str(w.ckpt), "--manifest", str(w.manifest), "--out", str(case / "c")]


@fault("output", 2)
def eval_json_is_a_folder(w, case):
    (case / "result.json").mkdir()
    return ["eval", str(w.ckpt), "--manifest", str(w.manifest), "--json", str(case / "result.json")]


@fault("output", 2)
def manifest_filter_out_is_a_folder(w, case):
    (case / "subset").mkdir()
    return ["manifest", "filter", str(w.manifest), "--out", str(case / "subset")]


# ------------------------------------------------------------------------------ the test
def tree_hashes(*roots: Path) -> dict[bytes, str]:
    """SHA-256 of every file under ``roots``, by its path (bytes: names need not be UTF-8)."""
    hashes = {}
    for root in roots:
        for folder, _, files in os.walk(os.fsencode(root)):
            for name in files:
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    hashes[path] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def run_asrkd(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    """``asrkd ARGV`` in a fresh process on one thread, stdout/stderr as bytes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    env.pop("ASRKD_DEBUG", None)
    cmd = [sys.executable, "-m", "asrkd.cli", *argv]
    return subprocess.run([os.fsencode(a) for a in cmd], capture_output=True, cwd=cwd, env=env, timeout=600)


def test_the_battery_has_forty_distinct_faults_in_every_area():
    assert len({f.name for f in FAULTS}) == len(FAULTS) >= 40
    areas = {f.area for f in FAULTS}
    assert areas == {"audio", "manifest", "config", "checkpoint", "cache", "export", "bundle", "output"}
    assert {f.area for f in FAULTS if f.fast} == areas - {"bundle"}  # the default suite samples the rest


@pytest.mark.parametrize(
    "case_fault", [pytest.param(f, id=f"{f.area}-{f.name}", marks=() if f.fast else pytest.mark.slow)
                   for f in FAULTS])
def test_bad_input(case_fault: Fault, world: World, tmp_path: Path):
    case = tmp_path / "case"
    case.mkdir()
    argv = case_fault.make(world, case)
    before = tree_hashes(world.root, case)
    proc = run_asrkd(argv, cwd=case)
    err = proc.stderr.decode("utf-8", "replace")
    command = " ".join(a if isinstance(a, str) else os.fsdecode(a) for a in argv[:3])
    assert "Traceback" not in err, f"asrkd {command}\n{err}"
    assert proc.returncode == case_fault.status, f"asrkd {command}: status {proc.returncode}\n{err}"
    if proc.returncode == 2:
        assert "asrkd " in err, err  # the line that says what is wrong
    assert case_fault.says in err + proc.stdout.decode("utf-8", "replace"), err
    after = tree_hashes(world.root, case)
    changed = [os.fsdecode(p) for p, h in before.items() if after.get(p) != h]
    assert not changed, f"asrkd {command} changed or removed {changed}"
