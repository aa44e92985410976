"""Lhotse CutSets and Hugging Face datasets as training data: the same batches as a JSONL manifest.

Each corpus is built here from WAVs the test writes, next to the JSONL manifest that says the
same thing; training from either must see identical tensors, and `asrkd manifest check` must
name the bad item of each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asrkd.audio import audio_duration, write_wav
from asrkd.builder import build_training
from asrkd.cli import main
from asrkd.config import ConfigError, KDConfig, KDWeights, TermWeight, TrainConfig
from asrkd.contract import SAMPLE_RATE
from asrkd.data import (
    AudioDataset,
    DataSource,
    ManifestError,
    SourceError,
    check_source,
    read_manifest,
    read_source,
    write_manifest,
)
from asrkd.distill import Distiller
from asrkd.train import Trainer, read_log

# (name, seconds, text); "long" is cut into two segments, the first at an offset of 0.5 s.
_FILES = [("a", 0.9, "one two"), ("b", 1.3, "three"), ("long", 3.0, None)]
_SEGMENTS = [("long-1", 0.5, 1.2, "four five"), ("long-2", 1.9, 0.8, "six")]


@pytest.fixture
def corpus(tmp_path) -> dict:
    """WAVs (tones with noise, 16 kHz), and the JSONL manifest of the utterances over them."""
    rng = np.random.default_rng(0)
    audio, lines = {}, []
    for i, (name, seconds, text) in enumerate(_FILES):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        wav = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.05 * rng.standard_normal(t.size)
        audio[name] = tmp_path / "audio" / f"{name}.wav"
        write_wav(audio[name], wav.astype(np.float32))
        if text is not None:
            lines.append({"audio_filepath": str(audio[name]), "text": text,
                          "duration": audio_duration(audio[name]), "utt_id": name})
    for utt_id, offset, duration, text in _SEGMENTS:
        lines.append({"audio_filepath": str(audio["long"]), "text": text, "duration": duration,
                      "offset": offset, "utt_id": utt_id})
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"dir": tmp_path, "audio": audio, "manifest": manifest, "lines": lines}


def _config(train, out_dir: Path, max_steps: int = 3) -> TrainConfig:
    """The smallest model; the default waveform augmentation on, so its draws are compared too."""
    return TrainConfig.from_dict({
        "data": {"train": train, "max_batch_seconds": 3.0, "num_workers": 0, "cache_audio": False},
        "model": {"preset": "student-xs", "overrides": {"dropout": 0.0}},
        "optim": {"warmup_steps": 1, "max_steps": max_steps},
        "run": {"out_dir": str(out_dir), "threads": 1, "checkpoint_every": 1000, "log_every": 1,
                "progress": False},
    })


def _batches(train, out_dir: Path) -> list[dict]:
    parts = build_training(_config(train, out_dir))
    parts.data.set_epoch(0)
    return list(parts.data)


def _assert_same_batches(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 1
    for g, w in zip(got, want, strict=True):
        for key in ("wavs", "wav_lens", "targets", "target_lens"):
            assert torch.equal(g[key], w[key]), key
        assert g["texts"] == w["texts"]


def _same_training(train, corpus, tmp_path) -> None:
    """Batches, then three optimiser steps, equal to the manifest's."""
    _assert_same_batches(_batches(train, tmp_path / "b1"), _batches([str(corpus["manifest"])], tmp_path / "b2"))
    Trainer(_config(train, tmp_path / "source")).fit()
    Trainer(_config([str(corpus["manifest"])], tmp_path / "manifest")).fit()
    losses = [[row["loss"] for row in read_log(tmp_path / run)] for run in ("source", "manifest")]
    assert len(losses[0]) == 3 and losses[0] == losses[1]


# -- Lhotse ---------------------------------------------------------------------------------------


