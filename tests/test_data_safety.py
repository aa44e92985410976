"""Commands never destroy a user's files (issue 18 finding 1): `asrkd cache build --force` replaces
only a cache folder, and `asrkd export` replaces only a previous bundle, as a whole, once the new
one is complete. A damaged cache shard is named when the cache is opened and rebuilt by rerunning
the build (finding 5, in part)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from test_bad_items import random_model_and_noise

from asrkd.cache import CacheError, PosteriorCache, build_cache
from asrkd.cli import main
from asrkd.data import Utterance, write_manifest
from asrkd.teacher import CheckpointTeacher
from mobile_export import export as export_module
from mobile_export.bundle import OutputFolderError, begin_bundle
from mobile_export.export import ExportOptions, export_bundle


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (folders as "dir")."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    """A random checkpoint and a two-line manifest of noise WAVs."""
    root = tmp_path_factory.mktemp("safety")
    ckpt, wavs = random_model_and_noise(root, 2)
    write_manifest(root / "m.jsonl", [Utterance(str(w), "one two", 0.5, utt_id=f"a{i}") for i, w in enumerate(wavs)])
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


FAST = ["--formats", "onnx", "--quantize", "fp32", "--rtf-repeats", "0", "--no-cold-start"]


def _export(ckpt: Path, manifest: Path, out: Path, *extra: str) -> int:
    return main(["export", str(ckpt), "--eval-manifest", str(manifest), "--out", str(out), *FAST, *extra])


@pytest.fixture
def old_bundle(tmp_path) -> Path:
    """What an earlier export left (its files as far as these tests look: an export would take
    seconds): contract.json and report.json that say so, REPORT.md, an artifact."""
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "contract.json").write_text(json.dumps({"format": "asrkd-mobile-bundle", "artifacts": ["old"]}))
    (out / "report.json").write_text(json.dumps({"format": "asrkd-export-report", "gate": {"passed": True}}))
    (out / "REPORT.md").write_text("# the old model\n")
    (out / "model.fp32.onnx").write_bytes(b"the old model")
    return out


def test_export_argument_errors_leave_the_previous_bundle_untouched(small, old_bundle, capsys):
    before = tree_digest(old_bundle)
    assert _export(*small, old_bundle, "--formats", "onnx,tensorrt") == 2
    err = capsys.readouterr().err
    assert "unknown format(s) ['tensorrt']" in err and f"{old_bundle}.partial/report.json" in err
    assert tree_digest(old_bundle) == before
    assert "tensorrt" in json.loads((old_bundle.parent / "bundle.partial" / "report.json").read_text())["error"]


def test_export_refuses_a_folder_that_is_not_a_bundle(small, tmp_path, capsys):
    user = _user_folder(tmp_path / "mine")
    before = tree_digest(user)
    with pytest.raises(OutputFolderError, match="is not an asrkd bundle"):
        export_bundle(small[0], user, small[1], ExportOptions(formats=("onnx",), precisions=("fp32",)))
    assert _export(*small, user) != 0
    assert "is not an asrkd bundle" in capsys.readouterr().err
    assert tree_digest(user) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_export_replaces_a_bundle_as_a_whole_and_zips_only_its_own_files(small, old_bundle):
    # what the issue found shipped: another model's artifact, and a killed write's temporary file
    (old_bundle / "model.int8.tflite").write_bytes(b"another model")
    (old_bundle / ".contract.json.x1y2.tmp").write_text("{")
    assert _export(*small, old_bundle, "--zip") == 0
    assert [a["file"] for a in json.loads((old_bundle / "contract.json").read_text())["artifacts"]] == ["model.fp32.onnx"]
    assert (old_bundle / "model.fp32.onnx").read_bytes() != b"the old model"
    files = sorted(str(p.relative_to(old_bundle)) for p in old_bundle.rglob("*"))
    assert "model.int8.tflite" not in files and not [f for f in files if f.endswith(".tmp")]
    with zipfile.ZipFile(old_bundle.with_name("bundle.zip")) as zf:
        assert sorted(n.removeprefix("bundle/") for n in zf.namelist()) == files
    assert sorted(p.name for p in old_bundle.parent.iterdir()) == ["bundle", "bundle.zip"]


def test_an_interrupted_export_leaves_the_previous_bundle_intact(small, old_bundle, monkeypatch):
    before = tree_digest(old_bundle)

    def killed(source, out_dir, options, log):  # a conversion that dies half-way through its file
        (out_dir / "model.fp32.onnx").write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "convert", killed)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(small[0], old_bundle, small[1], ExportOptions(formats=("onnx",), precisions=("fp32",),
                                                                    rtf_repeats=0, cold_start=False))
    assert tree_digest(old_bundle) == before


def test_a_kill_between_the_two_renames_is_undone_by_the_next_export(old_bundle):
    before = tree_digest(old_bundle)
    previous = old_bundle.with_name("bundle.previous")
    old_bundle.rename(previous)  # the old bundle renamed aside, the new one not yet renamed in
    staging = begin_bundle(old_bundle)
    assert tree_digest(old_bundle) == before and not previous.exists()
    assert staging == old_bundle.with_name("bundle.partial") and not any(staging.iterdir())


def test_a_truncated_cache_shard_is_named_at_load_and_repaired_by_rerunning_the_build(small, tmp_path):
    ckpt, manifest = small
    teacher = CheckpointTeacher(ckpt)
    report = build_cache(teacher, [manifest], tmp_path / "cache", shard_size=1, progress=False)
    assert report.built == [0, 1]
    intact = tree_digest(tmp_path / "cache" / "shards")
    damaged = tmp_path / "cache" / "shards" / "00001" / "topk_logp.npy"
    damaged.write_bytes(damaged.read_bytes()[:-10])  # a kill or a full disk mid-copy
    with pytest.raises(CacheError, match=f"{damaged}: missing or truncated .*rerun the `asrkd cache build`"):
        PosteriorCache(tmp_path / "cache")
    report = build_cache(teacher, [manifest], tmp_path / "cache", shard_size=1, progress=False)
    assert report.built == [1] and report.skipped == [0]
    assert tree_digest(tmp_path / "cache" / "shards") == intact
    assert len(PosteriorCache(tmp_path / "cache")) == 2
