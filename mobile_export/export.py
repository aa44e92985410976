"""``asrkd export``: model -> artifacts -> verification against PyTorch -> bundle.

    report = export_bundle("runs/fsdd/student_ctc", "bundle/", "eval.jsonl",
                           ExportOptions(formats=("tflite", "onnx"), precisions=("fp32", "int8")))
    report["gate"]["passed"]

The model is a checkpoint folder (or run folder), a loaded checkpoint or modules in memory
(`mobile_export.source.ExportSource.of`). Steps, each recorded in ``OUT/report.json`` (written
first thing and after every step, so it exists whatever happens), each in its own module:

1. load the model (source.py) and build the export graph (graph.py), at the chunking
   ``chunk_size`` / ``left_chunks`` ask for (a streaming checkpoint; `ExportSource.at_chunking`);
2. read the evaluation manifest and decode it with the PyTorch graph: the reference WER, CER,
   transcripts, log-probs and RTF (reference.py);
2b. with ``fallback_target_precision``: calibrate the confidence and choose the fallback
   threshold (fallback.py); with ``edge_cases``: the PyTorch model under every edge-case
   condition (edge_suite.py), which each artifact meets again in step 4;
3. convert to every (format, precision) asked for (formats.py: one ``Exporter`` per format); one
   the format does not offer is recorded as ``not_run`` with the reason and does not count for
   the gate;
4. run every artifact on the same audio (eval/runners.py) and compare (verify.py); Core ML on
   Linux is only checked, not run (``not_run``: needs macOS);
5. the gate (gate.py): each artifact's WER may exceed PyTorch's by at most ``max_wer_increase``
   WER percentage points;
6. the bundle (bundle.py): tokens.txt, contract.json, report.json, REPORT.md (report.py),
   MODEL_CARD.md, utterances.jsonl (+ OUT.zip with ``zip``).

``verify_only`` skips step 3 and re-verifies the artifacts listed in an existing bundle's
contract.json (e.g. after post-processing one of them), at the chunking they were exported at.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asrkd.fileio import atomic_write_text, write_json
from asrkd.inference import ChunkingError
from eval.report import chunking_chosen
from eval.rtf import all_threads
from mobile_export import bundle
from mobile_export.bundle import Artifact
from mobile_export.edge_suite import EdgeSuite
from mobile_export.fallback import FallbackPlan, calibrate
from mobile_export.formats import EXPORTERS, FORMATS, formats_for
from mobile_export.gate import gate_summary
from mobile_export.options import DEFAULT_PRECISIONS, PRECISIONS, ExportError, ExportOptions
from mobile_export.reference import EvalSet, read_eval_set, score_reference
from mobile_export.report import ExportReport, exception_text
from mobile_export.source import ExportSource
from mobile_export.verify import Outcome, Verifier

__all__ = [
    "DEFAULT_PRECISIONS", "FORMATS", "PRECISIONS", "EvalSet", "ExportError", "ExportOptions",
    "ExportReport", "ExportSource", "export_bundle", "export_model", "read_eval_set",
    "write_error_report",
]


def write_error_report(out_dir, checkpoint, eval_manifest, options: dict, error: str) -> Path:
    """``OUT/report.json`` (and REPORT.md) for an export that could not start, e.g. invalid
    options: CI finds a report with ``error`` set and the gate not passed. An ``OUT`` that holds
    anything more than such a report (an earlier bundle, the user's files) is left untouched: the
    report goes to ``OUT.partial`` (`bundle.staging_folder`) instead. Returns the report's path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not (_nothing_to_keep(out_dir) and out_dir.is_dir()):
        out_dir = bundle.staging_folder(out_dir)
    report = ExportReport.start(str(checkpoint), eval_manifest, options, all_threads())
    report.error = error
    report.gate.reason = f"export did not start: {error}"
    return report.save(out_dir)


def _nothing_to_keep(out_dir: Path) -> bool:
    """``out_dir`` is missing, empty, or holds only the report of an export that stopped early."""
    if not out_dir.is_dir():
        return not out_dir.exists()
    return not any(out_dir.iterdir()) or (bundle.is_bundle(out_dir) and not bundle.holds_artifacts(out_dir))


def settle(staging: Path, out_dir: Path, completed: bool, log: Callable[[str], None]) -> None:
    """Swap the bundle built in ``staging`` in place of ``out_dir`` (`bundle.replace_bundle`) when
    the export completed (gate passed or not) or ``out_dir`` holds nothing to keep; an export
    that stopped leaves an earlier bundle as it was and its own report in ``staging``."""
    if completed or _nothing_to_keep(out_dir):
        bundle.replace_bundle(staging, out_dir)
    else:
        log(f"the export stopped: {out_dir} keeps the earlier bundle; this run's report is "
            f"{staging / bundle.REPORT_FILE}")


def convert(source: ExportSource, out_dir: Path, options: ExportOptions,
            log: Callable[[str], None]) -> list[tuple[str, str, Outcome]]:
    """Step 3: (format, precision, outcome) for every pair asked for, in report order (a
    streaming checkpoint's default formats include the streaming ones: `formats.formats_for`)."""
    results = []
    for fmt in formats_for(options.formats, source):
        exporter = EXPORTERS[fmt]
        offered = [p for p in options.precisions if p in exporter.precisions]
        made: dict[str, Artifact | Exception] = {}
        if offered:
            log(f"exporting {fmt}: {', '.join(offered)}")
            # Converters print progress to stdout; stdout is the CLI's result table.
            with contextlib.redirect_stdout(sys.stderr):
                try:
                    made = exporter.convert(source, out_dir, offered, options)
                except Exception as e:  # a failure before any precision (e.g. bad options): all of them
                    made = {p: e for p in offered}
        for p in options.precisions:
            results.append((fmt, p, made[p] if p in made else
                            f"{fmt} is not exported at {p}; asrkd offers {fmt} at {', '.join(exporter.precisions)}"))
    return results


def existing_artifacts(out_dir: Path) -> list[tuple[str, str, Outcome]]:
    """The artifacts listed in the bundle's contract.json (``verify_only``)."""
    return [(a["format"], a["precision"], Artifact.from_dict(a, out_dir))
            for a in bundle.read_contract(out_dir)["artifacts"]]


def confidence_section(out_dir: Path, plan: FallbackPlan | None, verify_only: bool) -> dict | None:
    """contract.json's ``confidence``: from ``plan``; without one, a re-verified bundle keeps
    what its contract had."""
    if plan is not None:
        return bundle.confidence_contract(plan.calibration, plan.fallback)
    return bundle.read_contract(out_dir).get("confidence") if verify_only else None


def write_bundle(source: ExportSource, out_dir: Path, artifacts: list[Artifact], windows: list[float],
                 report: ExportReport, rows: list[dict], confidence: dict | None = None) -> None:
    """Step 6 (report.json aside): tokens.txt, contract.json (with ``confidence``, see
    `confidence_section`), utterances.jsonl, MODEL_CARD.md."""
    source.tokenizer.save(out_dir)
    write_json(out_dir / bundle.CONTRACT_FILE,
               bundle.contract(source, artifacts, windows, out_dir, confidence=confidence))
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(out_dir / bundle.UTTERANCES_FILE, lines)
    atomic_write_text(out_dir / bundle.MODEL_CARD, bundle.model_card(source, report.to_dict()))


def chunking_asked(options: ExportOptions, bundle_dir: Path, verify_only: bool) -> tuple[int | None, int | None]:
    """The chunking to export at: ``options``' (None: the checkpoint's). ``verify_only`` re-verifies
    at the one the bundle's artifacts were exported at (contract.json ``model.config``, which states
    the exported model's), and refuses options that ask for another."""
    asked = (options.chunk_size, options.left_chunks)
    if not verify_only:
        return asked
    config = bundle.read_contract(bundle_dir).get("model", {}).get("config") or {}
    exported = (config.get("chunk_size"), config.get("left_chunks"))
    if asked != (None, None) and any(a is not None and a != e for a, e in zip(asked, exported, strict=True)):
        raise ChunkingError(f"--chunk-size/--left-chunks {asked[0]}/{asked[1]}: the artifacts of {bundle_dir} were "
                            f"exported at chunk_size {exported[0]}, left_chunks {exported[1]} ({bundle.CONTRACT_FILE} "
                            "model.config) and --verify-only re-verifies them as they are; leave both options out, "
                            "or export again without --verify-only")
    return exported


def _timing_note(options: ExportOptions) -> str | None:
    if options.rtf_repeats == 0:
        return "not measured (rtf_repeats 0): speed fields are null"
    if not options.cold_start:
        return ("cold start not measured (cold_start false): load_seconds, first_run_seconds and "
                "peak_rss_delta_bytes are null")
    return None


def _log_chunking(chunking: dict[str, Any], log: Callable[[str], None]) -> None:
    """One line: the chunking the export runs at (report.json ``chunking``), and whose it is."""
    own = chunking["checkpoint"]
    log(f"streaming at chunk_size {chunking['chunk_size']} encoder frames ({chunking['chunk_ms']:g} ms), "
        f"left_chunks {chunking['left_chunks']}: "
        + (f"--chunk-size/--left-chunks (the checkpoint's: {own['chunk_size']}, {own['left_chunks']})"
           if chunking_chosen(chunking) else "the checkpoint's"))


def export_model(model: Any, out_dir, eval_manifest, options: ExportOptions | None = None, *,
                 verify_only: bool = False, log: Callable[[str], None] | None = None) -> ExportReport:
    """Export, verify and bundle ``model`` (module docstring); returns the typed report (also
    in ``OUT/report.json``). ``model``: anything `ExportSource.of` takes.

    Raises on errors that stop the whole export (unreadable checkpoint or manifest) after writing
    the report with ``error`` set; per-artifact failures are recorded in the report instead.

    ``out_dir`` must be new, empty or an earlier bundle (else `bundle.OutputFolderError`, before
    anything is written; with ``verify_only``, an earlier bundle). The bundle is built in ``OUT.partial`` and replaces ``OUT`` as a whole
    when the export completes (`settle`), so a stopped or killed export leaves an earlier bundle
    intact and ``OUT.zip`` holds only what this export wrote. ``verify_only`` works in place.
    """
    options = options or ExportOptions()
    log = log or (lambda msg: None)
    final, manifest = Path(out_dir), Path(eval_manifest)
    if verify_only and not (final / bundle.CONTRACT_FILE).is_file():  # before the reference is scored
        raise bundle.OutputFolderError(f"{final}: no {bundle.CONTRACT_FILE}, so not an asrkd bundle; --verify-only "
                                       "re-verifies an earlier export's bundle: run `asrkd export` without it")
    out_dir = final if verify_only else bundle.begin_bundle(final)
    completed = False
    threads_all = options.threads or all_threads()
    checkpoint = str(Path(model)) if isinstance(model, (str, os.PathLike)) else None
    report = ExportReport.start(checkpoint, manifest, {**asdict(options), "verify_only": verify_only},
                                threads_all)
    report.save(out_dir)
    try:
        source = ExportSource.of(model).at_chunking(*chunking_asked(options, final, verify_only))
        report.chunking = source.chunking()
        if report.chunking is not None:
            _log_chunking(report.chunking, log)
        report.checkpoint = None if source.checkpoint is None else str(source.checkpoint)
        data = read_eval_set(manifest, source.contract.sample_rate, options.max_utterances)
        report.eval.utterances, report.eval.audio_seconds = len(data.pcms), data.audio_seconds
        report.eval.rtf_utterances = min(options.rtf_utterances, len(data.pcms))
        report.eval.timing = _timing_note(options)
        report.save(out_dir)

        transcripts, report.reference, rows = score_reference(source, data, manifest, options, threads_all, log)
        report.save(out_dir)
        plan = None
        if options.fallback_target_precision is not None:
            report.confidence, plan = calibrate(source, data, transcripts, manifest, options, out_dir, log)
            report.save(out_dir)
        suite = None
        if options.edge_cases:
            suite = EdgeSuite.prepare(source, data, options, plan, log)
            report.edge_cases = suite.reference_rows
            report.save(out_dir)

        outcomes = existing_artifacts(out_dir) if verify_only else convert(source, out_dir, options, log)
        artifacts = [o for _, _, o in outcomes if isinstance(o, Artifact)]
        if not verify_only:
            # The contract is written before verification so that it exists whatever happens next.
            write_bundle(source, out_dir, artifacts, list(options.windows), report, rows,
                         confidence_section(out_dir, plan, verify_only))
        log(f"verifying {len(artifacts)} artifact(s)")
        verifier = Verifier(source, data, transcripts, report.reference.wer, options, threads_all, out_dir,
                            recheck=verify_only, log=log, rows=rows, fallback=plan,
                            edge_suite=suite)
        for fmt, precision, outcome in outcomes:
            report.artifacts.append(verifier.verify(fmt, precision, outcome))
            report.save(out_dir)
        report.gate = gate_summary(report.artifacts, options.max_wer_increase, reference_ok=True)
        write_bundle(source, out_dir, artifacts, list(options.windows), report, verifier.rows,
                     confidence_section(out_dir, plan, verify_only))
        completed = True
    except Exception as e:
        report.error = exception_text(e)
        report.gate = gate_summary(report.artifacts, options.max_wer_increase, reference_ok=False)
        report.gate.reason = f"export stopped: {report.error}"
        report.traceback = traceback.format_exc(limit=8)
        raise
    finally:
        report.save(out_dir)
        if out_dir != final:
            settle(out_dir, final, completed, log)
    if options.zip:
        report.zip = str(bundle.zip_bundle(final))
        report.save(final)
    return report


def export_bundle(model: Any, out_dir, eval_manifest, options: ExportOptions | None = None, *,
                  verify_only: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`export_model`, returning the report as the dict written to ``OUT/report.json``."""
    return export_model(model, out_dir, eval_manifest, options, verify_only=verify_only, log=log).to_dict()
