"""Verification: run each exported artifact in its own runtime on the evaluation set and score it
against the PyTorch reference (eval/report.py), then apply the gate (mobile_export/gate.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from eval.latency import measure_latency
from eval.report import Transcripts, compare, transcribe
from eval.rtf import measure_speed
from mobile_export.bundle import Artifact
from mobile_export.edge_suite import EdgeSuite
from mobile_export.exporter import Exporter
from mobile_export.fallback import FallbackPlan
from mobile_export.formats import EXPORTERS
from mobile_export.gate import apply_edge_gate, apply_gate
from mobile_export.options import ExportOptions
from mobile_export.reference import EvalSet
from mobile_export.report import ArtifactEntry, exception_text
from mobile_export.source import ExportSource
from mobile_export.stream_export import streaming_measures

# What one (format, precision) came to: its artifact, the exception that stopped its export, or
# why it was not exported (a precision the format does not offer).
Outcome = Artifact | Exception | str


@dataclass
class Verifier:
    """Runs artifacts on ``data`` and compares them with the PyTorch ``reference`` (transcripts;
    ``reference_wer``: its WER, what the gate measures from).

    ``out_dir``: the bundle (report paths are relative to it). ``recheck``: re-verify artifacts
    of an existing bundle (``verify_only``), so what a format checks without running is checked
    again on the files as they are now. ``rows`` collects the per-utterance results.
    ``fallback``: with a calibrated confidence, each artifact's coverage, accuracy and
    out-of-scope rejection at the threshold are measured too. ``edge_suite``: each artifact is
    run under every edge-case condition too (and gated on them with ``max_wer_increase_noisy``).
    """

    source: ExportSource
    data: EvalSet
    reference: Transcripts
    reference_wer: float | None
    options: ExportOptions
    threads_all: int
    out_dir: Path
    recheck: bool
    log: Callable[[str], None]
    rows: list[dict] = field(default_factory=list)
    fallback: FallbackPlan | None = None
    edge_suite: EdgeSuite | None = None

    def verify(self, fmt: str, precision: str, outcome: Outcome) -> ArtifactEntry:
        """The report entry of one (format, precision), measured where it can run."""
        entry = ArtifactEntry(fmt, precision)
        if isinstance(outcome, str):
            entry.reason = outcome
            return entry
        if isinstance(outcome, Exception):
            entry.reason, entry.gate_passed = f"export failed: {exception_text(outcome)}", False
            self.log(f"  {fmt} {precision}: export failed: {exception_text(outcome)}")
            return entry
        if self._run(EXPORTERS[fmt], outcome, entry):
            self.log(f"  {fmt} {precision}: {entry.status_line()}")
        return entry

    def _run(self, exporter: Exporter, a: Artifact, entry: ArtifactEntry) -> bool:
        """Fill ``entry`` from the artifact ``a``; False when its format cannot run here."""
        entry.path = str(a.path.relative_to(self.out_dir)) if a.path.is_relative_to(self.out_dir) else str(a.path)
        entry.description, entry.checks = a.description, a.checks or None
        try:
            entry.size_bytes = a.size_bytes
            if self.recheck:
                entry.checks = exporter.check(a, self.source)
            entry.reason = exporter.cannot_run(entry.checks)
            if entry.reason is not None:
                return False
            runner = exporter.open_runner(a.path, 1)
            out = transcribe(runner, self.data.pcms, self.source.tokenizer)
            entry.scores, rows = compare(self.reference, out, self.data.refs, self.data.utt_ids,
                                         self.data.speakers)
            o = self.options
            if exporter.streaming:
                entry.streaming = self._streaming(runner, out)
            else:
                entry.speed = measure_speed(exporter.name, a.path, self.data.pcms[: o.rtf_utterances],
                                            self.data.sample_rate, o.rtf_repeats, self.threads_all, o.cold_start)
            self.rows += [{"artifact": a.name, **r} for r in rows]
            if self.fallback is not None and all(lp is not None for lp in out.log_probs):
                entry.fallback = self.fallback.measure(runner, out, self.data.refs, self.source.tokenizer)
            if self.edge_suite is not None:
                entry.edge_cases = self.edge_suite.measure(runner, self.source.tokenizer)
            apply_gate(entry, self.reference_wer, o.max_wer_increase)
            if self.edge_suite is not None and o.max_wer_increase_noisy is not None:
                apply_edge_gate(entry, self.edge_suite.reference_rows, o.max_wer_increase_noisy)
        except Exception as e:
            entry.status, entry.gate_passed = "not_run", False
            entry.reason = f"run failed: {exception_text(e)}"
        return True

    def _streaming(self, stepper, out: Transcripts) -> dict:
        """A streaming artifact's ``streaming`` entry: its token agreement with the PyTorch
        streaming model (the reference) and, unless speed is off (``rtf_repeats`` 0), its latency
        on one thread over the first ``rtf_utterances`` utterances (`eval.latency`)."""
        o = self.options
        latency = None
        if o.rtf_repeats:
            latency = measure_latency(stepper, self.data.pcms[: o.rtf_utterances], self.data.sample_rate)
        return streaming_measures(self.reference, out, self.source.contract.blank_id, latency)
