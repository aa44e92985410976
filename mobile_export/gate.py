"""The gate: may these artifacts ship? Each artifact's WER may exceed the PyTorch model's by at
most ``max_wer_increase`` WER percentage points; with ``max_wer_increase_noisy``, under every
condition of the edge-case suite too, and it must output nothing on silence (`apply_edge_gate`).

An artifact above it is ``failed_gate``; an export or run that crashed is ``not_run`` and fails
the gate too (what was asked for cannot be shipped); a combination a format does not offer, or a
runtime that cannot run here (Core ML on Linux), does not count (``gate_passed`` None).
"""

from __future__ import annotations

from mobile_export.report import ArtifactEntry, Gate

# A hair of tolerance so that equal WERs never fail on float rounding.
_TOLERANCE = 1e-9


def apply_gate(entry: ArtifactEntry, reference_wer: float | None, max_wer_increase: float) -> None:
    """Set ``wer_increase``, ``gate_passed`` and ``status`` of a measured artifact (in place)."""
    if entry.wer is None or reference_wer is None:
        entry.status, entry.gate_passed = "not_run", False
        entry.reason = entry.reason or "no WER: the evaluation set has no reference words"
        return
    increase = 100.0 * (entry.wer - reference_wer)
    entry.wer_increase = increase
    passed = increase <= max_wer_increase + _TOLERANCE
    entry.gate_passed = passed
    entry.status = "ok" if passed else "failed_gate"
    if not passed:
        entry.reason = (
            f"WER {100 * entry.wer:.2f} % is {increase:.2f} points above PyTorch's "
            f"{100 * reference_wer:.2f} % (gate: {max_wer_increase:g} points)"
        )


def apply_edge_gate(entry: ArtifactEntry, reference_rows: dict[str, dict], max_increase: float) -> None:
    """Fail a measured artifact (in place) whose WER under an edge-case condition exceeds
    PyTorch's on the same audio by more than ``max_increase`` points, or that outputs anything
    on silence (``reference_rows``: the PyTorch model's rows, `mobile_export.edge_suite`)."""
    if not entry.gate_passed or entry.edge_cases is None:
        return
    failed = []
    for name, row in entry.edge_cases.items():
        if row["expects_empty"] and row["non_empty"]:
            failed.append(f"{name}: {row['non_empty']} of {row['utterances']} outputs not empty")
            continue
        ref = reference_rows[name]["wer"]
        if row["wer"] is not None and ref is not None and 100.0 * (row["wer"] - ref) > max_increase + _TOLERANCE:
            failed.append(f"{name}: WER {100 * row['wer']:.2f} % is {100 * (row['wer'] - ref):.2f} points "
                          f"above PyTorch's {100 * ref:.2f} %")
    if failed:
        entry.status, entry.gate_passed = "failed_gate", False
        entry.reason = f"edge cases (gate: {max_increase:g} points): " + "; ".join(failed)


def gate_summary(artifacts: list[ArtifactEntry], max_wer_increase: float, reference_ok: bool) -> Gate:
    """The verdict over every artifact; ``reference_ok``: the PyTorch reference was scored."""
    failed = [a.name for a in artifacts if a.gate_passed is False]
    if not reference_ok:
        reason = "the PyTorch reference could not be evaluated"
    elif failed:
        reason = "artifacts that failed the gate or could not be exported/run: " + ", ".join(failed)
    else:
        reason = None
    return Gate(max_wer_increase=max_wer_increase, passed=reference_ok and not failed, failed=failed,
                reason=reason)
