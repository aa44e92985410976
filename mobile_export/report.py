"""The export report, typed: what ``OUT/report.json`` holds, as dataclasses.

``ExportReport.to_dict()`` writes the JSON layout that mobile CI parses (eval/report.py's module
docstring; keys are only ever added). Keys that a step adds when it runs are absent until then,
as they always were: the reference's ``words`` / ``chars`` / ``per_speaker`` once it is scored,
``first_run_seconds`` / ``peak_rss_delta_bytes`` once a cold start is measured, an artifact's
``logprob_compared_utterances`` once it has run, ``eval.timing`` when speed is not (fully)
measured, ``traceback`` after a crash and ``zip`` once the bundle is zipped; ``confidence`` and
each artifact's ``fallback`` only when a fallback target precision is asked for; ``edge_cases``
(the PyTorch model's) and each artifact's ``edge_cases`` only with the edge-case suite; a
streaming artifact's ``streaming`` (token agreement with the PyTorch streaming model, latency)
instead of its speed fields (mobile_export/stream_export.py); ``chunking`` (the chunk size and
left context the export ran at, and the checkpoint's own: `mobile_export.source.ExportSource.chunking`)
only for a streaming model.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from asrkd import __version__
from asrkd.fileio import atomic_write_text, write_json
from eval.report import DEFINITIONS, Scores, machine, render_markdown
from eval.rtf import Speed
from mobile_export.bundle import REPORT_FILE, REPORT_FORMAT, REPORT_MD

Status = Literal["ok", "failed_gate", "not_run"]


def exception_text(e: BaseException) -> str:
    """``Type: message`` of an exception, cut at 2000 characters, as the report quotes it."""
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) < 2000 else text[:2000] + " [...]"


def _speed_fields(speed: Speed) -> dict[str, Any]:
    return {"rtf_1thread": speed.rtf_1thread, "rtf_all_threads": speed.rtf_all_threads,
            "load_seconds": speed.cold["load_seconds"] if speed.cold else None}


def _cold_fields(speed: Speed) -> dict[str, Any]:
    cold = speed.cold or {}
    return {"first_run_seconds": cold.get("first_run_seconds"),
            "peak_rss_delta_bytes": cold.get("peak_rss_delta_bytes")}


@dataclass
class EvalSummary:
    """The evaluation set: ``manifest``, how many ``utterances`` and ``audio_seconds`` were
    scored, how many were timed (``rtf_utterances``, ``rtf_repeats`` passes); ``timing`` says
    which speed fields are left null on purpose."""

    manifest: str
    utterances: int | None = None
    audio_seconds: float | None = None
    rtf_utterances: int | None = None
    rtf_repeats: int | None = None
    timing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.timing is None:
            del d["timing"]
        return d


@dataclass
class Reference:
    """The PyTorch model on the evaluation set: what every artifact is compared with."""

    scores: Scores | None = None
    speed: Speed = field(default_factory=Speed)

    @property
    def wer(self) -> float | None:
        return self.scores.wer if self.scores else None

    def to_dict(self) -> dict[str, Any]:
        s = self.scores
        d = {"format": "torch", "wer": self.wer, "cer": s.cer if s else None, **_speed_fields(self.speed)}
        if s is not None:
            d.update(words=s.words, chars=s.chars, per_speaker=s.per_speaker)
            # Only when there are some: a clean evaluation set's report keeps its keys.
            d.update({k: v for k, v in (("skipped_references", s.skipped_references),
                                        ("oov_references", s.oov_references)) if v})
        if self.speed.cold is not None:
            d.update(_cold_fields(self.speed))
        return d


@dataclass
class ArtifactEntry:
    """One (format, precision) asked for: where its file is, how it ran and scored, and how it
    counts for the gate (``gate_passed``: True / False, None when it does not count)."""

    format: str
    precision: str
    path: str | None = None
    size_bytes: int | None = None
    status: Status = "not_run"
    reason: str | None = None
    gate_passed: bool | None = None
    scores: Scores | None = None
    wer_increase: float | None = None
    speed: Speed = field(default_factory=Speed)
    description: str | None = None
    checks: dict[str, Any] | None = None
    fallback: dict[str, Any] | None = None
    edge_cases: dict[str, dict[str, Any]] | None = None
    streaming: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.format}-{self.precision}"

    @property
    def wer(self) -> float | None:
        return self.scores.wer if self.scores else None

    def status_line(self) -> str:
        """One line for the export log."""
        if self.status == "not_run":
            return f"not_run ({self.reason})"
        rtf = self.speed.rtf_1thread
        line = f"{self.status}: WER {100 * self.wer:.2f} %, agreement {100 * self.scores.agreement:.1f} %"
        latency = (self.streaming or {}).get("latency")
        if latency is not None:  # a streaming artifact: latency on one thread instead of the RTF
            first, tokens = latency["first_partial"], self.streaming["token_agreement"]
            return (line + ("" if tokens is None else f", token agreement {100 * tokens:.2f} %")
                    + ("" if first is None else f", first partial {1000 * first['median']:.0f} ms median")
                    + f", RTF {latency['rtf']['median']:.4f}")
        return line + ("" if rtf is None else f", RTF {rtf:.4f}")

    def to_dict(self) -> dict[str, Any]:
        s = self.scores
        d = {
            "format": self.format, "precision": self.precision, "path": self.path,
            "size_bytes": self.size_bytes, "status": self.status, "reason": self.reason,
            "gate_passed": self.gate_passed, "wer": self.wer, "cer": s.cer if s else None,
            "wer_increase": self.wer_increase, "agreement": s.agreement if s else None,
            "max_abs_logprob_diff": s.max_abs_logprob_diff if s else None,
            **_speed_fields(self.speed), **_cold_fields(self.speed),
            "chunked_utterances": s.chunked_utterances if s else None,
            "words": s.words if s else None, "chars": s.chars if s else None,
            "description": self.description, "checks": self.checks,
        }
        if s is not None:
            d["logprob_compared_utterances"] = s.logprob_compared_utterances
        if self.fallback is not None:
            d["fallback"] = self.fallback
        if self.edge_cases is not None:
            d["edge_cases"] = self.edge_cases
        if self.streaming is not None:
            d["streaming"] = self.streaming
        return d


@dataclass
class ConfidenceReport:
    """The calibrated confidence and the fallback threshold (mobile_export/fallback.py).

    ``calibration``: `asrkd.confidence.Calibration` as a dict, fitted on ``calibration_manifest``
    (``in_sample``: it is the evaluation manifest itself). ``fallback``:
    `asrkd.confidence.Fallback` as a dict, chosen on the calibration set. ``calibration_set`` and
    ``eval``: ECE of the raw and the calibrated confidence there, and coverage / accuracy at the
    threshold (`eval.calibration`). ``oos``: the out-of-scope set's ``rejection`` (share that
    falls back), None without one. ``reliability_png``: the eval set's reliability diagram.
    """

    calibration_manifest: str
    in_sample: bool
    calibration: dict[str, Any]
    fallback: dict[str, Any]
    calibration_set: dict[str, Any]
    eval: dict[str, Any]
    oos: dict[str, Any] | None = None
    oos_manifest: str | None = None
    reliability_png: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Gate:
    """The verdict: passed when the reference was scored and no artifact that counts failed
    (``failed`` names them); ``max_wer_increase`` in WER percentage points."""

    max_wer_increase: float | None
    unit: str = "WER percentage points"
    passed: bool = False
    failed: list[str] = field(default_factory=list)
    reason: str | None = "export did not finish"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportReport:
    """Everything ``report.json`` records of one export (module docstring)."""

    checkpoint: str | None
    options: dict[str, Any]
    machine: dict[str, Any]
    eval: EvalSummary
    gate: Gate
    reference: Reference = field(default_factory=Reference)
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    zip: str | None = None
    confidence: ConfidenceReport | None = None
    edge_cases: dict[str, dict[str, Any]] | None = None
    chunking: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
                         .isoformat(timespec="seconds"))

    @classmethod
    def start(cls, checkpoint: str | None, eval_manifest, options: dict[str, Any],
              threads_all: int) -> ExportReport:
        """The report before anything is measured: numbers null, the gate not passed.
        ``options``: the export's options as a dict (possibly partial: options that failed
        validation are reported as given)."""
        return cls(
            checkpoint=checkpoint, options=options, machine={**machine(), "threads_all": threads_all},
            eval=EvalSummary(manifest=str(eval_manifest), rtf_repeats=options.get("rtf_repeats")),
            gate=Gate(max_wer_increase=options.get("max_wer_increase")),
        )

    def to_dict(self) -> dict[str, Any]:
        d = {
            "format": REPORT_FORMAT,
            "version": 1,
            "asrkd_version": __version__,
            "created": self.created,
            "checkpoint": self.checkpoint,
            "options": self.options,
            "windows_seconds": list(self.options.get("windows") or []),
            "machine": self.machine,
            "eval": self.eval.to_dict(),
            "reference": self.reference.to_dict(),
            "gate": self.gate.to_dict(),
            "artifacts": [a.to_dict() for a in self.artifacts],
            "definitions": DEFINITIONS,
            "error": self.error,
        }
        if self.traceback is not None:
            d["traceback"] = self.traceback
        if self.zip is not None:
            d["zip"] = self.zip
        if self.confidence is not None:
            d["confidence"] = self.confidence.to_dict()
        if self.edge_cases is not None:
            d["edge_cases"] = self.edge_cases
        if self.chunking is not None:
            d["chunking"] = self.chunking
        return d

    def save(self, out_dir: Path) -> Path:
        """``OUT/report.json`` and ``OUT/REPORT.md``; returns the first."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        write_json(out_dir / REPORT_FILE, d)
        atomic_write_text(out_dir / REPORT_MD, render_markdown(d))
        return out_dir / REPORT_FILE
