"""`asrkd monitor`: is a deployed student still agreeing with its teacher on new, unlabelled audio?

    student = open_student("bundle", artifact=None)        # or a checkpoint
    result = monitor(student, load_teacher("whisper"), utterances, "out/", min_agreement=0.8)
    result.passed, result.summary                          # also out/summary.json

The student is either an **asrkd checkpoint** (run in PyTorch) or an **export bundle** (a folder
with contract.json): a bundle holds artifacts, not the checkpoint, so one of its artifacts is run
through `eval.runners` — what the app runs, quantisation included. A bundle also holds the
reference values the shift is measured against: contract.json's calibration and fallback
threshold, and report.json's median calibrated confidence and coverage on the evaluation set
(the artifact's own row when it has one, else the PyTorch model's).

Every utterance is transcribed by both, and scored with the teacher's text as the reference:

- ``wer_vs_teacher``: corpus WER of the student against the teacher; ``agreement`` = 1 − it
  (floored at 0); ``exact_match``: share of utterances transcribed word for word alike;
- with a calibration: ``median_confidence`` (calibrated) and ``fallback_rate`` (share below the
  threshold), each with its bundle value and the ``shift`` (now − bundle);
- ``disagreements.jsonl``: the ``top`` utterances with the most word errors against the teacher.

Resumable: each utterance's result is appended to ``utterances.jsonl`` as one line written in
one call and flushed; a rerun with the same student and teacher skips the utterances there (a
torn last line from a killed run is dropped and redone).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asrkd.audio import audio_duration
from asrkd.confidence import Calibration, utterance_scores
from asrkd.data import AudioDataset, Utterance, read_manifest
from asrkd.decoding import greedy_decode
from asrkd.errors import AsrkdError
from asrkd.fileio import atomic_write_text, write_json
from asrkd.metrics import word_error_rate
from asrkd.progress import progress
from asrkd.text import CharTokenizer, normalize_text
from eval.report import transcribe
from eval.runners import RUNNERS, RunnerUnavailable, TorchRunner, open_runner

RESULTS = "utterances.jsonl"
DISAGREEMENTS = "disagreements.jsonl"
SUMMARY = "summary.json"
RUN_FILE = "monitor.json"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# Artifacts tried in this order when a bundle is given without --artifact: the runtimes most
# likely installed first; sherpa-onnx last (it outputs no log-probs, hence no confidence).
ARTIFACT_ORDER = ("onnx", "tflite", "executorch", "coreml", "sherpa-onnx")


class MonitorError(AsrkdError, ValueError):
    """A monitor input is unusable; the message names it and the fix."""


@dataclass
class Student:
    """What runs as the student: a runner, its tokenizer and sample rate, a description
    (``{"path", "format", "artifact"}``) and, from a bundle, its stored values."""

    runner: Any
    tokenizer: Any
    sample_rate: int
    describe: dict[str, Any]
    calibration: Calibration | None = None
    threshold: float | None = None
    baseline: dict[str, float] | None = None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MonitorError(f"{path}: cannot read it as JSON ({e})") from None


def _bundle_baseline(report: dict, fmt: str, precision: str | None) -> dict[str, float] | None:
    """report.json's evaluation-set median calibrated confidence and fallback rate: the
    artifact's own (``artifacts[].fallback.eval``) or else the PyTorch model's (``confidence.eval``)."""
    conf = report.get("confidence")
    if not conf:
        return None
    own = next((a["fallback"]["eval"] for a in report.get("artifacts", [])
                if a.get("format") == fmt and a.get("precision") == precision and a.get("fallback")), None)
    row = own or conf["eval"]
    return {"median_confidence": row["median_confidence"], "fallback_rate": 1.0 - row["coverage"],
            "source": f"{fmt} {precision}" if own else "pytorch"}


def open_student(path: str | os.PathLike, artifact: str | None = None, threads: int = 1) -> Student:
    """The student at ``path``: a bundle folder (contract.json; ``artifact``: the file name of
    one of its artifacts, default the first of `ARTIFACT_ORDER` that runs here) or a checkpoint."""
    path = Path(path)
    contract_file = path / "contract.json"
    if not contract_file.is_file():
        if artifact:
            raise MonitorError(f"--artifact {artifact}: {path} is not a bundle (no contract.json); "
                               "--artifact picks one of a bundle's artifacts")
        from functools import partial

        from asrkd.checkpoint import load_checkpoint, resolve_checkpoint
        from asrkd.contract import Contract
        from asrkd.inference import log_posteriors

        loaded = load_checkpoint(resolve_checkpoint(path))
        runner = TorchRunner(path, threads, graph=partial(log_posteriors, loaded.model, loaded.frontend))
        return Student(runner, loaded.tokenizer, Contract.from_loaded(loaded).sample_rate,
                       {"path": str(path), "format": "torch", "artifact": None})
    contract = _read_json(contract_file)
    entries = contract.get("artifacts") or []
    if artifact:
        chosen = [a for a in entries if a["path"] == artifact]
        if not chosen:
            raise MonitorError(f"{contract_file}: no artifact {artifact!r}; it lists "
                               f"{[a['path'] for a in entries]}")
    else:
        chosen = sorted((a for a in entries if a["format"] in RUNNERS),
                        key=lambda a: ARTIFACT_ORDER.index(a["format"]) if a["format"] in ARTIFACT_ORDER else 99)
    reasons = []
    for entry in chosen:
        try:
            runner = open_runner(entry["format"], path / entry["path"], threads)
        except (RunnerUnavailable, ImportError, OSError) as e:
            reasons.append(f"{entry['path']}: {e}")
            continue
        conf = contract.get("confidence") or {}
        calibration = Calibration.from_dict(conf["calibration"]) if conf.get("calibration") else None
        report_file = path / "report.json"
        baseline = (_bundle_baseline(_read_json(report_file), entry["format"], entry.get("precision"))
                    if calibration is not None and report_file.is_file() else None)
        return Student(runner, CharTokenizer.load(path / contract.get("tokens_file", "tokens.txt")),
                       int(contract["audio"]["sample_rate"]),
                       {"path": str(path), "format": entry["format"], "artifact": entry["path"]},
                       calibration, conf.get("fallback_threshold"), baseline)
    raise MonitorError(f"{path}: none of its artifacts runs here ({'; '.join(reasons) or 'none listed'}); "
                       "install the runtime of one (pip install asrkd[export]) or pass its checkpoint")


def read_utterances(audio_dir: str | os.PathLike | None = None,
                    manifest: str | os.PathLike | None = None) -> list[Utterance]:
    """The audio to monitor: every audio file under ``audio_dir`` (utt_id: its path below the
    folder, so equal names in subfolders stay apart) or a manifest's lines (text not needed)."""
    if manifest is not None:
        return read_manifest(manifest)
    folder = Path(audio_dir)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise MonitorError(f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under it")
    return [Utterance(str(p), None, audio_duration(p), utt_id=p.relative_to(folder).as_posix()) for p in files]


def teacher_text(teacher, wav: np.ndarray) -> str:
    """The teacher's normalised transcript of one utterance ``wav [N]`` (at its sample rate):
    greedy CTC for a posterior teacher, the best hypothesis of a sequence teacher (Whisper)."""
    import torch

    wavs, lens = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None], torch.tensor([len(wav)])
    with torch.inference_mode():
        if teacher.has_posteriors:
            out = teacher(wavs, lens)
            text = teacher.decode(greedy_decode(out.log_probs, out.lengths, blank=teacher.blank_id)[0])
        else:
            nbest = teacher.sequence_outputs(wavs, lens).outputs[0].nbest
            text = nbest[0].text if nbest else ""
    return normalize_text(text)


