"""``asrkd export``: checkpoint -> artifacts -> verification against PyTorch -> bundle.

    report = export_bundle("runs/fsdd/student_ctc", "bundle/", "eval.jsonl",
                           ExportOptions(formats=("tflite", "onnx"), precisions=("fp32", "int8")))
    report["gate"]["passed"]

Steps, each recorded in ``OUT/report.json`` (written first thing and after every step, so it
exists whatever happens):

1. load the checkpoint and build the export graph (mobile_export/graph.py);
2. read the evaluation manifest and decode it with the PyTorch student: the reference WER, CER,
   transcripts, log-probs and RTF;
3. export every (format, precision) asked for; one the format does not offer is recorded as
   ``not_run`` with the reason and does not count for the gate;
4. run every artifact on the same audio (eval/runners.py) and compare (eval/report.py); Core ML
   on Linux is only checked, not run (``not_run``: needs macOS);
5. the gate: each artifact's WER may exceed PyTorch's by at most ``max_wer_increase`` WER
   percentage points. An artifact above it is ``failed_gate``; an export or run that crashed is
   ``not_run`` with the exception as reason and also fails the gate (what was asked for cannot
   be shipped);
6. the bundle: tokens.txt, contract.json, report.json, REPORT.md, MODEL_CARD.md,
   utterances.jsonl (+ OUT.zip with ``zip``).

``verify_only`` skips step 3 and re-verifies the artifacts listed in an existing bundle's
contract.json (e.g. after post-processing one of them).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from asrkd import __version__
from asrkd.checkpoint import load_checkpoint, resolve_checkpoint
from asrkd.data import AudioDataset, read_manifest
from asrkd.fileio import atomic_write_text, write_json
from asrkd.models.conformer import count_parameters
from asrkd.text import normalize_text
from eval import report as rep
from eval.rtf import all_threads, measure, measure_cold, measure_threads
from eval.runners import TorchRunner, open_runner
from mobile_export import bundle
from mobile_export import coreml as coreml_export
from mobile_export import executorch as executorch_export
from mobile_export import onnx as onnx_export
from mobile_export import tflite as tflite_export
from mobile_export.bundle import Artifact
from mobile_export.graph import ExportGraph

FORMAT_MODULES = {
    "coreml": coreml_export,
    "tflite": tflite_export,
    "onnx": onnx_export,
    "executorch": executorch_export,
}
FORMATS = tuple(FORMAT_MODULES)
PRECISIONS = ("fp32", "fp16", "int8", "pal6", "pal4")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")


class ExportError(ValueError):
    """Bad options or inputs for an export; the message says what to change."""


@dataclass
class ExportOptions:
    formats: tuple[str, ...] = FORMATS
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    windows: tuple[float, ...] = tflite_export.DEFAULT_WINDOWS
    max_wer_increase: float = 0.5  # WER percentage points
    threads: int | None = None  # the "all threads" RTF setting; None: every core
    rtf_repeats: int = 5  # 0: no speed or cold-start measurement (numbers null)
    cold_start: bool = True  # load time, first run and peak memory in a fresh process per artifact
    rtf_utterances: int = 10
    max_utterances: int | None = None
    zip: bool = False
    coreml_shapes: str = "enumerated"
    coreml_target: str = coreml_export.DEFAULT_TARGET

    def __post_init__(self):
        self.formats = tuple(self.formats)
        self.precisions = tuple(self.precisions)
        self.windows = tuple(sorted(float(w) for w in self.windows))
        problems = []
        unknown = [f for f in self.formats if f not in FORMAT_MODULES]
        if unknown:
            problems.append(f"unknown format(s) {unknown}; choose from {list(FORMATS)}")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            problems.append(f"unknown precision(s) {unknown}; choose from {list(PRECISIONS)}")
        if not self.windows or min(self.windows) <= 0:
            problems.append(f"windows must be positive seconds, got {list(self.windows)}")
        if self.max_wer_increase < 0:
            problems.append(f"max_wer_increase must be >= 0 WER points, got {self.max_wer_increase}")
        if self.rtf_repeats < 0 or self.rtf_utterances < 1:
            problems.append("rtf_repeats must be >= 0 and rtf_utterances >= 1")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
        if self.max_utterances is not None and self.max_utterances < 1:
            problems.append(f"max_utterances must be >= 1, got {self.max_utterances}")
        if self.coreml_shapes not in coreml_export.SHAPE_MODES:
            problems.append(f"coreml_shapes must be one of {coreml_export.SHAPE_MODES}")
        if problems:
            raise ExportError("; ".join(problems))


@dataclass
class EvalSet:
    """A labelled evaluation set held in memory (see `read_eval_set`)."""

    utt_ids: list[str]
    refs: list[str]
    speakers: list[str | None]
    pcms: list[np.ndarray] = field(repr=False)
    sample_rate: int

    @property
    def audio_seconds(self) -> float:
        return sum(len(p) for p in self.pcms) / self.sample_rate


def read_eval_set(manifest: Path, sample_rate: int, max_utterances: int | None) -> EvalSet:
    """The first ``max_utterances`` utterances of ``manifest`` decoded to float32 PCM at
    ``sample_rate``, with their normalised references: what every artifact is scored on."""
    utts = read_manifest(manifest)
    if max_utterances is not None:
        utts = utts[:max_utterances]
    if not utts:
        raise ExportError(f"{manifest}: no utterances")
    unlabelled = [u.utt_id for u in utts if not (u.text or "").strip()]
    if len(unlabelled) == len(utts):
        raise ExportError(
            f"{manifest}: no utterance has a transcript ('text'); the export gate needs a labelled "
            "evaluation set"
        )
    dataset = AudioDataset(utts, sample_rate=sample_rate)
    pcms = [dataset[i]["wav"].numpy() for i in range(len(utts))]
    return EvalSet(
        utt_ids=[u.utt_id for u in utts], refs=[normalize_text(u.text or "") for u in utts],
        speakers=[u.speaker for u in utts], pcms=pcms, sample_rate=sample_rate,
    )


def _exception_text(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) < 2000 else text[:2000] + " [...]"


def _status_line(entry: dict) -> str:
    if entry["status"] == "not_run":
        return f"not_run ({entry['reason']})"
    rtf = entry["rtf_1thread"]
    return (f"{entry['status']}: WER {100 * entry['wer']:.2f} %, agreement {100 * entry['agreement']:.1f} %"
            + ("" if rtf is None else f", RTF {rtf:.4f}"))


def empty_report(checkpoint, eval_manifest, options: dict, threads_all: int) -> dict:
    """The report before anything is measured: every contract key present, numbers null, the
    gate not passed."""
    return {
        "format": "asrkd-export-report",
        "version": 1,
        "asrkd_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint),
        "options": options,
        "windows_seconds": list(options.get("windows") or []),
        "machine": {**rep.machine(), "threads_all": threads_all},
        "eval": {"manifest": str(eval_manifest), "utterances": None, "audio_seconds": None,
                 "rtf_utterances": None, "rtf_repeats": options.get("rtf_repeats")},
        "reference": {"format": "torch", "wer": None, "cer": None, "rtf_1thread": None,
                      "rtf_all_threads": None, "load_seconds": None},
        "gate": {"max_wer_increase": options.get("max_wer_increase"), "unit": "WER percentage points",
                 "passed": False, "failed": [], "reason": "export did not finish"},
        "artifacts": [],
        "definitions": rep.DEFINITIONS,
        "error": None,
    }


def write_error_report(out_dir, checkpoint, eval_manifest, options: dict, error: str) -> Path:
    """``OUT/report.json`` (and REPORT.md) for an export that could not start, e.g. invalid
    options: CI finds a report with ``error`` set and the gate not passed."""
    report = empty_report(checkpoint, eval_manifest, options, all_threads())
    report["error"] = error
    report["gate"]["reason"] = f"export did not start: {error}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / bundle.REPORT_FILE, report)
    atomic_write_text(out_dir / bundle.REPORT_MD, rep.render_markdown(report))
    return out_dir / bundle.REPORT_FILE


class _Export:
    """One export run; holds what the steps share. Use ``export_bundle``."""

    def __init__(self, checkpoint, out_dir, eval_manifest, options: ExportOptions,
                 verify_only: bool, log: Callable[[str], None]):
        self.checkpoint = Path(checkpoint)
        self.out_dir = Path(out_dir)
        self.manifest = Path(eval_manifest)
        self.options = options
        self.verify_only = verify_only
        self.log = log
        self.threads_all = options.threads or all_threads()
        self.report = empty_report(self.checkpoint, self.manifest,
                                   {**asdict(options), "verify_only": verify_only}, self.threads_all)
        self.per_utterance: list[dict] = []

    # -------------------------------------------------------------------------------- steps
    def save_report(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / bundle.REPORT_FILE, self.report)
        atomic_write_text(self.out_dir / bundle.REPORT_MD, rep.render_markdown(self.report))

    def load(self) -> None:
        path = resolve_checkpoint(self.checkpoint)
        self.report["checkpoint"] = str(path)
        self.loaded = load_checkpoint(path)
        self.graph = ExportGraph.from_loaded(self.loaded)
        self.tokenizer = self.loaded.tokenizer
        self.sample_rate = self.graph.facts.sample_rate
        self.data = read_eval_set(self.manifest, self.sample_rate, self.options.max_utterances)
        n_rtf = min(self.options.rtf_utterances, len(self.data.pcms))
        self.rtf_pcms = self.data.pcms[:n_rtf]
        self.report["eval"].update(utterances=len(self.data.pcms),
                                   audio_seconds=self.data.audio_seconds, rtf_utterances=n_rtf)
        if self.options.rtf_repeats == 0:
            self.report["eval"]["timing"] = "not measured (rtf_repeats 0): speed fields are null"
        elif not self.options.cold_start:
            self.report["eval"]["timing"] = ("cold start not measured (cold_start false): load_seconds, "
                                             "first_run_seconds and peak_rss_delta_bytes are null")

    def _timings(self, fmt: str, path: Path) -> dict:
        """Warm RTF at one thread and at ``threads_all`` (one Core ML measurement: Core ML picks
        its threads), then cold load time and peak memory in a fresh process (eval/rtf.py)."""
        reps = self.options.rtf_repeats
        out = {"rtf_1thread": None, "rtf_all_threads": None}
        if reps == 0:
            return out
        if fmt == "coreml":
            t = measure(lambda: open_runner(fmt, path, self.threads_all), self.rtf_pcms,
                        self.sample_rate, reps)
            out["rtf_all_threads"] = t.rtf
        else:
            timings = measure_threads(lambda n: open_runner(fmt, path, n), self.rtf_pcms,
                                      self.sample_rate, reps, threads_all=self.threads_all)
            out["rtf_1thread"] = timings["1thread"].rtf
            if "all_threads" in timings:
                out["rtf_all_threads"] = timings["all_threads"].rtf
        if not self.options.cold_start:
            return out
        longest = max(self.rtf_pcms, key=len)
        cold = measure_cold(fmt, path, longest)
        out.update(load_seconds=cold["load_seconds"], first_run_seconds=cold["first_run_seconds"],
                   peak_rss_delta_bytes=cold["peak_rss_delta_bytes"])
        return out

    def reference(self) -> None:
        import torch

        self.log(f"PyTorch reference on {len(self.data.pcms)} utterances")
        threads_before = torch.get_num_threads()
        try:
            runner = TorchRunner(self.loaded.path, 1, graph=self.graph)
            self.ref = rep.transcribe(runner, self.data.pcms, self.tokenizer)
            summary, rows = rep.compare(self.ref, self.ref, self.data.refs, self.data.utt_ids,
                                        self.data.speakers)
            timings = self._timings("torch", self.loaded.path)
        finally:
            torch.set_num_threads(threads_before)
        if summary["wer"] is None:
            raise ExportError(f"{self.manifest}: the references hold no words; WER cannot be measured")
        self.report["reference"].update(
            wer=summary["wer"], cer=summary["cer"], words=summary["words"], chars=summary["chars"],
            per_speaker=summary["per_speaker"], **timings)
        self.per_utterance += [{"artifact": "torch", **r} for r in rows]
        rtf = timings["rtf_1thread"]
        self.log(f"  WER {100 * summary['wer']:.2f} %, CER {100 * summary['cer']:.2f} %"
                 + ("" if rtf is None else f", RTF {rtf:.4f} (1 thread)"))

    def export_all(self) -> list[tuple[str, str, Artifact | Exception | str]]:
        """(format, precision, Artifact | exception | reason it is not offered) in report order."""
        o = self.options
        results = []
        for fmt in o.formats:
            module = FORMAT_MODULES[fmt]
            offered = [p for p in o.precisions if p in module.PRECISIONS]
            made: dict[str, Artifact | Exception] = {}
            if offered:
                self.log(f"exporting {fmt}: {', '.join(offered)}")
                made = self._export_format(fmt, offered)
            for p in o.precisions:
                if p in made:
                    results.append((fmt, p, made[p]))
                else:
                    why = getattr(module, "UNSUPPORTED", {}).get(p) or (
                        f"{fmt} is not exported at {p}; asrkd offers {fmt} at {', '.join(module.PRECISIONS)}")
                    results.append((fmt, p, why))
        return results

    def _export_format(self, fmt: str, precisions: list[str]) -> dict[str, Artifact | Exception]:
        # Converters print progress to stdout; stdout is the CLI's result table.
        with contextlib.redirect_stdout(sys.stderr):
            return self._convert(fmt, precisions)

    def _convert(self, fmt: str, precisions: list[str]) -> dict[str, Artifact | Exception]:
        o = self.options
        try:
            if fmt == "onnx":
                return onnx_export.export(self.graph, self.out_dir, precisions)
            if fmt == "tflite":
                return tflite_export.export(self.graph, self.out_dir, precisions, list(o.windows))
            if fmt == "coreml":
                return coreml_export.export(self.graph, self.out_dir, precisions, self.tokenizer,
                                            list(o.windows), shapes=o.coreml_shapes,
                                            minimum_deployment_target=o.coreml_target)
            return executorch_export.export(self.graph, self.out_dir, precisions, max(o.windows))
        except Exception as e:  # a module-level failure (e.g. bad options): all its precisions
            return {p: e for p in precisions}

    def existing_artifacts(self) -> list[tuple[str, str, Artifact | Exception | str]]:
        contract = bundle.read_contract(self.out_dir)
        return [(a["format"], a["precision"], Artifact.from_dict(a, self.out_dir))
                for a in contract["artifacts"]]

    def verify(self, fmt: str, precision: str, outcome: Artifact | Exception | str) -> dict:
        entry = rep.artifact_entry(fmt, precision)
        if isinstance(outcome, str):
            entry["reason"] = outcome
            return entry
        if isinstance(outcome, Exception):
            entry.update(reason=f"export failed: {_exception_text(outcome)}", gate_passed=False)
            self.log(f"  {fmt} {precision}: export failed: {_exception_text(outcome)}")
            return entry
        a = outcome
        entry.update(path=str(a.path.relative_to(self.out_dir)) if a.path.is_relative_to(self.out_dir)
                     else str(a.path), description=a.description, checks=a.checks or None)
        try:
            entry["size_bytes"] = a.size_bytes
            if fmt == "coreml" and self.verify_only:
                entry["checks"] = coreml_export.check_package(
                    a.path, self.graph, a.windows_seconds or [a.max_seconds],
                    "enumerated" if a.windows_seconds else "range", precision)
            if fmt == "coreml" and not coreml_export.can_predict():
                c = entry["checks"] or {}
                entry["reason"] = (
                    f"not run: needs macOS (Core ML predict); on {sys.platform} the saved program "
                    f"was loaded and checked instead: inputs {list(c.get('inputs', {}))}, outputs "
                    f"{list(c.get('outputs', {}))}, {sum(c.get('mil_operations', {}).values())} MIL "
                    f"operations, weights {c.get('weight_tensors')}, asrkd metadata present")
                return entry
            runner = open_runner(fmt, a.path, 1)
            out = rep.transcribe(runner, self.data.pcms, self.tokenizer)
            summary, rows = rep.compare(self.ref, out, self.data.refs, self.data.utt_ids,
                                        self.data.speakers)
            entry.update({k: summary[k] for k in ("wer", "cer", "words", "chars", "agreement",
                                                  "max_abs_logprob_diff", "logprob_compared_utterances",
                                                  "chunked_utterances")})
            entry.update(self._timings(fmt, a.path))
            self.per_utterance += [{"artifact": a.name, **r} for r in rows]
            rep.apply_gate(entry, self.report["reference"]["wer"], self.options.max_wer_increase)
        except Exception as e:
            entry.update(status="not_run", gate_passed=False, reason=f"run failed: {_exception_text(e)}")
        self.log(f"  {fmt} {precision}: {_status_line(entry)}")
        return entry

    def write_bundle(self, artifacts: list[Artifact]) -> None:
        self.tokenizer.save(self.out_dir)
        contract = bundle.contract(self.graph, self.loaded.config, self.tokenizer, artifacts,
                                   list(self.options.windows), self.out_dir)
        write_json(self.out_dir / bundle.CONTRACT_FILE, contract)
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.per_utterance)
        atomic_write_text(self.out_dir / bundle.UTTERANCES_FILE, lines)
        atomic_write_text(self.out_dir / bundle.MODEL_CARD,
                          bundle.model_card(self.loaded.config, self.graph, self.report,
                                            count_parameters(self.loaded.model)))

    def run(self) -> dict:
        self.save_report()
        try:
            self.load()
            self.save_report()
            self.reference()
            self.save_report()
            outcomes = self.existing_artifacts() if self.verify_only else self.export_all()
            artifacts = [o for _, _, o in outcomes if isinstance(o, Artifact)]
            if not self.verify_only:
                # The contract is written before verification so runners find min_seconds in it.
                self.write_bundle(artifacts)
            self.log(f"verifying {len(artifacts)} artifact(s)")
            for fmt, precision, outcome in outcomes:
                self.report["artifacts"].append(self.verify(fmt, precision, outcome))
                self.save_report()
            self.report["gate"] = rep.gate_summary(self.report["artifacts"],
                                                   self.options.max_wer_increase, True)
            self.write_bundle(artifacts)
        except Exception as e:
            self.report["error"] = _exception_text(e)
            self.report["gate"] = rep.gate_summary(self.report["artifacts"],
                                                   self.options.max_wer_increase, False)
            self.report["gate"]["reason"] = f"export stopped: {self.report['error']}"
            self.report["traceback"] = traceback.format_exc(limit=8)
            raise
        finally:
            self.save_report()
        if self.options.zip:
            self.report["zip"] = str(bundle.zip_bundle(self.out_dir))
            self.save_report()
        return self.report


def export_bundle(checkpoint, out_dir, eval_manifest, options: ExportOptions | None = None, *,
                  verify_only: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Export, verify and bundle (module docstring); returns the report (also in OUT/report.json).

    Raises on errors that stop the whole export (unreadable checkpoint or manifest) after writing
    the report with ``error`` set; per-artifact failures are recorded in the report instead.
    """
    return _Export(checkpoint, out_dir, eval_manifest, options or ExportOptions(), verify_only,
                   log or (lambda msg: None)).run()
