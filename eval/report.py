"""Verification of artifacts against the PyTorch student, and how the export report reads.

For every artifact and the same evaluation utterances:

- ``wer``, ``cer`` (with substitutions / deletions / insertions): greedy CTC transcripts against
  the normalised references (asrkd.metrics);
- ``agreement``: fraction of utterances whose greedy transcript is identical to PyTorch's;
- ``max_abs_logprob_diff``: max |artifact - PyTorch| over every valid frame and token of every
  utterance that both ran in one piece (utterances split by a runner have other frames);
- RTF at one thread and at all threads, load time, peak memory (eval/rtf.py), size on disk.

``report.json`` layout (a contract: mobile CI parses it; keys are only ever added)::

    {"reference": {"wer", "cer", "rtf_1thread", ...},
     "gate": {"max_wer_increase", "unit", "passed", "failed", "reason"},
     "artifacts": [{"format", "precision", "path", "size_bytes", "status", "reason", "wer", "cer",
                    "agreement", "max_abs_logprob_diff", "rtf_1thread", "rtf_all_threads",
                    "load_seconds", "wer_increase", "gate_passed", ...}],
     "eval": {...}, "machine": {...}, "definitions": {...}, "error": null}

The report's records are typed in mobile_export/report.py, the gate in mobile_export/gate.py.

``status``: ``ok`` (ran, within the gate), ``failed_gate`` (ran, WER increase above the gate),
``not_run`` with ``reason`` (a combination the format does not offer, a runtime that cannot run
here such as Core ML on Linux, or an export or run that crashed). ``gate_passed`` says how an
artifact counts for the gate: true / false, or null when it does not count (an unsupported
combination, or Core ML on Linux whose program was checked but cannot be executed). A crash
counts as false: what was asked for cannot be shipped.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from asrkd.decoding import greedy_decode
from asrkd.metrics import Vocabulary, score, utterance_wer

DEFINITIONS = {
    "wer": "corpus word error rate, fraction (0.05 = 5 %), greedy CTC, normalised text",
    "cer": "corpus character error rate, fraction",
    "agreement": "fraction of utterances whose greedy transcript equals the PyTorch student's",
    "max_abs_logprob_diff": "max |log p_artifact - log p_pytorch| over valid frames and tokens of "
    "utterances run in one piece by both",
    "rtf_1thread": "median compute seconds per audio second, one thread (eval/rtf.py)",
    "rtf_all_threads": "the same with all cores of the export machine (machine.threads_all)",
    "load_seconds": "cold start: wall time of the first load of the artifact in a fresh process, "
    "runtime library already imported, file in the OS page cache (eval/rtf.py measure_cold)",
    "first_run_seconds": "cold start: the first inference after that load, on the longest RTF "
    "utterance",
    "peak_rss_delta_bytes": "cold start: peak resident memory of that fresh process after load + "
    "first inference minus its resident memory before the load (Linux VmHWM); null where not "
    "measurable",
    "wer_increase": "artifact WER - PyTorch WER in percentage points (compared with "
    "gate.max_wer_increase)",
    "chunked_utterances": "utterances longer than the artifact accepts, split into pieces "
    "(contract.json long_audio)",
}


# What the confidence section means (report.json ``confidence``, an artifact's ``fallback``).
CONFIDENCE_DEFINITIONS = {
    "correct": "an utterance whose greedy transcript equals its normalised reference word for word",
    "calibrated confidence": "the artifacts' confidence output mapped by contract.json's calibration: "
    "an estimate of P(correct)",
    "ece": "expected calibration error: over 10 equal-width confidence bins, the utterance-weighted "
    "mean |share correct - mean confidence| (0 = calibrated); raw = the confidence output read as "
    "a probability",
    "fallback_threshold": "keep a transcript when its calibrated confidence is >= it, else fall back; "
    "the lowest one whose kept calibration-set utterances reach the target precision",
    "coverage": "share of the utterances kept (not falling back) at the threshold",
    "accuracy": "share of the kept utterances that are correct (the precision the threshold aims at)",
    "rejection": "share of the out-of-scope utterances that fall back at the threshold",
}


@dataclass
class Transcripts:
    """Outputs of one runner over the evaluation set, in order. ``log_probs`` [T', V] per
    utterance, None for a runtime that decodes by itself (sherpa-onnx: ``decodes_text``)."""

    log_probs: list[np.ndarray | None]
    texts: list[str]
    chunks: list[int] = field(default_factory=list)


def transcribe(runner, pcms: Sequence[np.ndarray], tokenizer) -> Transcripts:
    """Run ``runner`` on every utterance and decode greedily (or take the text of a runner
    that decodes by itself: ``run`` returned None, the text is in ``last_text``)."""
    log_probs, texts, chunks = [], [], []
    for pcm in pcms:
        lp = runner.run(pcm)
        if lp is None:
            texts.append(runner.last_text)
        else:
            ids = greedy_decode(lp[None], np.array([lp.shape[0]]), blank=tokenizer.blank_id)[0]
            texts.append(tokenizer.decode(ids))
        log_probs.append(lp)
        chunks.append(runner.last_chunks)
    return Transcripts(log_probs, texts, chunks)


@dataclass
class Scores:
    """How one runner's transcripts score: against the references (``wer``, ``cer`` and their
    counts ``words``, ``chars``, as `asrkd.metrics.ErrorRate` dicts; ``per_speaker``; the
    ``skipped_references`` left out and the ``oov_references`` scored with characters the model
    has no token for, as `asrkd.metrics.score` lists them) and against the PyTorch reference
    (``agreement``, ``max_abs_logprob_diff`` over the ``logprob_compared_utterances`` that both
    ran in one piece; ``chunked_utterances``)."""

    wer: float | None
    cer: float | None
    words: dict
    chars: dict
    agreement: float | None
    max_abs_logprob_diff: float | None
    logprob_compared_utterances: int
    chunked_utterances: int
    per_speaker: dict | None
    skipped_references: list[dict] = field(default_factory=list)
    oov_references: list[dict] = field(default_factory=list)


def compare(reference: Transcripts, candidate: Transcripts, refs: Sequence[str],
            utt_ids: Sequence[str], speakers: Sequence[str | None] | None = None,
            vocabulary: Vocabulary | None = None) -> tuple[Scores, list[dict]]:
    """Scores of ``candidate`` (and its agreement with ``reference``): (summary, per-utterance
    rows). ``vocabulary``: the model's tokenizer, to list the references it cannot spell."""
    scores = score(list(refs), candidate.texts, speakers, vocabulary=vocabulary, utt_ids=utt_ids)
    rows, diffs, same = [], [], 0
    for i, (ref_lp, lp) in enumerate(zip(reference.log_probs, candidate.log_probs, strict=True)):
        agrees = candidate.texts[i] == reference.texts[i]
        same += agrees
        diff = None
        if (lp is not None and ref_lp is not None and ref_lp.shape == lp.shape
                and candidate.chunks[i] <= 1 and reference.chunks[i] <= 1):
            diff = float(np.max(np.abs(ref_lp.astype(np.float64) - lp))) if lp.size else 0.0
            diffs.append(diff)
        rows.append({
            "utt_id": utt_ids[i], "ref": refs[i], "hyp": candidate.texts[i],
            "wer": utterance_wer(refs[i], candidate.texts[i]), "agrees_with_pytorch": agrees,
            "max_abs_logprob_diff": diff, "chunks": candidate.chunks[i],
        })
    summary = Scores(
        wer=scores["wer"],
        cer=scores["cer"],
        words=scores["words"],
        chars=scores["chars"],
        agreement=same / len(refs) if refs else None,
        max_abs_logprob_diff=max(diffs) if diffs else None,
        logprob_compared_utterances=len(diffs),
        chunked_utterances=sum(c > 1 for c in candidate.chunks),
        per_speaker=scores.get("per_speaker"),
        skipped_references=scores["skipped_references"],
        oov_references=scores.get("oov_references", []),
    )
    return summary, rows