def measure(student: Student, teacher, utt: Utterance, student_wav: np.ndarray,
            teacher_wav: np.ndarray) -> dict[str, Any]:
    """One utterance's record: both transcripts, the student's word errors against the teacher
    and its raw (and calibrated) confidence."""
    out = transcribe(student.runner, [student_wav], student.tokenizer)
    lp, text, raw = out.log_probs[0], out.texts[0], None
    if lp is not None:  # None: a runtime that decodes by itself (sherpa-onnx), no confidence
        measure_name = student.calibration.measure if student.calibration else "entropy"
        raw = utterance_scores(lp, student.tokenizer, blank=student.tokenizer.blank_id)[measure_name]
    text = normalize_text(text)
    ref = teacher_text(teacher, teacher_wav)
    wer = word_error_rate([ref], [text])
    record = {"utt_id": utt.utt_id, "audio_filepath": utt.audio_filepath, "teacher": ref, "student": text,
              "errors": wer.substitutions + wer.deletions + wer.insertions, "teacher_words": wer.reference_length,
              "confidence": raw}
    if raw is not None and student.calibration is not None:
        record["calibrated_confidence"] = float(student.calibration.apply(np.array([raw]))[0])
    return record


def _done(path: Path) -> dict[str, dict]:
    """The records of a previous run, by utt_id; a torn last line (a killed run) is dropped."""
    done = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[record["utt_id"]] = record
    return done


