"""The commands that consume a manifest check it first, as `asrkd manifest check` does, from
file headers only (issue 18 finding 3): a missing or unreadable file, a ``duration`` that cuts the
audio (0.4x took a WER from 31 % to 81 % without a word), a truncated WAV. They refuse it naming
FILE:LINE and the fix, or (eval, by default) name each bad line, score the rest and exit 2."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from asrkd.audio import TruncatedAudioWarning, load_audio, wav_truncation, write_wav
from asrkd.cli import main
from asrkd.contract import SAMPLE_RATE
from asrkd.data import ManifestError, Utterance, check_manifest, write_manifest
from asrkd.data.preflight import preflight
from tests.test_bad_items import random_model_and_noise


def _truncate(wav: Path) -> None:
    """Cut a WAV's bytes in half, keeping its header: what a copy that stopped early leaves."""
    data = wav.read_bytes()
    wav.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """A random checkpoint, and a manifest of five lines: good, missing audio, a duration 0.4x
    the audio's, a truncated WAV, good."""
    root = tmp_path_factory.mktemp("preflight")
    ckpt, wavs = random_model_and_noise(root, 4)  # half a second each
    _truncate(wavs[3])
    utts = [
        Utterance(str(wavs[0]), "one", 0.5, utt_id="good0"),
        Utterance(str(root / "missing.wav"), "two", 0.5, utt_id="missing"),
        Utterance(str(wavs[1]), "three", 0.2, utt_id="cut"),
        Utterance(str(wavs[3]), "four", 0.5, utt_id="truncated"),
        Utterance(str(wavs[2]), "five", 0.5, utt_id="good2"),
    ]
    write_manifest(root / "m.jsonl", utts)
    return ckpt, root / "m.jsonl", wavs


def test_a_truncated_wav_is_found_from_its_header_and_the_reader_warns(corpus):
    _, manifest, wavs = corpus
    assert wav_truncation(wavs[0]) is None
    why = wav_truncation(wavs[3])
    assert why.startswith("truncated: the header declares 8000 sample frames, the file holds 3989")
    with pytest.warns(TruncatedAudioWarning, match=f"{wavs[3]}: truncated"):
        assert load_audio(wavs[3]).shape == (3989,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(wavs[0])  # a whole file: no warning
    problems = {(p.line, p.kind) for p in check_manifest(manifest)}
    assert (4, "truncated_audio") in problems  # `asrkd manifest check` names it too


def test_preflight_sets_the_bad_lines_aside_with_where_and_why(corpus):
    _, manifest, _ = corpus
    checked = preflight(manifest)
    assert [u.utt_id for u in checked.utterances] == ["good0", "good2"] and checked.lines == [1, 5]
    assert [(b.where, b.kind) for b in checked.bad] == [
        (f"{manifest}:2", "missing_audio"),
        (f"{manifest}:3", "duration_mismatch"),
        (f"{manifest}:4", "truncated_audio"),
    ]
    assert "duration 0.200 s but the audio is 0.500 s" in checked.bad[1].reason
    assert [u.utt_id for u in preflight(manifest, limit=1).utterances] == ["good0"]


def test_eval_names_each_bad_line_scores_the_rest_and_exits_2(corpus, tmp_path, capsys):
    ckpt, manifest, _ = corpus
    out_json = tmp_path / "eval.json"
    assert main(["eval", str(ckpt), "--manifest", str(manifest), "--json", str(out_json)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"asrkd eval: warning: {manifest}:3: duration 0.200 s but the audio is 0.500 s" in err
    assert f"asrkd eval: warning: {manifest}:4: " in err and "truncated" in err
    assert "asrkd eval: 2 utterance(s) scored from audio that does not match its manifest line" in err
    assert json.loads(out_json.read_text())["skipped"] == 1  # the missing file, as before

    assert main(["eval", str(ckpt), "--manifest", str(manifest), "--on-bad-audio", "error"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asrkd eval: {manifest}:2: {manifest.parent / 'missing.wav'} does not exist")
    assert "pass --on-bad-audio skip" in err


def test_cache_build_and_export_refuse_before_writing(corpus, tmp_path, capsys):
    ckpt, manifest, _ = corpus
    assert main(["cache", "build", "--teacher", str(ckpt), "--manifest", str(manifest),
                 "--out", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err.startswith(f"asrkd cache build: {manifest}:2: ")
    assert not (tmp_path / "cache").exists()

    assert main(["export", str(ckpt), "--eval-manifest", str(manifest), "--out", str(tmp_path / "bundle"),
                 "--formats", "onnx", "--quantize", "fp32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asrkd export: {manifest}:2: ") and "2 more bad audio line(s)" in err
    report = json.loads((tmp_path / "bundle" / "report.json").read_text())  # the error report CI reads
    assert report["error"].startswith(f"{manifest}:2: ") and report["artifacts"] == []
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["REPORT.md", "report.json"]


def test_a_clean_manifest_passes_every_command_s_preflight(tmp_path):
    wav = tmp_path / "a.wav"
    write_wav(wav, np.zeros(SAMPLE_RATE, np.float32))
    write_manifest(tmp_path / "m.jsonl", [Utterance(str(wav), "one", 1.0)])
    checked = preflight(tmp_path / "m.jsonl")
    assert checked.bad == [] and len(checked.utterances) == 1
    with pytest.raises(ManifestError, match="no such manifest"):
        preflight(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match=f"^{tmp_path / 'empty.jsonl'}: no utterances"):
        preflight(tmp_path / "empty.jsonl")
