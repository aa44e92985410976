"""The README's composed-training examples run as written: their exact code, on tiny data made here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from asrkd.contract import Contract
from asrkd.features import FrontendConfig
from asrkd.loop import read_log
from asrkd.models.conformer import build_preset
from asrkd.text import CharTokenizer

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tested by tests/test_readme_api.py -->"


def readme_blocks() -> list[str]:
    """The ```python blocks that follow the marker, in README order."""
    parts = README.read_text(encoding="utf-8").split(MARKER)[1:]
    blocks = [re.match(r"\s*```python\n(.*?)```", part, re.S) for part in parts]
    assert all(blocks), "a marker in README.md is not followed by a ```python block"
    return [b.group(1) for b in blocks]


def tiny_data(n: int = 4) -> tuple[list, dict]:
    """``clips`` and ``teacher_log_probs`` as the README describes them: 0.4-0.7 s of noisy tones
    with short texts, and random teacher posteriors at 20 ms (twice the student's frame rate)."""
    rng = np.random.default_rng(0)
    tok = CharTokenizer.default_english()
    contract = Contract.from_parts(FrontendConfig(), build_preset("student", vocab_size=tok.vocab_size))
    clips, log_probs = [], {}
    for i in range(n):
        samples = contract.samples(0.4 + 0.1 * i)
        t = np.arange(samples) / contract.sample_rate
        wav = (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(samples)).astype(np.float32)
        clips.append((f"utt{i}", wav, ["one", "two", "three"][i % 3]))
        frames = 2 * contract.output_frames(samples)
        log_probs[f"utt{i}"] = torch.log_softmax(torch.randn(frames, tok.vocab_size), dim=-1)
    return clips, log_probs


def test_the_readme_composed_training_runs(tmp_path, monkeypatch):
    blocks = readme_blocks()
    assert len(blocks) == 2 and "KDLoss" in blocks[0]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    clips, teacher_log_probs = tiny_data()
    namespace = {"clips": clips, "teacher_log_probs": teacher_log_probs}
    exec(compile(blocks[0], f"{README}: composed training", "exec"), namespace)
    best = namespace["best"]
    assert (best / "model.safetensors").is_file()
    rows = [r for r in read_log(tmp_path / "runs" / "my_student") if "loss" in r]
    assert rows[-1]["step"] == 20 and all(r["ctc"] > 0 and r["frame"] > 0 for r in rows)
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"]
    exec(compile(blocks[1], f"{README}: own loop", "exec"), namespace)
    assert set(namespace["terms"]) == {"ctc", "frame"}
