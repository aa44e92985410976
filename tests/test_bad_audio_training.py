"""One bad audio line must not lose a training run (issue 18 finding 2): ``data.on_bad_audio``.

``error`` (the default) refuses the manifest before the run folder is written, naming FILE:LINE
and the fix; ``skip`` leaves such lines out, counts them and lists them in the run folder's
``skipped.jsonl``, and so does a file that goes bad while the run is on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from asrkd.audio import AudioError, write_wav
from asrkd.config import TrainConfig
from asrkd.contract import SAMPLE_RATE
from asrkd.data import ManifestError, Utterance, write_manifest
from asrkd.train import Trainer


def _corpus(root: Path) -> tuple[Path, dict[str, Path]]:
    """A manifest of six half-second noise clips, lines 2, 4 and 6 bad: a missing file, a
    duration 0.4x the audio's, and a 0.05 s clip whose text CTC cannot fit in 1 output frame."""
    rng = np.random.default_rng(0)
    wavs = {}
    for name, seconds in (("a", 0.5), ("b", 0.5), ("c", 0.5), ("d", 0.5), ("e", 0.05)):
        wavs[name] = root / f"{name}.wav"
        write_wav(wavs[name], 0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE)).astype(np.float32))
    utts = [
        Utterance(str(wavs["a"]), "one two", 0.5, utt_id="ok1"),
        Utterance(str(root / "gone.wav"), "one two", 0.5, utt_id="missing"),
        Utterance(str(wavs["b"]), "one two", 0.5, utt_id="ok2"),
        Utterance(str(wavs["c"]), "one two", 0.2, utt_id="cut"),  # the audio is 0.5 s
        Utterance(str(wavs["d"]), "one two", 0.5, utt_id="ok3"),
        Utterance(str(wavs["e"]), "one two", 0.05, utt_id="short"),
    ]
    write_manifest(root / "train.jsonl", utts)
    return root / "train.jsonl", wavs


def _config(manifest: Path, out: Path, on_bad_audio: str | None) -> TrainConfig:
    data = {"train": [str(manifest)], "max_batch_seconds": 1.0, "num_workers": 0}
    if on_bad_audio is not None:
        data["on_bad_audio"] = on_bad_audio
    return TrainConfig.from_dict({
        "data": data,
        "model": {"preset": "student-xs"},
        "augment": {"speed_factors": [1.0], "noise_prob": 0.0},
        "optim": {"max_steps": 3, "warmup_steps": 1},
        "run": {"out_dir": str(out), "threads": 1, "checkpoint_every": 100, "progress": False},
    })


def test_error_refuses_the_manifest_before_the_run_folder_is_written(tmp_path):
    manifest, _ = _corpus(tmp_path)
    with pytest.raises(ManifestError) as e:
        Trainer(_config(manifest, tmp_path / "run", None))
    message = str(e.value)
    assert message.startswith(f"{manifest}:2: {tmp_path / 'gone.wav'} does not exist; fix the path")
    assert f"1 more bad audio line(s): {manifest}:4" in message  # the 0.4x duration
    assert "set data.on_bad_audio: skip" in message
    assert not (tmp_path / "run").exists()

    # Once the audio lines are fixed, the clip too short for CTC is refused too (it needs the model).
    lines = manifest.read_text().splitlines()
    fixed = [line for i, line in enumerate(lines, 1) if i not in (2, 4)]
    manifest.write_text("\n".join(fixed) + "\n")
    with pytest.raises(ManifestError, match=f"^{manifest}:4: 7 CTC frames needed for the text, 0.050 s gives 1"):
        Trainer(_config(manifest, tmp_path / "run", "error"))
    assert not (tmp_path / "run").exists()


def test_skip_leaves_bad_lines_out_counts_and_lists_them(tmp_path, capsys):
    manifest, _ = _corpus(tmp_path)
    trainer = Trainer(_config(manifest, tmp_path / "run", "skip"))
    assert [u.utt_id for u in trainer.parts.train_utts] == ["ok1", "ok2", "ok3"]
    out = capsys.readouterr().out
    skipped = tmp_path / "run" / "skipped.jsonl"
    assert (f"data.on_bad_audio: skip: left out 3 bad audio line(s) (ctc_infeasible 1, duration_mismatch 1, "
            f"missing_audio 1); listed in {skipped}") in out
    items = [json.loads(line) for line in skipped.read_text().splitlines()]
    assert [(i["manifest"], i["line"], i["utt_id"], i["kind"]) for i in items] == [
        (str(manifest), 2, "missing", "missing_audio"),
        (str(manifest), 4, "cut", "duration_mismatch"),
        (str(manifest), 6, "short", "ctc_infeasible"),
    ]
    assert items[0]["path"] == str(tmp_path / "gone.wav")
    assert "duration 0.200 s but the audio is 0.500 s" in items[1]["reason"]
    assert trainer.fit() is not None


def test_audio_that_goes_bad_after_the_preflight_is_skipped_and_listed(tmp_path, capsys):
    manifest, wavs = _corpus(tmp_path)
    trainer = Trainer(_config(manifest, tmp_path / "run", "skip"))
    wavs["b"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")  # after the check, before training
    trainer.fit()
    assert f"skipped ok2: {wavs['b']}: unreadable or corrupt audio" in capsys.readouterr().err
    items = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert [(i["line"], i["utt_id"], i["kind"]) for i in items][-1] == (3, "ok2", "unreadable_audio")
    assert len(items) == 4
    # With data.on_bad_audio: error the same is one error naming the file, not a worker's traceback.
    write_wav(wavs["b"], np.zeros(SAMPLE_RATE // 2, np.float32))
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()[:3:2]))
    trainer = Trainer(_config(manifest, tmp_path / "run2", "error"))
    wavs["b"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    with pytest.raises(AudioError) as e:
        trainer.fit()
    assert str(e.value).startswith(f"{wavs['b']}: unreadable or corrupt audio")
    assert "Traceback" not in str(e.value) and "data.on_bad_audio: skip" in str(e.value)


def test_a_resumed_run_still_lists_what_its_first_part_skipped(tmp_path):
    manifest, wavs = _corpus(tmp_path)
    config = _config(manifest, tmp_path / "run", "skip")
    config.run.checkpoint_every = 1
    trainer = Trainer(config)
    good = wavs["b"].read_bytes()
    wavs["b"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    trainer.fit()
    wavs["b"].write_bytes(good)  # restored before the resume: the record of the skip stays
    config.optim.max_steps = 5
    Trainer(config, resume=True).fit()
    items = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert [(i["utt_id"], i["kind"]) for i in items] == [
        ("missing", "missing_audio"), ("cut", "duration_mismatch"), ("short", "ctc_infeasible"),
        ("ok2", "unreadable_audio"),
    ]
