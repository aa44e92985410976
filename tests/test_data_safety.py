"""Commands never destroy a user's files (issue 18 finding 1): `asrkd cache build --force` replaces
only a cache folder, and `asrkd export` replaces only a previous bundle, as a whole."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asrkd.audio import write_wav
from asrkd.checkpoint import save_checkpoint
from asrkd.cli import main
from asrkd.contract import SAMPLE_RATE
from asrkd.data import Utterance, write_manifest
from asrkd.features import FrontendConfig
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.text import CharTokenizer


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (folders as "dir")."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    """A randomly initialised student-xs checkpoint and a two-line manifest of noise WAVs."""
    root = tmp_path_factory.mktemp("safety")
    tok = CharTokenizer.default_english()
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "ckpt", ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size)),
                           FrontendConfig(), tok)
    rng = np.random.default_rng(0)
    utts = []
    for i in range(2):
        write_wav(root / f"a{i}.wav", 0.1 * rng.standard_normal(SAMPLE_RATE // 2).astype(np.float32))
        utts.append(Utterance(str(root / f"a{i}.wav"), "one two", 0.5, utt_id=f"a{i}"))
    write_manifest(root / "m.jsonl", utts)
    return ckpt, root / "m.jsonl"


def _user_folder(path: Path) -> Path:
    """A folder holding a user's own notes, audio and manifest."""
    path.mkdir()
    (path / "notes.txt").write_text("my notes\n")
    (path / "take1.wav").write_bytes(b"RIFF....WAVE")
    (path / "sub").mkdir()
    (path / "sub" / "train.jsonl").write_text('{"audio_filepath": "take1.wav"}\n')
    return path


def test_cache_build_force_refuses_a_folder_that_is_not_a_cache(small, tmp_path, capsys):
    ckpt, manifest = small
    user = _user_folder(tmp_path / "mine")
    before = tree_digest(user)
    argv = ["cache", "build", "--teacher", str(ckpt), "--manifest", str(manifest), "--out", str(user)]
    assert main(argv + ["--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asrkd cache build: {user}: exists, is not empty and is not a posterior cache")
    assert "Traceback" not in err
    assert tree_digest(user) == before
    # a request.json that is not a cache's is not a licence to delete either
    (user / "request.json").write_text('{"what": "my own request"}\n')
    before = tree_digest(user)
    assert main(argv + ["--force"]) == 2
    assert "not a posterior cache's request" in capsys.readouterr().err
    assert tree_digest(user) == before


def test_cache_build_force_still_replaces_a_cache(small, tmp_path, capsys):
    ckpt, manifest = small
    out = tmp_path / "cache"
    argv = ["cache", "build", "--teacher", str(ckpt), "--manifest", str(manifest), "--out", str(out)]
    assert main(argv + ["--top-k", "3"]) == 0
    assert main(argv + ["--top-k", "4"]) == 2  # stale: refused without --force
    assert main(argv + ["--top-k", "4", "--force"]) == 0
    assert json.loads((out / "request.json").read_text())["settings"]["top_k"] == 4
    capsys.readouterr()