def _cutset(corpus):
    """The manifest's utterances as Lhotse cuts over recordings of the same files."""
    lhotse = pytest.importorskip("lhotse", reason="the lhotse extra is not installed (pip install 'asrkd[lhotse]')")
    recordings = {name: lhotse.Recording.from_file(path) for name, path in corpus["audio"].items()}
    cuts = []
    for line in corpus["lines"]:
        rec = recordings[Path(line["audio_filepath"]).stem]
        start = line.get("offset", 0.0)
        sup = lhotse.SupervisionSegment(id=line["utt_id"], recording_id=rec.id, start=start,
                                        duration=line["duration"], text=line["text"], speaker="s1")
        cuts.append(lhotse.MonoCut(id=line["utt_id"], start=start, duration=line["duration"], channel=0,
                                   recording=rec, supervisions=[sup]))
    return lhotse, lhotse.CutSet.from_cuts(cuts), recordings


def test_a_lhotse_cutset_trains_on_the_same_batches_as_the_manifest(corpus, tmp_path):
    _, cuts, _ = _cutset(corpus)
    path = corpus["dir"] / "cuts.jsonl.gz"
    cuts.to_file(path)
    utts = read_source({"lhotse": str(path)})
    assert [(u.utt_id, u.offset, u.duration, u.text, u.speaker) for u in utts][2] == ("long-1", 0.5, 1.2, "four five", "s1")
    assert read_source(cuts) == utts == read_source(f"lhotse:{path}")  # an object, a mapping, a spec string
    _same_training([{"lhotse": str(path)}], corpus, tmp_path)


def test_lhotse_recordings_with_supervisions_and_mixed_with_a_manifest(corpus, tmp_path):
    lhotse, cuts, recordings = _cutset(corpus)
    lhotse.RecordingSet.from_recordings(recordings.values()).to_file(corpus["dir"] / "recordings.jsonl.gz")
    cuts.subset(first=2).to_file(corpus["dir"] / "first_two.jsonl.gz")
    sups = lhotse.SupervisionSet.from_segments([s for c in cuts for s in c.supervisions][2:])
    sups.to_file(corpus["dir"] / "supervisions.jsonl.gz")
    rest = corpus["dir"] / "rest.jsonl"
    write_manifest(rest, read_manifest(corpus["manifest"])[2:])
    # two cuts, then the two segments of "long" as a manifest: the whole manifest, in order
    _assert_same_batches(_batches([{"lhotse": str(corpus["dir"] / "first_two.jsonl.gz")}, str(rest)], tmp_path / "a"),
                         _batches([str(corpus["manifest"])], tmp_path / "b"))
    pairs = {"lhotse": str(corpus["dir"] / "recordings.jsonl.gz"),
             "supervisions": str(corpus["dir"] / "supervisions.jsonl.gz")}
    assert [(u.utt_id, u.offset, u.duration) for u in read_source(pairs)] == [
        (utt_id, offset, duration) for utt_id, offset, duration, _ in _SEGMENTS]
    unlabelled = read_source({"lhotse": pairs["lhotse"]})  # recordings alone: whole files, no text
    assert [(u.utt_id, u.text, u.duration) for u in unlabelled] == [(n, None, s) for n, s, _ in _FILES]


def test_cache_distillation_and_eval_read_a_cutset(corpus, tmp_path, capsys):
    _, cuts, _ = _cutset(corpus)
    cuts.to_file(corpus["dir"] / "cuts.jsonl.gz")
    spec = f"lhotse:{corpus['dir'] / 'cuts.jsonl.gz'}"
    teacher = Trainer(_config([str(corpus["manifest"])], tmp_path / "teacher", max_steps=1)).fit()
    assert main(["cache", "build", "--teacher", str(teacher), "--manifest", spec, "--out", str(tmp_path / "cache")]) == 0
    config = _config([{"lhotse": str(corpus["dir"] / "cuts.jsonl.gz")}], tmp_path / "student", max_steps=2)
    config.augment.speed_factors = [1.0]  # frames must line up with the cached teacher's
    config.kd = KDConfig(cache=str(tmp_path / "cache"), weights=KDWeights(frame=TermWeight(1.0)))
    Distiller(config).fit()
    assert len(read_log(tmp_path / "student")) == 2
    for manifest, out in ((spec, "source.json"), (str(corpus["manifest"]), "manifest.json")):
        assert main(["eval", str(teacher), "--manifest", manifest, "--json", str(tmp_path / out)]) == 0
    rows = [[json.loads(line) for line in (tmp_path / f"{name}.utterances.jsonl").read_text().splitlines()]
            for name in ("source", "manifest")]
    assert [[(r["utt_id"], r["ref"], r["hyp"], r["confidence"]) for r in run] for run in rows] == [
        [(r["utt_id"], r["ref"], r["hyp"], r["confidence"]) for r in rows[1]]] * 2  # the same audio in