def machine() -> dict:
    from eval.rtf import all_threads

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "threads_all": all_threads()}


# ------------------------------------------------------------------------------ REPORT.md
def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _num(x, spec="{:.4f}") -> str:
    return "–" if x is None else spec.format(x)


def render_markdown(report: dict) -> str:
    """``REPORT.md``: the report as tables a person reads."""
    ref = report.get("reference") or {}
    gate = report.get("gate") or {}
    ev = report.get("eval") or {}
    lines = ["# Export report", ""]
    if report.get("error"):
        lines += [f"**Export stopped:** {report['error']}", ""]
    verdict = "PASSED" if gate.get("passed") else "FAILED"
    lines += [
        f"Checkpoint: `{report.get('checkpoint')}`  ",
        f"Evaluation: `{ev.get('manifest')}`, {ev.get('utterances')} utterances, "
        f"{_num(ev.get('audio_seconds'), '{:.1f}')} s of audio; RTF on {ev.get('rtf_utterances')} of them, "
        f"median of {ev.get('rtf_repeats')} passes  ",
        f"Machine: {report.get('machine', {}).get('processor')}, "
        f"{report.get('machine', {}).get('threads_all')} threads  ",
        f"Gate: WER increase ≤ {gate.get('max_wer_increase')} points over PyTorch → **{verdict}**"
        + (f" ({gate.get('reason')})" if gate.get("reason") else ""),
        "",
        "| artifact | status | size | WER % | CER % | ΔWER pts | agreement % | max abs Δlogp | RTF 1 thr | RTF all | load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| PyTorch (reference) | – | – | {_pct(ref.get('wer'))} | {_pct(ref.get('cer'))} | – | 100.00 | 0 "
        f"| {_num(ref.get('rtf_1thread'))} | {_num(ref.get('rtf_all_threads'))} | {_num(ref.get('load_seconds'), '{:.2f}')} |",
    ]
    for a in report.get("artifacts", []):
        size = "–" if a.get("size_bytes") is None else f"{a['size_bytes'] / 1e6:.2f} MB"
        lines.append(
            f"| {a['format']} {a['precision']} | {a['status']} | {size} | {_pct(a.get('wer'))} "
            f"| {_pct(a.get('cer'))} | {_num(a.get('wer_increase'), '{:+.2f}')} | {_pct(a.get('agreement'))} "
            f"| {_num(a.get('max_abs_logprob_diff'), '{:.2e}')} | {_num(a.get('rtf_1thread'))} "
            f"| {_num(a.get('rtf_all_threads'))} | {_num(a.get('load_seconds'), '{:.2f}')} |"
        )
    reasons = [(a, a.get("reason")) for a in report.get("artifacts", []) if a.get("reason")]
    if reasons:
        lines += ["", "## Notes", ""]
        lines += [f"- **{a['format']} {a['precision']}**: {r}" for a, r in reasons]
    errors = [a for a in report.get("artifacts", []) if a.get("words")]
    if errors or ref.get("words"):
        lines += ["", "## Error counts (words: substitutions / deletions / insertions of reference words)", "",
                  "| artifact | S | D | I | ref words | chars S | D | I |", "|---|---|---|---|---|---|---|---|"]
        for name, a in [("PyTorch", ref), *[(f"{x['format']} {x['precision']}", x) for x in errors]]:
            w, c = a.get("words") or {}, a.get("chars") or {}
            lines.append(f"| {name} | {w.get('substitutions')} | {w.get('deletions')} | {w.get('insertions')} "
                         f"| {w.get('reference_length')} | {c.get('substitutions')} | {c.get('deletions')} "
                         f"| {c.get('insertions')} |")
    streaming = [a for a in report.get("artifacts", []) if a.get("streaming")]
    if streaming:
        lines += _streaming_markdown(streaming, report.get("chunking"))
    if report.get("confidence"):
        lines += _confidence_markdown(report["confidence"], report.get("artifacts", []))
    if report.get("edge_cases"):
        lines += edge_case_markdown(report["edge_cases"], report.get("artifacts", []))
    lines += ["", "## Definitions", ""]
    lines += [f"- `{k}`: {v}" for k, v in (report.get("definitions") or DEFINITIONS).items()]
    if report.get("confidence"):
        lines += [f"- `{k}`: {v}" for k, v in CONFIDENCE_DEFINITIONS.items()]
    lines.append("")
    return "\n".join(lines)


