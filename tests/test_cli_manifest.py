"""`asrkd manifest check`: one line per problem, a total, and an exit status CI can gate on."""

from __future__ import annotations

from asrkd.cli import main
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
