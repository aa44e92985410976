"""`asrkd manifest check`: one line per problem, a total, and an exit status CI can gate on."""

from __future__ import annotations

import numpy as np

from asrkd.audio import write_wav
from asrkd.checkpoint import save_checkpoint
from asrkd.cli import main
from asrkd.features import FrontendConfig
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.text import CharTokenizer


def test_faulty_manifest_exits_1_and_prints_every_problem(faulty_manifest, capsys):
    path, expected = faulty_manifest
    assert main(["manifest", "check", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    for line, kind in expected:
        assert any(row.startswith(f"{path}:{line}: {kind}: ") for row in out), (line, kind)
    assert out[-1] == f"{path}: {len(expected)} problem(s)"


def test_clean_manifest_exits_0(clean_manifest, capsys):
    assert main(["manifest", "check", str(clean_manifest)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{clean_manifest}: 0 problem(s)"]


def test_several_manifests_and_a_custom_vocabulary(
    faulty_manifest, clean_manifest, tmp_path, capsys
):
    path, expected = faulty_manifest
    # a vocabulary with ï, é and the digits turns the out-of-vocabulary line clean
    tokens = CharTokenizer(
        [*CharTokenizer.default_english().tokens, "\u00e9", "\u00ef", *"0123456789"]
    )
    tokens.save(tmp_path / "tokens.txt")
    argv = [
        "manifest",
        "check",
        str(path),
        str(clean_manifest),
        "--tokens",
        str(tmp_path / "tokens.txt"),
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert ": oov: " not in out
    assert out.splitlines()[-1] == f"total: {len(expected) - 1} problem(s)"


def test_duration_tolerance_flag(faulty_manifest, capsys):
    path, expected = faulty_manifest
    main(["manifest", "check", str(path), "--duration-tolerance", "0.6"])
    assert ": duration_mismatch: " not in capsys.readouterr().out


def test_ctc_feasibility_from_a_flag_or_a_checkpoint(tmp_path, capsys):
    # "three three" needs 13 CTC frames (11 characters + a blank inside each "ee"): 0.2 s gives 5
    # at 25 output frames/s and 20 at 100.
    write_wav(tmp_path / "a.wav", np.zeros(3200, dtype=np.float32))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio_filepath": "a.wav", "duration": 0.2, "text": "three three"}\n')
    assert main(["manifest", "check", str(manifest)]) == 0
    assert main(["manifest", "check", str(manifest), "--ctc-frame-rate", "100"]) == 0
    capsys.readouterr()
    assert main(["manifest", "check", str(manifest), "--ctc-frame-rate", "25"]) == 1
    assert f"{manifest}:1: ctc_infeasible: " in capsys.readouterr().out
    # A checkpoint gives both the vocabulary and the frame rate (16 kHz / hop 160 / subsampling 4).
    tok = CharTokenizer.default_english()
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size))
    save_checkpoint(tmp_path / "ckpt", model, FrontendConfig(), tok)
    assert main(["manifest", "check", str(manifest), "--checkpoint", str(tmp_path / "ckpt")]) == 1
    out = capsys.readouterr().out
    assert "at 25.0 frames/s" in out
    assert main(["manifest", "check", str(manifest), "--ctc-frame-rate", "-1"]) == 2


def test_a_reader_that_closes_early_gets_no_traceback(tmp_path):
    """`asrkd manifest check bad.jsonl | head -1`: the command stops quietly with status 141."""
    import subprocess
    import sys

    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n" * 50_000, encoding="utf-8")  # one problem line each: > 1 MB of output
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from asrkd.cli import main; sys.exit(main(sys.argv[1:]))",
         "manifest", "check", str(bad)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `head -1` does
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert first.startswith(str(bad).encode() + b":1: ")
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