def chunking_chosen(chunking: dict) -> bool:
    """Whether report.json's ``chunking`` is not the checkpoint's own: ``asrkd export --chunk-size /
    --left-chunks`` chose it."""
    own = chunking.get("checkpoint") or {}
    return (own.get("chunk_size"), own.get("left_chunks")) != (chunking["chunk_size"], chunking["left_chunks"])


def _streaming_markdown(artifacts: list[dict], chunking: dict | None = None) -> list[str]:
    """REPORT.md's section on the streaming artifacts: each one driven chunk by chunk in its own
    runtime (`eval.latency.measure_latency`, one thread) against the PyTorch streaming model;
    ``chunking``: report.json's (the chunking the artifacts run at, and the checkpoint's own)."""
    def ms(spread: dict | None) -> str:
        return "–" if spread is None else f"{1000 * spread['median']:.0f} ({1000 * spread['p95']:.0f})"

    lines = ["", "## Streaming artifacts (chunk by chunk, one thread)", ""]
    if chunking:
        left = ("unlimited left context" if chunking["left_context_ms"] is None else
                f"{chunking['left_chunks']} chunks ({chunking['left_context_ms']:.0f} ms) of left context")
        own = chunking.get("checkpoint") or {}
        lines += [f"Chunks of {chunking['chunk_ms']:.0f} ms ({chunking['chunk_size']} encoder frames), {left}"
                  + (f", chosen at export (`--chunk-size`, `--left-chunks`; the checkpoint was trained for "
                     f"{own.get('chunk_size')} frames, {own.get('left_chunks')} chunks); the PyTorch reference "
                     "ran at the same chunking." if chunking_chosen(chunking) else ", the checkpoint's own."), ""]
    lines += ["| artifact | chunk ms | token agreement % | first partial ms, median (p95) "
             "| final ms, median (p95) | compute per chunk ms, median (p95) | RTF | utterances without a token |",
             "|---|---|---|---|---|---|---|---|"]
    for a in artifacts:
        s = a["streaming"]
        lat = s.get("latency")
        if lat is None:
            lines.append(f"| {a['format']} {a['precision']} | – | {_pct(s.get('token_agreement'))} "
                         "| not measured | – | – | – | – |")
            continue
        lines.append(
            f"| {a['format']} {a['precision']} | {1000 * lat['chunk_seconds']:.0f} "
            f"| {_pct(s.get('token_agreement'))} | {ms(lat.get('first_partial'))} | {ms(lat.get('final'))} "
            f"| {ms(lat.get('chunk_compute'))} | {_num((lat.get('rtf') or {}).get('median'))} "
            f"| {lat.get('no_token')} of {lat.get('utterances')} |"
        )
    lines += ["", "First partial: from the first speech sample to the end of the compute that emitted the "
              "first token, counting the wait for the chunk to fill (docs/STREAMING.md). Final: from the "
              "end of the audio to the final text."]
    return lines


