"""One bad file must not lose the others: `asrkd transcribe` and `asrkd eval` name each unreadable
audio file, go on with the rest and end with exit status 2 (docs/ERRORS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asrkd.audio import write_wav
from asrkd.checkpoint import load_checkpoint, save_checkpoint
from asrkd.cli import main
from asrkd.contract import SAMPLE_RATE
from asrkd.data import Utterance, write_manifest
from asrkd.features import FrontendConfig
from asrkd.inference import Transcriber, evaluate
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.text import CharTokenizer


def random_model_and_noise(root: Path, n: int) -> tuple[Path, list[Path]]:
    """A randomly initialised student-xs checkpoint and ``n`` half-second noise WAVs in ``root``:
    something to run commands on, not to measure accuracy with."""
    tok = CharTokenizer.default_english()
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "ckpt", ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size)),
                           FrontendConfig(), tok)
    rng = np.random.default_rng(0)
    wavs = [root / f"good{i}.wav" for i in range(n)]
    for wav in wavs:
        write_wav(wav, 0.1 * rng.standard_normal(SAMPLE_RATE // 2).astype(np.float32))
    return ckpt, wavs


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """A random checkpoint, three readable WAVs and one corrupt file."""
    root = tmp_path_factory.mktemp("bad_items")
    ckpt, good = random_model_and_noise(root, 3)
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all" + bytes(range(256)))
    return ckpt, good, corrupt


def _transcribe(ckpt: Path, *paths: str | bytes) -> subprocess.CompletedProcess:
    """`asrkd transcribe` in a fresh process whose stdout is strict UTF-8, as in a terminal."""
    argv = [sys.executable, "-m", "asrkd.cli", "transcribe", str(ckpt), *paths]
    return subprocess.run([os.fsencode(a) for a in argv], capture_output=True,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def test_transcribe_prints_every_readable_file_and_names_the_bad_ones(setup, tmp_path):
    ckpt, good, corrupt = setup
    odd = os.fsencode(tmp_path) + b"/missing-caf\xe9.wav"  # not UTF-8 (Latin-1 "e acute"), and absent
    proc = _transcribe(ckpt, str(good[0]), str(good[1]), str(corrupt), str(good[2]), odd)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(good[0]), str(good[1]), str(good[2])]
    assert all("confidence=" in line for line in lines)
    errors = err.splitlines()
    assert errors[0].startswith(f"asrkd transcribe: {corrupt}: unreadable or corrupt audio")
    assert errors[1] == f"asrkd transcribe: {tmp_path}/missing-caf\ufffd.wav: no such audio file"
    assert errors[-1] == "asrkd transcribe: 2 of 5 file(s) could not be read"


def test_transcribe_reads_a_file_whose_name_is_not_utf8(setup, tmp_path):
    ckpt, good, _ = setup
    odd = os.fsencode(tmp_path) + b"/caf\xe9.wav"
    with open(odd, "wb") as f:
        f.write(good[0].read_bytes())
    [result] = Transcriber.from_checkpoint(ckpt).transcribe_each([os.fsdecode(odd)])
    assert isinstance(result.text, str)


def test_eval_skips_and_counts_unreadable_audio(setup, tmp_path, capsys):
    ckpt, good, corrupt = setup
    manifest = tmp_path / "m.jsonl"
    names = [good[0], corrupt, good[1], tmp_path / "missing.wav", good[2]]
    write_manifest(manifest, [Utterance(str(p), "one two", 0.5, utt_id=f"u{i}") for i, p in enumerate(names)])
    out_json = Path(os.fsdecode(os.fsencode(tmp_path) + b"/\xe9val.json"))  # a name that is not UTF-8
    assert main(["eval", str(ckpt), "--manifest", str(manifest), "--json", str(out_json)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"asrkd eval: skipped u1: {corrupt}: unreadable or corrupt audio" in captured.err
    assert "asrkd eval: skipped u3: " in captured.err and "no such audio file" in captured.err
    assert "asrkd eval: 2 of 5 utterance(s) skipped" in captured.err
    assert "(3 utterances)" in captured.out
    summary = json.loads(out_json.read_text())
    assert summary["utterances"] == 3 and summary["skipped"] == 2
    assert [s["utt_id"] for s in summary["skipped_utterances"]] == ["u1", "u3"]
    per_utt = [json.loads(line) for line in out_json.with_suffix(".utterances.jsonl").read_text().splitlines()]
    assert [u["utt_id"] for u in per_utt] == ["u0", "u2", "u4"]


def test_eval_with_no_readable_audio_is_one_line_and_status_2(setup, tmp_path, capsys):
    ckpt, _, corrupt = setup
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [Utterance(str(corrupt), "one", 0.5, utt_id="u0")])
    assert main(["eval", str(ckpt), "--manifest", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asrkd eval: {manifest}: none of the 1 audio files can be read")
    assert "Traceback" not in err


def test_evaluate_draws_from_torch_s_generator_as_before(setup, tmp_path):
    # A training run's dev evaluation sits between training steps: skipping or not, it must draw
    # what the DataLoader always drew (one number), or every later step of the run would change.
    ckpt, good, corrupt = setup
    loaded = load_checkpoint(ckpt)
    utts = [Utterance(str(p), "one", 0.5, utt_id=f"u{i}") for i, p in enumerate([good[0], corrupt, good[1]])]
    torch.manual_seed(0)
    torch.empty((), dtype=torch.int64).random_()
    expected = torch.rand(3)
    for skip, readable in ((False, utts[::2]), (True, utts)):
        torch.manual_seed(0)
        evaluate(loaded.model, loaded.frontend, loaded.tokenizer, readable, skip_unreadable=skip)
        assert torch.equal(torch.rand(3), expected)
