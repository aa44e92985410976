"""A damaged checkpoint is named, never loaded as garbage (issue 18 finding 5): each checkpoint
records the size and sha256 of its weights and trainer state (``checksums.json``); loading
checks them, and ``--resume`` passes over a damaged newest checkpoint for the one before it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from asrkd.audio import write_wav
from asrkd.checkpoint import (
    CHECKSUM_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    list_step_checkpoints,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from asrkd.config import TrainConfig
from asrkd.contract import SAMPLE_RATE
from asrkd.data import Utterance, write_manifest
from asrkd.features import FrontendConfig
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.text import CharTokenizer
from asrkd.train import Trainer


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    tok = CharTokenizer.default_english()
    torch.manual_seed(0)
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size))
    return save_checkpoint(tmp_path / "ckpt", model, FrontendConfig(), tok, trainer_state={"step": 3})


def test_the_record_lists_size_and_sha256_of_the_binary_files(checkpoint):
    record = json.loads((checkpoint / CHECKSUM_FILE).read_text())["files"]
    assert set(record) == {MODEL_FILE, STATE_FILE}
    assert record[MODEL_FILE]["size"] == (checkpoint / MODEL_FILE).stat().st_size
    load_checkpoint(checkpoint)  # a whole checkpoint passes
    assert load_trainer_state(checkpoint) == {"step": 3}


def test_truncated_weights_are_named_with_the_fix(checkpoint):
    weights = checkpoint / MODEL_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(checkpoint)
    assert str(e.value).startswith(f"{weights}: {len(data) // 2} bytes (cut short), but {len(data)} were written")
    assert "copy the checkpoint folder again" in str(e.value)


def test_changed_bytes_of_the_same_size_fail_the_sha256(checkpoint):
    weights = checkpoint / MODEL_FILE
    weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(checkpoint)
    state = checkpoint / STATE_FILE
    state.write_bytes(state.read_bytes()[:10])
    with pytest.raises(CheckpointError, match=f"{state}: 10 bytes"):
        load_trainer_state(checkpoint)


def test_an_older_checkpoint_without_the_record_loads_and_its_damage_is_still_named(checkpoint):
    (checkpoint / CHECKSUM_FILE).unlink()
    load_checkpoint(checkpoint)
    weights = checkpoint / MODEL_FILE
    weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))
    with pytest.raises(CheckpointError, match=f"^{weights}: not a readable safetensors file"):
        load_checkpoint(checkpoint)


def _config(tmp_path: Path) -> TrainConfig:
    rng = np.random.default_rng(0)
    utts = []
    for i in range(4):
        write_wav(tmp_path / f"a{i}.wav", 0.1 * rng.standard_normal(SAMPLE_RATE // 2).astype(np.float32))
        utts.append(Utterance(str(tmp_path / f"a{i}.wav"), "one two", 0.5, utt_id=f"u{i}"))
    write_manifest(tmp_path / "train.jsonl", utts)
    return TrainConfig.from_dict({
        "data": {"train": [str(tmp_path / "train.jsonl")], "max_batch_seconds": 1.0, "num_workers": 0},
        "model": {"preset": "student-xs"},
        "augment": {"speed_factors": [1.0], "noise_prob": 0.0},
        "optim": {"max_steps": 6, "warmup_steps": 2},
        "run": {"out_dir": str(tmp_path / "run"), "threads": 1, "checkpoint_every": 2, "keep_last": 3,
                "progress": False},
    })


def test_resume_passes_over_a_damaged_newest_checkpoint_and_stays_bit_exact(tmp_path, capsys):
    config = _config(tmp_path)
    Trainer(config).fit()
    ckpts = list_step_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step-0000002", "step-0000004", "step-0000006"]
    uninterrupted = (ckpts[-1] / MODEL_FILE).read_bytes()
    uninterrupted_state = (ckpts[-1] / STATE_FILE).read_bytes()
    (ckpts[-1] / MODEL_FILE).write_bytes(uninterrupted[:1000])  # a copy cut short

    trainer = Trainer(config, resume=True)
    out = capsys.readouterr().out
    assert f"--resume: {ckpts[-1] / MODEL_FILE}: 1000 bytes (cut short)" in out
    assert f"resumed from {ckpts[-2]} (step 4" in out and "instead of the damaged later one(s)" in out
    trainer.fit()
    assert (ckpts[-1] / MODEL_FILE).read_bytes() == uninterrupted  # steps 5 and 6 replayed exactly
    assert (ckpts[-1] / STATE_FILE).read_bytes() == uninterrupted_state  # and their trainer state, byte for byte

    for ckpt in ckpts:
        (ckpt / STATE_FILE).write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="no step checkpoint can be resumed from"):
        Trainer(config, resume=True)
    shutil.rmtree(tmp_path / "run")


def test_a_bad_section_of_config_json_is_named_with_the_file_and_key(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "tokenizer": {"type": "words"}}))
    with pytest.raises(CheckpointError, match=rf"^{checkpoint / 'config.json'}: 'tokenizer': tokenizer dict has type"):
        load_checkpoint(checkpoint)
