"""The yardstick of an export: the labelled evaluation set, and the PyTorch model scored on it.

Every artifact is run on the same audio (`EvalSet`) and compared with what the PyTorch model
transcribes from it through the very graph the artifacts hold (`score_reference`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asrkd.data import AudioDataset, read_manifest
from asrkd.text import normalize_text
from eval.report import Transcripts, compare, transcribe
from eval.rtf import measure_speed
from eval.runners import TorchRunner
from mobile_export.options import ExportError, ExportOptions
from mobile_export.report import Reference
from mobile_export.source import ExportSource


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


def score_reference(source: ExportSource, data: EvalSet, manifest: Path, options: ExportOptions,
                    threads_all: int, log: Callable[[str], None]) -> tuple[Transcripts, Reference, list[dict]]:
    """Transcribe ``data`` with the PyTorch graph (one thread), score it and time it.

    Returns its transcripts (what artifacts are compared with), the report's reference record
    and the per-utterance rows. Raises `ExportError` when the references hold no word.
    """
    import torch

    log(f"PyTorch reference on {len(data.pcms)} utterances")
    threads_before = torch.get_num_threads()  # TorchRunner sets torch's process-wide threads
    try:
        runner = TorchRunner(source.checkpoint, 1, graph=source.graph)
        transcripts = transcribe(runner, data.pcms, source.tokenizer)
        scores, rows = compare(transcripts, transcripts, data.refs, data.utt_ids, data.speakers,
                               vocabulary=source.tokenizer)
        speed = measure_speed(
            "torch", source.checkpoint, data.pcms[: options.rtf_utterances], data.sample_rate,
            options.rtf_repeats, threads_all, options.cold_start,
            load=lambda n: TorchRunner(source.checkpoint, n, graph=source.graph))
    finally:
        torch.set_num_threads(threads_before)
    if scores.wer is None:
        raise ExportError(f"{manifest}: the references hold no words; WER cannot be measured")
    if scores.skipped_references:
        log(f"  {len(scores.skipped_references)} utterances without reference text are not scored "
            f"(report.json reference.skipped_references)")
    if scores.oov_references:
        log(f"  {len(scores.oov_references)} references hold characters the model has no token for; "
            f"they are scored (report.json reference.oov_references)")
    rtf = speed.rtf_1thread
    log(f"  WER {100 * scores.wer:.2f} %, CER {100 * scores.cer:.2f} %"
        + ("" if rtf is None else f", RTF {rtf:.4f} (1 thread)"))
    return transcripts, Reference(scores, speed), [{"artifact": "torch", **r} for r in rows]
