"""What an export makes and how it is verified: `ExportOptions`, checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass

from asrkd.confidence import METHODS as CALIBRATION_METHODS
from asrkd.contract import EXPORT_WINDOWS_SECONDS
from mobile_export import coreml
from mobile_export.formats import DEFAULT_FORMATS, EXPORTERS, FORMATS

PRECISIONS = ("fp32", "fp16", "int8", "pal6", "pal4")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")


class ExportError(ValueError):
    """Bad options or inputs for an export; the message says what to change."""


@dataclass
class ExportOptions:
    """Options of ``asrkd export`` (each field is the CLI flag of the same name).

    What is made:
        formats: formats to export, in report order (any of `mobile_export.formats.FORMATS`;
            default `DEFAULT_FORMATS`, without sherpa-onnx).
        precisions: precisions to try in every format; one a format does not offer is reported
            ``not_run`` with the reason and does not count for the gate (`PRECISIONS`).
        windows: input lengths in seconds of static-shape artifacts (TFLite signatures, Core ML
            enumerated shapes); the largest is the maximum of dynamic ones (ExecuTorch, a Core ML
            range). Default: `asrkd.contract.EXPORT_WINDOWS_SECONDS`.
        coreml_shapes: ``"enumerated"`` (one shape per window, Neural Engine capable) or
            ``"range"`` (any length up to the largest window).
        coreml_target: Core ML minimum deployment target (a ``coremltools.target`` name).
        zip: also write ``OUT.zip`` with the bundle.

    How it is verified (on the evaluation manifest):
        max_wer_increase: the gate, in WER percentage points above the PyTorch model.
        max_utterances: score only the first N utterances (None: all).
        threads: the "all threads" RTF setting (None: every core of this machine).
        rtf_repeats: timed passes per RTF measurement; 0 measures no speed (fields null).
        rtf_utterances: utterances timed per pass.
        cold_start: also measure load time, first run and peak memory in a fresh process.

    Confidence and fallback (mobile_export/fallback.py; off unless a target precision is given):
        fallback_target_precision: calibrate the utterance confidence and choose the threshold
            at which the kept utterances are right this share of the time (e.g. 0.95).
        calibration_manifest: labelled manifest to calibrate on (None: the evaluation manifest,
            reported as ``in_sample``: its coverage and accuracy are then optimistic).
        calibration_method: ``temperature`` (two numbers; what the artifacts can apply) or
            ``isotonic`` (`asrkd.confidence.Calibration`).
        oos_manifest: out-of-scope speech the model should refuse (transcripts not needed): the
            report gives the share that falls back.

    Streaming (a streaming checkpoint: ``model.causal``; docs/STREAMING.md):
        chunk_size: encoder frames per attention chunk of the streaming artifacts (e.g. 3 = 120 ms
            at a 10 ms hop and x4 subsampling), as ``asrkd eval --chunk-size`` counts them; None:
            the checkpoint's. Dynamic chunk training makes one model serve several chunk sizes, so
            an app picks its latency here, at export time.
        left_chunks: chunks of left context; the attention state holds ``left_chunks x
            chunk_size`` encoder frames (None: the checkpoint's).
        Either one runs the whole export at that chunking (`mobile_export.source.ExportSource.at_chunking`):
        the streaming artifacts, contract.json's ``streaming`` block and state shapes, the PyTorch
        reference the gate compares with, and the whole-utterance artifacts' attention mask.
        Unlike ``asrkd eval``'s, neither takes -1 (full context, unlimited) or 0: an artifact runs
        one chunk per call against a fixed-size state.

    Edge cases (mobile_export/edge_suite.py; off by default, it runs every artifact 11 more times):
        edge_cases: run the suite of `eval.edge_cases` on the evaluation set for every artifact.
        edge_case_noise: a folder of noise recordings for the noise conditions (None: asrkd's
            white and pink noise).
        max_wer_increase_noisy: also gate on the conditions: under each, an artifact's WER may
            exceed PyTorch's on the same audio by at most this many WER points, and it must
            output nothing on silence (None: reported, not gated).

    Raises `ExportError` naming every invalid field.
    """

    formats: tuple[str, ...] = DEFAULT_FORMATS
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    windows: tuple[float, ...] = EXPORT_WINDOWS_SECONDS
    max_wer_increase: float = 0.5
    threads: int | None = None
    rtf_repeats: int = 5
    cold_start: bool = True
    rtf_utterances: int = 10
    max_utterances: int | None = None
    zip: bool = False
    coreml_shapes: str = "enumerated"
    coreml_target: str = coreml.DEFAULT_TARGET
    fallback_target_precision: float | None = None
    calibration_manifest: str | None = None
    calibration_method: str = "temperature"
    oos_manifest: str | None = None
    edge_cases: bool = False
    edge_case_noise: str | None = None
    max_wer_increase_noisy: float | None = None
    chunk_size: int | None = None
    left_chunks: int | None = None

    def __post_init__(self):
        self.formats = tuple(self.formats)
        self.precisions = tuple(self.precisions)
        self.windows = tuple(sorted(float(w) for w in self.windows))
        problems = []
        unknown = [f for f in self.formats if f not in EXPORTERS]
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
        if self.coreml_shapes not in coreml.SHAPE_MODES:
            problems.append(f"coreml_shapes must be one of {coreml.SHAPE_MODES}")
        problems += self._confidence_problems() + self._chunking_problems()
        if problems:
            raise ExportError("; ".join(problems))

    def _chunking_problems(self) -> list[str]:
        """What is wrong with ``chunk_size`` / ``left_chunks`` before any checkpoint is read (what
        the checkpoint cannot do is refused by `mobile_export.stream_graph.at_chunking`)."""
        problems = []
        if self.chunk_size is not None and self.chunk_size < 1:
            problems.append(f"chunk_size (--chunk-size) must be >= 1 encoder frames, got {self.chunk_size}: a "
                            "streaming artifact computes one chunk per call (-1, full context, is what the "
                            "whole-utterance formats do)")
        if self.left_chunks is not None and self.left_chunks < 1:
            problems.append(f"left_chunks (--left-chunks) must be >= 1 chunks, got {self.left_chunks}: the "
                            "streaming artifacts' attention state holds left_chunks x chunk_size frames, so -1 "
                            "(unlimited) has no fixed size and 0 makes it a zero-size tensor, which TFLite refuses")
        return problems

    def _confidence_problems(self) -> list[str]:
        """What is wrong with the confidence and edge-case options."""
        problems = []
        p = self.fallback_target_precision
        if p is not None and not 0.0 < p <= 1.0:
            problems.append(f"fallback_target_precision must be a share in (0, 1], e.g. 0.95; got {p}")
        if p is None and (self.calibration_manifest or self.oos_manifest):
            problems.append("calibration_manifest and oos_manifest need fallback_target_precision "
                            "(--fallback-target-precision P)")
        if self.calibration_method not in CALIBRATION_METHODS:
            problems.append(f"calibration_method must be one of {CALIBRATION_METHODS}")
        if not self.edge_cases and (self.edge_case_noise or self.max_wer_increase_noisy is not None):
            problems.append("edge_case_noise and max_wer_increase_noisy need edge_cases (--edge-cases)")
        if self.max_wer_increase_noisy is not None and self.max_wer_increase_noisy < 0:
            problems.append(f"max_wer_increase_noisy must be >= 0 WER points, got {self.max_wer_increase_noisy}")
        return problems
