"""Shared test fixtures."""

from pathlib import Path

import pytest

FSDD_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    """Real spoken digits (8 kHz WAV, see its README); the test is skipped where it is absent."""
    if not (FSDD_DIR / "audio").is_dir():
        pytest.skip(f"FSDD data not found at {FSDD_DIR}")
    return FSDD_DIR


# -- manifests with known faults (asrkd.data tests and the `manifest check` CLI tests) -------------


def _write_manifest_audio(folder, seconds_by_name):
    import numpy as np

    from asrkd.audio import SAMPLE_RATE, write_wav

    rng = np.random.default_rng(0)
    for name, seconds in seconds_by_name.items():
        n = round(seconds * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(n)
        write_wav(folder / "audio" / name, wav.astype(np.float32), SAMPLE_RATE)


@pytest.fixture
def clean_manifest(tmp_path):
    """A 3-line manifest whose every line is right: relative and absolute paths, true durations."""
    _write_manifest_audio(tmp_path, {"a.wav": 1.0, "b.wav": 1.5, "c.wav": 0.8})
    lines = [
        {
            "audio_filepath": "audio/a.wav",
            "text": "Hello, world!",
            "duration": 1.0,
            "speaker": "s1",
        },
        {"audio_filepath": "audio/b.wav", "text": "it's fine", "duration": 1.5, "speaker": "s2"},
        {
            "audio_filepath": str(tmp_path / "audio" / "c.wav"),
            "text": "zero",
            "duration": 0.8,
            "id": 7,
        },
    ]
    import json

    path = tmp_path / "clean.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture
def faulty_manifest(tmp_path):
    """(path, expected): a manifest with five planted faults and the (line, kind) of each.

    Line 1 and line 8 are clean; line 7 is blank (skipped, but counted).
    """
    import json

    _write_manifest_audio(
        tmp_path, {"a.wav": 1.0, "b.wav": 1.5, "c.wav": 0.8, "d.wav": 1.2, "e.wav": 0.9}
    )
    good = {"audio_filepath": "audio/a.wav", "text": "one two", "duration": 1.0}
    lines = [
        json.dumps(good),
        '{"audio_filepath": "audio/a.wav", "text": "three", "duration": 1.0',  # no closing brace
        json.dumps({"audio_filepath": "audio/missing.wav", "text": "four", "duration": 1.0}),
        json.dumps({"audio_filepath": "audio/b.wav", "text": "five", "duration": 2.0}),  # is 1.5 s
        json.dumps({"audio_filepath": "audio/c.wav", "text": "", "duration": 0.8}),
        json.dumps(
            {"audio_filepath": "audio/d.wav", "text": "na\u00efve caf\u00e9 42", "duration": 1.2}
        ),
        "",
        json.dumps({"audio_filepath": "audio/e.wav", "text": "six", "duration": 0.9}),
    ]
    path = tmp_path / "faulty.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = [
        (2, "malformed_json"),
        (3, "missing_audio"),
        (4, "duration_mismatch"),
        (5, "empty_text"),
        (6, "oov"),
    ]
    return path, expected