def _append(path: Path, record: dict) -> None:
    """One line, one write on an O_APPEND descriptor, flushed to disk before the next utterance."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def summarize(records: Sequence[dict], student: Student, min_agreement: float) -> dict[str, Any]:
    """The corpus figures of ``records`` (module docstring), with the shift against the bundle."""
    errors = sum(r["errors"] for r in records)
    words = sum(r["teacher_words"] for r in records)
    wer = errors / words if words else (0.0 if errors == 0 else 1.0)
    summary: dict[str, Any] = {
        "utterances": len(records), "teacher_words": words, "wer_vs_teacher": wer,
        "agreement": max(0.0, 1.0 - wer), "min_agreement": min_agreement,
        "exact_match": float(np.mean([r["student"].split() == r["teacher"].split() for r in records]))
        if records else None,
    }
    raw = [r["confidence"] for r in records if r["confidence"] is not None]
    summary["median_raw_confidence"] = float(np.median(raw)) if raw else None
    calibrated = [r["calibrated_confidence"] for r in records if "calibrated_confidence" in r]
    if calibrated and student.threshold is not None:
        now = {"median_confidence": float(np.median(calibrated)),
               "fallback_rate": float(np.mean(np.array(calibrated) < student.threshold))}
        summary["fallback_threshold"] = student.threshold
        for key, value in now.items():
            summary[key] = value
            if student.baseline is not None:
                summary[f"{key}_bundle"] = student.baseline[key]
                summary[f"{key}_shift"] = value - student.baseline[key]
        if student.baseline is not None:
            summary["bundle_values_from"] = student.baseline["source"]
    summary["passed"] = bool(records) and summary["agreement"] >= min_agreement
    return summary


@dataclass
class MonitorResult:
    """``summary`` (summary.json) and whether agreement reached the threshold."""

    summary: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.summary["passed"]


def monitor(student: Student, teacher, teacher_spec: str, utts: Sequence[Utterance], out: str | os.PathLike,
            min_agreement: float = 0.8, top: int = 20, log: Callable[[str], None] = print,
            interval: float = 30.0) -> MonitorResult:
    """Run ``student`` and ``teacher`` over ``utts`` (those not already in ``out/utterances.jsonl``),
    then write ``summary.json`` and ``disagreements.jsonl`` into ``out`` (module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = {"student": student.describe, "teacher": teacher_spec}
    run_file = out / RUN_FILE
    if run_file.is_file() and _read_json(run_file) != run:
        raise MonitorError(f"{run_file}: {out} holds a monitor run of {_read_json(run_file)}, not of {run}; "
                           "use another --out, or delete the folder to start over")
    write_json(run_file, run)
    results = out / RESULTS
    done = _done(results)
    if results.is_file():  # rewrite (atomically) without a torn last line, so appends start on a fresh line
        atomic_write_text(results, "".join(json.dumps(done[u.utt_id]) + "\n" for u in utts if u.utt_id in done))
    todo = [u for u in utts if u.utt_id not in done]
    log(f"monitor: {len(utts)} utterances, {len(utts) - len(todo)} done before, {len(todo)} to run")
    student_audio = AudioDataset(todo, sample_rate=student.sample_rate)
    teacher_audio = (student_audio if teacher.sample_rate == student.sample_rate  # read each file once
                     else AudioDataset(todo, sample_rate=teacher.sample_rate))
    bar = progress(len(utts), initial=len(utts) - len(todo), unit="utt", desc="monitor", interval=interval)
    update, close = bar.update, bar.close
    try:
        for i, utt in enumerate(todo):
            record = measure(student, teacher, utt, student_audio[i]["wav"].numpy(), teacher_audio[i]["wav"].numpy())
            _append(results, record)
            done[utt.utt_id] = record
            update(1)
    finally:
        close()
    records = [done[u.utt_id] for u in utts]
    summary = summarize(records, student, min_agreement)
    summary.update(run)
    worst = sorted(records, key=lambda r: (-r["errors"], r["utt_id"]))[:top]
    atomic_write_text(out / DISAGREEMENTS, "".join(json.dumps(r) + "\n" for r in worst if r["errors"]))
    write_json(out / SUMMARY, summary)
    return MonitorResult(summary)
