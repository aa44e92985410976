"""Fault injection (issue 18 acceptance, docs/ERRORS.md): ``kill -9`` at seeded random points of
`asrkd train`, `asrkd cache build`, `asrkd distill` and `asrkd export`, then the same command again
(``--resume`` for the trainings), compared with an uninterrupted run of the same command:

- train, distill: the final checkpoint's weights and config are byte-identical, its trainer state
  (optimizer, scheduler, data position, RNG) equal value for value (see `same_final_checkpoint`);
- cache build: every file of the cache is byte-identical;
- export: the bundle is complete, byte-identical in its artifacts, tokens and contract, with no
  temporary file beside it, and ``OUT.zip`` holds exactly its files. Each killed export replaces
  an earlier bundle, which must survive the kill whole (or wait in ``OUT.previous`` to be put back).

Every run of a scenario writes to the same path, so paths recorded inside the outputs agree. The
kill points are drawn (seed `SEED`) after the command's first output (`inject`). Slow: about 50
processes; the timings print with ``pytest -s``.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from asrkd.checkpoint import CHECKSUM_FILE, CONFIG_FILE, MODEL_FILE, STATE_FILE
from asrkd.data import Utterance, write_manifest
from tests.test_bad_items import random_model_and_noise

pytestmark = pytest.mark.slow

SEED = 18
KILLS = 5
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def asrkd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "asrkd.cli", *argv]


def run_to_the_end(cmd: list[str], cwd: Path, first_output: Path | None = None) -> tuple[float, float]:
    """Run ``cmd``, which must succeed: (seconds until ``first_output`` appeared, total seconds)."""
    t0 = time.perf_counter()
    appeared = None
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None:
            if appeared is None and first_output is not None and first_output.exists():
                appeared = time.perf_counter() - t0
            time.sleep(0.02)
        total = time.perf_counter() - t0
        err.seek(0)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{err.read().decode()[-3000:]}"
    return (total if appeared is None else appeared), total


def kill_after(cmd: list[str], cwd: Path, first_output: Path, seconds: float) -> bool:
    """Start ``cmd`` and SIGKILL it ``seconds`` after ``first_output`` appeared; False when it had
    finished by then. (Timed from its first output, not its start: how long the imports take
    varies most on a busy machine.)"""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not first_output.exists() and proc.poll() is None:
        time.sleep(0.01)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def file_hashes(root: Path, skip: Callable[[Path], bool] = lambda rel: False) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path, leaving out those ``skip`` names."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not skip(p.relative_to(root))
    }


@dataclass
class Scenario:
    """One command under test: ``cmd`` writes ``out``, starting with ``first_output``; ``rerun`` is
    what a user types after a kill; ``prepare`` sets the stage before every run (e.g. an earlier
    bundle); ``check_killed`` looks at what a kill left; ``compare(reference, out)`` asserts that
    the finished outputs agree."""

    cmd: list[str]
    rerun: list[str]
    out: Path
    first_output: Path
    compare: Callable[[Path, Path], None]
    prepare: Callable[[], None] = lambda: None
    check_killed: Callable[[], None] = lambda: None


def inject(scenario: Scenario, work: Path, record: dict) -> None:
    """The uninterrupted run, then `KILLS` killed-and-rerun runs, each compared with it.

    The kill points are uniform over the first 80 % of the uninterrupted run's time from its first
    output to its end (before that output, a process is still importing). A run that finishes
    before its kill point (the machine was faster this time) is rerun and compared too, but does
    not count.
    """
    reference = work.parent / f"{work.name}-reference"
    _clear(work)
    scenario.prepare()
    first, seconds = run_to_the_end(scenario.cmd, work, scenario.first_output)
    shutil.move(scenario.out, reference)
    rng = random.Random(f"{SEED}-{work.name}")
    kills, finished = [], 0
    t0 = time.perf_counter()
    while len(kills) < KILLS:
        at = rng.uniform(0.0, 0.8) * (seconds - first)
        _clear(work)
        scenario.prepare()
        if kill_after(scenario.cmd, work, scenario.first_output, at):
            kills.append(round(at, 1))
            scenario.check_killed()
        else:
            finished += 1
            assert finished <= KILLS, f"{work.name}: too many runs finished before their kill point"
        run_to_the_end(scenario.rerun, work)
        scenario.compare(reference, scenario.out)
    record[work.name] = {"uninterrupted_s": round(seconds, 1), "first_output_s": round(first, 1),
                         "kills_s_after_first_output": kills, "finished_before_kill": finished,
                         "kill_and_rerun_s": round(time.perf_counter() - t0, 1)}


def _clear(work: Path) -> None:
    """Remove every output of an earlier run in ``work`` (all but its ``config.yaml``)."""
    for p in work.iterdir():
        if p.name != "config.yaml":
            shutil.rmtree(p) if p.is_dir() else p.unlink()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A random student-xs checkpoint, 12 noise WAVs and their manifest, made once."""
    root = tmp_path_factory.mktemp("inject") / "inputs"
    root.mkdir()
    ckpt, wavs = random_model_and_noise(root, 12)
    write_manifest(root / "train.jsonl", [Utterance(str(w), "one two", 0.5, utt_id=f"u{i:02d}")
                                          for i, w in enumerate(wavs)])
    return root


@pytest.fixture(scope="module")
def figures():
    """The timings of each scenario, printed at the end (``pytest -s``) for the report."""
    record: dict = {}
    yield record
    for name, values in record.items():
        print(f"fault injection {name}: {values}")


def _work(inputs: Path, name: str) -> Path:
    work = inputs.parent / name
    work.mkdir(exist_ok=True)
    return work


