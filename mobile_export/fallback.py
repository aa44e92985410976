"""Calibrated confidence and the fallback threshold of an export (``fallback_target_precision``).

    report.confidence, plan = calibrate(source, data, transcripts, manifest, options, out_dir, log)
    entry.fallback = plan.measure(runner, artifact_transcripts, data.refs, tokenizer)

1. the PyTorch graph transcribes the calibration set (``calibration_manifest``, or the evaluation
   set itself: ``in_sample``) and its utterance confidence — the ``confidence`` every artifact
   outputs (`CALIBRATED_MEASURE`) — is calibrated against exact-match correctness
   (`asrkd.confidence.Calibration`); a temperature calibration goes into the export graph, whose
   artifacts then output ``calibrated_confidence`` beside ``confidence`` (graph.py);
2. the threshold is the lowest calibrated confidence at which the kept utterances of the
   calibration set reach the target precision (`asrkd.confidence.threshold_for_precision`);
3. the evaluation set (and the out-of-scope set, if given) is measured at that threshold: ECE
   before and after, coverage and accuracy, out-of-scope rejection, a reliability diagram;
4. each artifact that runs is measured the same way on its own outputs (`FallbackPlan.measure`).

The calibration and the threshold travel in contract.json (bundle.py ``confidence_contract``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asrkd.confidence import Calibration, Fallback, threshold_for_precision
from asrkd.data import AudioDataset, read_manifest
from eval.calibration import (
    at_threshold,
    calibration_summary,
    confidence_outcomes,
    reliability_diagram,
)
from eval.report import Transcripts, transcribe
from eval.runners import TorchRunner
from mobile_export.options import ExportError, ExportOptions
from mobile_export.reference import EvalSet, read_eval_set
from mobile_export.report import ConfidenceReport
from mobile_export.source import ExportSource

# The measure the export graph outputs as ``confidence`` (asrkd.decoding.batch_confidence):
# calibrating it lets an app (or the graph) turn that output into a probability.
CALIBRATED_MEASURE = "entropy"
RELIABILITY_PNG = "reliability.png"


@dataclass
class FallbackPlan:
    """The fitted calibration and threshold, and the out-of-scope audio every artifact is run on."""

    calibration: Calibration
    fallback: Fallback
    oos_pcms: list[np.ndarray] | None

    def measure(self, runner, transcripts: Transcripts, refs: Sequence[str], tokenizer) -> dict[str, Any]:
        """One runner at the threshold: ``eval`` (coverage, accuracy) on its evaluation
        ``transcripts`` and, with an out-of-scope set, ``oos`` (rejection) after running it."""
        threshold = self.fallback.threshold
        d = {"eval": at_threshold(self.calibration, confidence_outcomes(transcripts, tokenizer, refs), threshold)}
        if self.oos_pcms is not None:
            oos = confidence_outcomes(transcribe(reopened(runner), self.oos_pcms, tokenizer), tokenizer)
            d["oos"] = at_threshold(self.calibration, oos, threshold)
        return d


def reopened(runner):
    """A fresh runner on ``runner``'s artifact, for a pass after the speed measurement: that opens
    other runners at other thread counts, and ExecuTorch's thread pool is process-wide
    (``_unsafe_reset_threadpool``): a method loaded before such a reset deadlocks when it runs
    after it (measured: the quick demo's .pte hung in a futex wait). A PyTorch runner is returned
    as it is (its graph may exist only in memory; torch's threads are set on every call)."""
    if runner.path is None or runner.format == "torch":
        return runner
    return type(runner).load(runner.path, runner.threads)


def read_audio(manifest: Path, sample_rate: int) -> list[np.ndarray]:
    """Every utterance of ``manifest`` as float32 PCM at ``sample_rate`` (transcripts not needed)."""
    utts = read_manifest(manifest)
    if not utts:
        raise ExportError(f"{manifest}: no utterances")
    dataset = AudioDataset(utts, sample_rate=sample_rate)
    return [dataset[i]["wav"].numpy() for i in range(len(utts))]


def torch_transcripts(source: ExportSource, pcms: list[np.ndarray]) -> Transcripts:
    """The PyTorch export graph's transcripts of ``pcms`` (one thread, torch's threads restored)."""
    import torch

    threads_before = torch.get_num_threads()  # TorchRunner sets torch's process-wide threads
    try:
        return transcribe(TorchRunner(source.checkpoint, 1, graph=source.graph), pcms, source.tokenizer)
    finally:
        torch.set_num_threads(threads_before)


def calibrate(source: ExportSource, data: EvalSet, transcripts: Transcripts, manifest: Path,
              options: ExportOptions, out_dir: Path,
              log: Callable[[str], None]) -> tuple[ConfidenceReport, FallbackPlan]:
    """Steps 1-3 (module docstring) from the PyTorch reference's ``transcripts`` of the
    evaluation set ``data`` (read from ``manifest``). A temperature calibration is also set on
    ``source.graph``, so that the artifacts converted after it output ``calibrated_confidence``."""
    tokenizer, sample_rate = source.tokenizer, source.contract.sample_rate
    in_sample = not options.calibration_manifest
    if in_sample:
        cal_transcripts, cal_refs = transcripts, data.refs
    else:
        cal_set = read_eval_set(Path(options.calibration_manifest), sample_rate, None)
        log(f"calibrating confidence on {len(cal_set.pcms)} utterances of {options.calibration_manifest}")
        cal_transcripts, cal_refs = torch_transcripts(source, cal_set.pcms), cal_set.refs
    cal_outcome = confidence_outcomes(cal_transcripts, tokenizer, cal_refs)
    try:
        calibration = Calibration.fit(cal_outcome.scores[CALIBRATED_MEASURE], cal_outcome.correct,
                                      CALIBRATED_MEASURE, options.calibration_method)
    except ValueError as e:
        raise ExportError(f"{options.calibration_manifest or manifest}: cannot calibrate on it ({e}); "
                          "give a labelled --calibration-manifest of a few hundred utterances") from None
    fallback = threshold_for_precision(calibration.apply(cal_outcome.scores[CALIBRATED_MEASURE]),
                                       cal_outcome.correct, options.fallback_target_precision)
    if calibration.method == "temperature":  # two numbers the graph can apply: its artifacts output p too
        source.graph.calibration = (calibration.temperature, calibration.bias)

    # In-sample: the calibration set is the evaluation set, already scored.
    eval_outcome = cal_outcome if in_sample else confidence_outcomes(transcripts, tokenizer, data.refs)
    eval_summary = calibration_summary(calibration, eval_outcome)
    png = reliability_diagram(eval_summary, Path(out_dir) / RELIABILITY_PNG,
                              title=f"Reliability on the evaluation set ({calibration.method} calibration)")
    oos_pcms = oos = None
    if options.oos_manifest:
        oos_pcms = read_audio(Path(options.oos_manifest), sample_rate)
        oos = at_threshold(calibration, confidence_outcomes(torch_transcripts(source, oos_pcms), tokenizer),
                           fallback.threshold)
    report = ConfidenceReport(
        calibration_manifest=str(options.calibration_manifest or manifest),
        in_sample=in_sample, calibration=calibration.to_dict(), fallback=fallback.to_dict(),
        calibration_set=eval_summary if in_sample else calibration_summary(calibration, cal_outcome),
        eval={**eval_summary, **at_threshold(calibration, eval_outcome, fallback.threshold)},
        oos=oos, oos_manifest=options.oos_manifest, reliability_png=png.name,
    )
    log(f"  fallback threshold {fallback.threshold:.3f} (precision {fallback.target_precision:g} "
        f"{'reached' if fallback.reached else 'NOT reached'}); eval coverage "
        f"{100 * report.eval['coverage']:.1f} %" + ("" if oos is None else f", out-of-scope rejected "
                                                    f"{100 * oos['rejection']:.1f} %"))
    return report, FallbackPlan(calibration, fallback, oos_pcms)