def test_manifest_check_names_the_bad_cut(corpus, tmp_path, capsys):
    lhotse, cuts, _ = _cutset(corpus)
    lost = lhotse.Recording(id="lost", sources=[lhotse.AudioSource("file", [0], str(tmp_path / "gone.wav"))],
                            sampling_rate=SAMPLE_RATE, num_samples=SAMPLE_RATE, duration=1.0)
    remote = lhotse.Recording(id="remote", sources=[lhotse.AudioSource("url", [0], "https://x/y.wav")],
                              sampling_rate=SAMPLE_RATE, num_samples=SAMPLE_RATE, duration=1.0)
    path = tmp_path / "cuts.jsonl"
    (cuts + lhotse.CutSet.from_cuts([lost.to_cut(), remote.to_cut()])).to_file(path)
    spec = f"lhotse:{path}"
    assert main(["manifest", "check", spec]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{spec}:5: missing_audio: cut 'lost': {tmp_path / 'gone.wav'} does not exist")
    assert out[1].startswith(f"{spec}:5: missing_field: cut 'lost': no 'text'")  # unlabelled among labelled
    assert out[2].startswith(f"{spec}:6: unsupported: cut 'remote': recording 'remote' is a 'url' source")
    assert out[-1] == f"{spec}: 3 problem(s)"
    with pytest.raises(ManifestError, match=r"cut 'remote': .*'url' source.*asrkd manifest check"):
        read_source(spec)
    assert check_source({"lhotse": str(tmp_path / "none.jsonl")})[0].message.endswith("no such Lhotse manifest")


# -- Hugging Face datasets --------------------------------------------------------------------------


def _hf_dataset(corpus, audio_of=str):
    """The manifest's whole-file utterances as a Dataset with an Audio column (by path)."""
    datasets = pytest.importorskip("datasets", reason="the hf extra is not installed (pip install 'asrkd[hf]')")
    whole = [line for line in corpus["lines"] if "offset" not in line]
    table = {"audio": [audio_of(line["audio_filepath"]) for line in whole],
             "sentence": [line["text"] for line in whole], "id": [line["utt_id"] for line in whole]}
    return datasets, datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio())


def test_a_dataset_saved_to_disk_trains_on_the_same_batches_as_the_manifest(corpus, tmp_path):
    datasets, dataset = _hf_dataset(corpus)
    lines = [line for line in corpus["lines"] if "offset" not in line] * 2  # enough for two batches
    corpus["manifest"].write_text("".join(json.dumps(line) + "\n" for line in lines))
    dataset = datasets.concatenate_datasets([dataset, dataset])
    datasets.DatasetDict({"train": dataset}).save_to_disk(tmp_path / "ds")  # embeds the audio bytes
    source = {"hf": str(tmp_path / "ds"), "split": "train", "text_column": "sentence"}
    utts = read_source(source)
    assert all(u.audio is not None for u in utts)  # decoded from the dataset, never copied to disk
    assert utts[1].audio_filepath == f"{tmp_path / 'ds' / 'train'}#1" and utts[1].utt_id == "b-1"
    assert [u.duration for u in utts] == [line["duration"] for line in lines]
    _same_training([source], corpus, tmp_path)


def test_a_dataset_of_paths_reads_the_files_in_place(corpus):
    _, dataset = _hf_dataset(corpus)  # not saved: the Audio column holds paths only
    utts = read_source(DataSource("hf", dataset, {"text_column": "sentence", "id_column": "id"}))
    assert [(u.audio_filepath, u.utt_id, u.text, u.audio) for u in utts] == [
        (line["audio_filepath"], line["utt_id"], line["text"], None) for line in corpus["lines"][:2]]
    got, want = AudioDataset(utts)[1]["wav"], AudioDataset(read_manifest(corpus["manifest"]))[1]["wav"]
    assert torch.equal(got, want)


