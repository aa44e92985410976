"""The edge-case suite of an export (``edge_cases``): every runner on the evaluation set under
each condition of `eval.edge_cases` (noise, speed, level, clipping, telephone band, silence
padding, a minute-long concatenation, silence only).

    suite = EdgeSuite.prepare(source, data, options, plan, log)   # PyTorch on every condition
    report.edge_cases = suite.reference_rows
    entry.edge_cases = suite.measure(runner, tokenizer)           # one artifact

Per condition: ``utterances``, ``wer`` (None without reference words: silence only),
``agreement`` with the PyTorch model on the same audio, the confidence distribution (``confidence``:
the artifacts' raw output, ``p10`` / ``median`` / ``p90``), with a calibrated confidence the
``fallback_rate`` at the threshold, and ``non_empty`` (outputs that are not empty; silence only
must have none). The gate (gate.py ``apply_edge_gate``) reads them when ``max_wer_increase_noisy``
is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.calibration import confidence_outcomes
from eval.edge_cases import Condition, edge_case_conditions
from eval.report import Transcripts, compare, transcribe
from mobile_export.fallback import CALIBRATED_MEASURE, FallbackPlan, reopened, torch_transcripts
from mobile_export.options import ExportError, ExportOptions
from mobile_export.reference import EvalSet
from mobile_export.source import ExportSource

NOISE_EXTENSIONS = (".wav", ".flac", ".ogg")  # what asrkd.audio.load_audio (soundfile) reads


def noise_files(folder: str | None) -> list[Path] | None:
    """The audio files under ``folder`` (None: asrkd's generated noise)."""
    if folder is None:
        return None
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in NOISE_EXTENSIONS)
    if not files:
        raise ExportError(f"{folder}: no audio files ({', '.join(NOISE_EXTENSIONS)}) for edge_case_noise")
    return files


@dataclass
class EdgeSuite:
    """The conditions' audio and references, and the PyTorch model's transcripts of each."""

    conditions: list[Condition]
    sets: dict[str, tuple[list[np.ndarray], list[str]]]
    sample_rate: int
    reference: dict[str, Transcripts]
    plan: FallbackPlan | None
    reference_rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def prepare(cls, source: ExportSource, data: EvalSet, options: ExportOptions, plan: FallbackPlan | None,
                log: Callable[[str], None]) -> EdgeSuite:
        """Apply every condition to ``data`` (each with its own generator seeded by its index, so
        a condition's audio does not depend on which others run) and transcribe it with PyTorch."""
        conditions = edge_case_conditions(data.sample_rate, noise_files(options.edge_case_noise))
        sets = {c.name: c.apply(data.pcms, data.refs, np.random.default_rng(i)) for i, c in enumerate(conditions)}
        log(f"edge-case suite: {len(conditions)} conditions")
        reference = {name: torch_transcripts(source, pcms) for name, (pcms, _) in sets.items()}
        suite = cls(conditions, sets, data.sample_rate, reference, plan)
        suite.reference_rows = suite._rows(reference, source.tokenizer)
        return suite

    def measure(self, runner, tokenizer) -> dict[str, dict[str, Any]]:
        """The conditions' rows for ``runner`` (an artifact's; opened again, `reopened`)."""
        runner = reopened(runner)
        return self._rows({name: transcribe(runner, pcms, tokenizer) for name, (pcms, _) in self.sets.items()},
                          tokenizer)

    def _rows(self, transcripts: dict[str, Transcripts], tokenizer) -> dict[str, dict[str, Any]]:
        rows = {}
        for cond in self.conditions:
            pcms, refs = self.sets[cond.name]
            out = transcripts[cond.name]
            scores, _ = compare(self.reference[cond.name], out, refs, [f"{cond.name}-{i}" for i in range(len(refs))])
            row = {"description": cond.description, "utterances": len(pcms),
                   "audio_seconds": sum(len(p) for p in pcms) / self.sample_rate, "wer": scores.wer,
                   "agreement": scores.agreement, "non_empty": sum(bool(t) for t in out.texts),
                   "expects_empty": cond.expects_empty}
            if all(lp is not None for lp in out.log_probs):
                raw = confidence_outcomes(out, tokenizer).scores[CALIBRATED_MEASURE]
                row["confidence"] = {q: float(np.quantile(raw, v)) for q, v in
                                     (("p10", 0.1), ("median", 0.5), ("p90", 0.9))}
                if self.plan is not None:
                    calibrated = self.plan.calibration.apply(raw)
                    row["fallback_rate"] = float(np.mean(calibrated < self.plan.fallback.threshold))
            rows[cond.name] = row
        return rows