def _training_config(work: Path, inputs: Path, **sections) -> Path:
    cfg = {
        "data": {"train": [str(inputs / "train.jsonl")], "max_batch_seconds": 2.0, "num_workers": 0},
        "model": {"preset": "student-xs", "overrides": {"dropout": 0.1}},
        "augment": {"speed_factors": [1.0], "noise_prob": 0.5, "freq_masks": 1, "time_masks": 1},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "schedule": "cosine", "max_steps": 16},
        "run": {"out_dir": "run", "threads": 1, "checkpoint_every": 2, "keep_last": 2, "progress": False},
        **sections,
    }
    path = work / "config.yaml"  # run.out_dir is relative to it
    path.write_text(yaml.safe_dump(cfg))
    return path


def same_final_checkpoint(reference: Path, out: Path) -> None:
    """The last step checkpoint of both runs: every file byte-identical (the weights, config.json,
    the trainer state, whose read-back strings a resume interns so that its pickle is the same,
    and checksums.json); the trainer state also compared value by value, to name what differs."""
    last = sorted((reference / "checkpoints").glob("step-*"))[-1].name
    a, b = reference / "checkpoints" / last, out / "checkpoints" / last
    assert_same_values(torch.load(a / STATE_FILE, weights_only=True),
                       torch.load(b / STATE_FILE, weights_only=True), STATE_FILE)
    for name in (MODEL_FILE, CONFIG_FILE, STATE_FILE, CHECKSUM_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{b / name} differs"


def assert_same_values(x, y, where: str) -> None:
    """``x`` and ``y`` (nested dicts, lists, tensors, numbers) are equal, tensors bit for bit."""
    assert type(x) is type(y), f"{where}: {type(x)} vs {type(y)}"
    if isinstance(x, dict):
        assert list(x) == list(y), f"{where}: keys {list(x)} vs {list(y)}"
        for k in x:
            assert_same_values(x[k], y[k], f"{where}/{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            assert_same_values(u, v, f"{where}[{i}]")
    elif isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and torch.equal(x, y), where
    else:
        assert x == y, f"{where}: {x!r} vs {y!r}"


def test_kill_train(inputs, figures):
    work = _work(inputs, "train")
    config = _training_config(work, inputs)
    cmd = asrkd("train", "--config", str(config))
    inject(Scenario(cmd, cmd + ["--resume"], work / "run", work / "run", same_final_checkpoint), work, figures)


def test_kill_cache_build(inputs, figures):
    work = _work(inputs, "cache")
    cmd = asrkd("cache", "build", "--teacher", str(inputs / "ckpt"), "--manifest", str(inputs / "train.jsonl"),
                "--out", "cache", "--shard-size", "2", "--top-k", "4", "--hidden-layers", "1")

    def same_cache(reference: Path, out: Path) -> None:
        assert file_hashes(out) == file_hashes(reference)

    inject(Scenario(cmd, cmd, work / "cache", work / "cache", same_cache), work, figures)


def test_kill_distill(inputs, figures):
    work = _work(inputs, "distill")
    cache = inputs / "distill-cache"
    run_to_the_end(asrkd("cache", "build", "--teacher", str(inputs / "ckpt"), "--manifest",
                         str(inputs / "train.jsonl"), "--out", str(cache), "--shard-size", "4", "--top-k", "4"), work)
    config = _training_config(work, inputs, kd={"cache": str(cache), "weights": {"ctc": 1.0, "frame": 1.0}})
    cmd = asrkd("distill", "--config", str(config))
    inject(Scenario(cmd, cmd + ["--resume"], work / "run", work / "run", same_final_checkpoint), work, figures)


def test_kill_export(inputs, figures):
    work = _work(inputs, "export")
    out = work / "bundle"
    cmd = asrkd("export", str(inputs / "ckpt"), "--eval-manifest", str(inputs / "train.jsonl"), "--out", "bundle",
                "--formats", "onnx", "--quantize", "fp32", "--rtf-repeats", "0", "--no-cold-start",
                "--zip")
    earlier = inputs / "earlier-bundle"
    if not earlier.exists():  # an export of the same checkpoint at another precision
        run_to_the_end(asrkd("export", str(inputs / "ckpt"), "--eval-manifest", str(inputs / "train.jsonl"),
                             "--out", str(earlier), "--formats", "onnx", "--quantize", "int8",
                             "--rtf-repeats", "0", "--no-cold-start"), work)
    earlier_files = file_hashes(earlier)

    def put_earlier_bundle() -> None:
        shutil.copytree(earlier, out)

    def earlier_bundle_survived() -> None:
        # Until the swap, OUT is the earlier bundle; between its two renames, OUT.previous is; after
        # it OUT is the new bundle (checked once the rerun has finished).
        if (out / "model.int8.onnx").exists():
            assert file_hashes(out) == earlier_files
        elif not out.exists():
            assert file_hashes(work / "bundle.previous") == earlier_files

    def complete_bundle(reference: Path, got: Path) -> None:
        timed = {"report.json", "REPORT.md", "MODEL_CARD.md"}  # timings and paths of the run
        assert file_hashes(got, lambda rel: rel.name in timed) == file_hashes(reference, lambda rel: rel.name in timed)
        assert sorted(p.name for p in work.iterdir()) == ["bundle", "bundle.zip"]  # no .partial, .previous
        assert not [p for p in got.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
        with zipfile.ZipFile(work / "bundle.zip") as z:
            assert sorted(n.split("/", 1)[-1] for n in z.namelist() if not n.endswith("/")) == \
                sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())

    inject(Scenario(cmd, cmd, out, work / "bundle.partial", complete_bundle, prepare=put_earlier_bundle,
                    check_killed=earlier_bundle_survived), work, figures)