def test_manifest_check_names_the_bad_row(corpus, tmp_path, capsys):
    datasets, dataset = _hf_dataset(corpus, audio_of=lambda p: {"bytes": Path(p).read_bytes(), "path": None})
    bad = datasets.Dataset.from_dict({"audio": [{"bytes": b"not audio", "path": "x.wav"}],
                                      "sentence": ["seven"], "id": ["x"]}).cast_column("audio", datasets.Audio())
    datasets.concatenate_datasets([dataset, bad]).save_to_disk(tmp_path / "ds")
    spec = f"hf:{tmp_path / 'ds'}?text_column=sentence"
    assert main(["manifest", "check", spec]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{spec}:3: unreadable_audio: row 2: {tmp_path / 'ds'}#2: unreadable or corrupt audio")
    assert out[-1] == f"{spec}: 1 problem(s)"
    with pytest.raises(ManifestError, match="row 2: .*unreadable or corrupt audio"):
        read_source(spec)
    problems = check_source({"hf": str(tmp_path / "ds"), "text_column": "transcript"})
    assert [(p.line, p.kind) for p in problems] == [(0, "unreadable_manifest")]
    assert "no column(s) ['transcript']" in problems[0].message


# -- configs ----------------------------------------------------------------------------------------


def test_configs_take_sources_with_paths_relative_to_the_yaml(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "c.yaml").write_text(
        "data:\n  train:\n    - ../train.jsonl\n    - {lhotse: ../cuts.jsonl.gz}\n"
        "    - lhotse:../recs.jsonl.gz?supervisions=../sups.jsonl.gz\n"
        "  dev: {hf: ../ds, split: dev, text_column: null}\n")
    data = TrainConfig.from_yaml(tmp_path / "conf" / "c.yaml").data
    assert data.train == [str(tmp_path / "train.jsonl"), {"lhotse": str(tmp_path / "cuts.jsonl.gz")},
                          {"lhotse": str(tmp_path / "recs.jsonl.gz"), "supervisions": str(tmp_path / "sups.jsonl.gz")}]
    assert data.dev == {"hf": str(tmp_path / "ds"), "split": "dev", "text_column": None}
    assert TrainConfig.from_dict(TrainConfig(data=data).to_dict()).data == data  # round trip


@pytest.mark.parametrize("entry, message", [
    ("{lhotse: cuts.jsonl.gz, split: train}", r"data.train\[1\]: unknown key\(s\) \['split'\] for a lhotse source"),
    ("{hff: ds}", r"data.train\[1\]: .* names 0 source kinds; a data source is a manifest path"),
    ("{hf: [a, b]}", r"data.train\[1\]: hf: \['a', 'b'\] is not a path"),
    ("7", r"data.train\[1\] must be a manifest path or a data source mapping, got 7"),
])
def test_bad_sources_are_named_with_their_file_and_key(tmp_path, entry, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  train: [train.jsonl, {entry}]\n")
    with pytest.raises(ConfigError, match=f"^{path}: {message}"):
        TrainConfig.from_yaml(path)


def test_spec_strings_parse_and_print_back():
    src = DataSource.parse("hf:/d/ds?split=test&text_column=")
    assert (src.kind, src.location, src.options) == ("hf", "/d/ds", {"split": "test", "text_column": ""})
    assert str(src) == "hf:/d/ds?split=test&text_column=" and src.to_config()["text_column"] is None
    assert DataSource.parse("train.jsonl").to_config() == "train.jsonl"
    with pytest.raises(SourceError):
        DataSource.parse({"lhotse": "a", "hf": "b"})


def test_config_knows_the_source_prefixes_without_importing_the_data_package():
    from asrkd import config
    from asrkd.data import manifest

    assert config._SOURCE_PREFIXES == manifest.SOURCE_PREFIXES