def _confidence_markdown(conf: dict, artifacts: list[dict]) -> list[str]:
    """REPORT.md's section on the calibrated confidence and the fallback threshold."""
    fb, cal = conf["fallback"], conf["calibration"]
    where = "the evaluation set itself (in sample: optimistic)" if conf["in_sample"] else f"`{conf['calibration_manifest']}`"
    lines = [
        "", "## Confidence and fallback", "",
        f"Calibration: {cal['method']} on the `{cal['measure']}` confidence output, fitted on {where} "
        f"({cal['fitted_on']['utterances']} utterances, {cal['fitted_on']['correct']} correct). "
        f"Fallback threshold **{fb['threshold']:.3f}** for a target precision of {fb['target_precision']:g}"
        + ("" if fb["reached"] else " (**not reached** on the calibration set: the threshold with the best "
           "precision is given)") + f"; reliability diagram: `{conf.get('reliability_png')}`.",
        "",
        "| set | utterances | correct % | ECE raw | ECE calibrated | coverage % | accuracy % | rejection % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in (("calibration (PyTorch)", {**conf["calibration_set"], "coverage": fb["coverage"],
                                               "accuracy": fb["precision"]}),
                    ("evaluation (PyTorch)", conf["eval"]), ("out-of-scope (PyTorch)", conf.get("oos"))):
        if d:
            lines.append(f"| {name} | {d.get('utterances')} | {_pct(d.get('correct'))} "
                         f"| {_num(d.get('ece_raw'), '{:.3f}')} | {_num(d.get('ece_calibrated'), '{:.3f}')} "
                         f"| {_pct(d.get('coverage'))} | {_pct(d.get('accuracy'))} | {_pct(d.get('rejection'))} |")
    for a in artifacts:
        f = a.get("fallback")
        if f:
            oos = f.get("oos") or {}
            lines.append(f"| {a['format']} {a['precision']} (evaluation) | {f['eval']['utterances']} | – | – | – "
                         f"| {_pct(f['eval'].get('coverage'))} | {_pct(f['eval'].get('accuracy'))} "
                         f"| {_pct(oos.get('rejection'))} |")
    return lines


def edge_case_markdown(reference: dict, artifacts: list[dict]) -> list[str]:
    """REPORT.md's edge-case table: per condition, PyTorch's WER, confidence and fallback rate,
    and each artifact's WER with its agreement with PyTorch."""
    ran = [a for a in artifacts if a.get("edge_cases")]
    lines = [
        "", "## Edge cases", "",
        "WER % per condition (agreement with PyTorch %); confidence: median of the raw `confidence` "
        "output; fallback: share below the fallback threshold; silence only: outputs that are not "
        "empty (must be 0).", "",
        "| condition | PyTorch WER | confidence | fallback % | "
        + " | ".join(f"{a['format']} {a['precision']}" for a in ran) + " |",
        "|---|---|---|---|" + "---|" * len(ran),
    ]
    for name, row in reference.items():
        conf = (row.get("confidence") or {}).get("median")
        lines.append(f"| {name} | {_edge_cell(row, agreement=False)} | {_num(conf, '{:.3f}')} "
                     f"| {_pct(row.get('fallback_rate'))} | "
                     + " | ".join(_edge_cell(a["edge_cases"][name]) for a in ran) + " |")
    return lines


def _edge_cell(row: dict, agreement: bool = True) -> str:
    if row["expects_empty"]:
        return f"{row['non_empty']} of {row['utterances']} not empty"
    return _pct(row["wer"]) + (f" ({_pct(row['agreement'])})" if agreement else "")
