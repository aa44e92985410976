"""Scoring that cannot be silently wrong (issue 18, finding 3): an empty reference is not scored
but listed, a reference the model cannot spell is scored but listed, and a set with no scorable
reference stops `asrkd eval` (status 2) and fails the export gate (status 1)."""

from __future__ import annotations

import json

import pytest
from test_bad_items import random_model_and_noise

from asrkd.cli import main
from asrkd.data import Utterance, write_manifest
from asrkd.metrics import EMPTY_REFERENCE, score
from asrkd.text import CharTokenizer
from eval.report import Transcripts, compare


def test_an_empty_reference_is_listed_not_scored():
    result = score(["one two", "", "three"], ["one two", "nine nine nine nine", "three"], ["a", "b", "a"],
                   utt_ids=["u0", "u1", "u2"])
    assert result["wer"] == 0.0 and result["words"]["insertions"] == 0  # u1's words are not insertions
    assert (result["utterances"], result["scored_utterances"]) == (3, 2)
    assert result["skipped_references"] == [{"index": 1, "utt_id": "u1", "reason": EMPTY_REFERENCE}]
    assert list(result["per_speaker"]) == ["a"]  # speaker b has nothing to score


def test_with_no_scorable_reference_the_rates_are_none():
    result = score(["", " "], ["one", ""])
    assert (result["wer"], result["cer"], result["scored_utterances"]) == (None, None, 0)
    assert [s["index"] for s in result["skipped_references"]] == [0, 1]


def test_a_reference_the_model_cannot_spell_is_scored_and_listed():
    vocabulary = CharTokenizer.from_texts(["one two three"])
    result = score(["one two", "zwölf"], ["one two", "one"], vocabulary=vocabulary, utt_ids=["u0", "u1"])
    assert result["words"]["reference_length"] == 3  # both scored
    assert result["oov_references"] == [{"index": 1, "utt_id": "u1", "characters": ["z", "ö", "l", "f"]}]


def test_the_export_s_comparison_leaves_empty_references_out_of_the_gate_s_wer():
    pytorch = Transcripts([None] * 3, ["one", "two two two", "three"], [1, 1, 1])
    artifact = Transcripts([None] * 3, ["one", "", "three"], [1, 1, 1])
    refs, ids = ["one", "", "three"], ["u0", "u1", "u2"]
    reference, _ = compare(pytorch, pytorch, refs, ids, vocabulary=CharTokenizer.from_texts(["one three"]))
    candidate, _ = compare(pytorch, artifact, refs, ids)
    assert reference.wer == candidate.wer == 0.0  # PyTorch's three words on u1 are not scored
    assert reference.skipped_references == [{"index": 1, "utt_id": "u1", "reason": EMPTY_REFERENCE}]
    assert reference.oov_references == [] and candidate.agreement == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def checkpoint_and_wavs(tmp_path_factory):
    return random_model_and_noise(tmp_path_factory.mktemp("scoring"), 4)


def _manifest(path, wavs, texts):
    write_manifest(path, [Utterance(str(w), t, 0.5, utt_id=f"u{i}", speaker=f"s{i}")
                          for i, (w, t) in enumerate(zip(wavs, texts))])
    return path


def test_eval_names_empty_and_unspellable_references_and_scores_the_rest(checkpoint_and_wavs, tmp_path, capsys):
    ckpt, wavs = checkpoint_and_wavs
    manifest = _manifest(tmp_path / "m.jsonl", wavs, ["", "one two", "", "ñandú two"])
    out_json = tmp_path / "eval.json"
    assert main(["eval", str(ckpt), "--manifest", str(manifest), "--json", str(out_json)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert f"asrkd eval: skipped u0: {EMPTY_REFERENCE}" in err and f"asrkd eval: skipped u2: {EMPTY_REFERENCE}" in err
    assert "asrkd eval: warning: 1 reference(s) hold characters the model has no token for" in err
    assert "u3 (ñ ú)" in err
    assert "asrkd eval: 2 of 4 readable utterance(s) not scored (empty reference)" in err
    assert "(2 utterances)" in out
    summary = json.loads(out_json.read_text())
    assert summary["scored_utterances"] == 2 and summary["words"]["reference_length"] == 4
    assert [s["utt_id"] for s in summary["skipped_references"]] == ["u0", "u2"]
    assert [(o["utt_id"], o["characters"]) for o in summary["oov_references"]] == [("u3", ["ñ", "ú"])]
    assert sorted(summary["per_speaker"]) == ["s1", "s3"]


def test_eval_with_no_scorable_reference_is_one_line_and_status_2(checkpoint_and_wavs, tmp_path, capsys):
    ckpt, wavs = checkpoint_and_wavs
    manifest = _manifest(tmp_path / "m.jsonl", wavs, ["", "?!", "", " "])
    assert main(["eval", str(ckpt), "--manifest", str(manifest)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "WER" not in out
    assert err.splitlines()[-1] == (f"asrkd eval: {manifest}: no utterance has a reference text to score against "
                                    "(give each line its 'text'; `asrkd transcribe` transcribes without one)")


@pytest.mark.export
def test_the_export_gate_fails_without_a_scorable_reference(checkpoint_and_wavs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    ckpt, wavs = checkpoint_and_wavs
    manifest = _manifest(tmp_path / "m.jsonl", wavs, ["?!", "...", "?", "-"])  # words only after normalising
    out = tmp_path / "bundle"
    assert main(["export", str(ckpt), "--eval-manifest", str(manifest), "--out", str(out), "--formats", "onnx",
                 "--quantize", "fp32", "--no-cold-start", "--rtf-repeats", "1", "--rtf-utterances", "1"]) == 1
    assert "the references hold no words; WER cannot be measured" in capsys.readouterr().err
    gate = json.loads((out / "report.json").read_text())["gate"]
    assert gate["passed"] is False and gate["reason"]


@pytest.mark.export
def test_the_export_report_lists_the_references_it_did_not_score(checkpoint_and_wavs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    ckpt, wavs = checkpoint_and_wavs
    manifest = _manifest(tmp_path / "m.jsonl", wavs, ["one two", "", "three", "ñandú two"])
    out = tmp_path / "bundle"
    main(["export", str(ckpt), "--eval-manifest", str(manifest), "--out", str(out), "--formats", "onnx",
          "--quantize", "fp32", "--no-cold-start", "--rtf-repeats", "1", "--rtf-utterances", "1"])
    err = capsys.readouterr().err
    assert "1 utterances without reference text are not scored" in err
    reference = json.loads((out / "report.json").read_text())["reference"]
    assert [s["utt_id"] for s in reference["skipped_references"]] == ["u1"]
    assert [o["utt_id"] for o in reference["oov_references"]] == ["u3"]
