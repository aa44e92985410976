"""The demo's report as text: the summary table it prints and ``REPORT.md``."""

from __future__ import annotations

from eval.report import edge_case_markdown


def _pct(x) -> str:
    """A fraction as a percentage with one decimal; "-" for none."""
    return "-" if x is None else f"{100 * x:.1f}"


def _rtf(x) -> str:
    """A real-time factor with four decimals; "-" for none."""
    return "-" if x is None else f"{x:.4f}"


def _ms(spread) -> str:
    """A latency `eval.latency.Spread` dict as "median (p95)" milliseconds; "-" for none."""
    return "-" if spread is None else f"{1000 * spread['median']:.0f} ({1000 * spread['p95']:.0f})"


MODEL_LABELS = {"teacher": "teacher", "student_kd": "student + KD", "student_ctc": "student, CTC only"}


def model_label(report: dict, key: str) -> str:
    """A model's row label: `MODEL_LABELS`, the teacher's name added when it is a pretrained one
    (its figures carry ``identity``: `asrkd.demo.stages._measure_whisper`)."""
    identity = report[key].get("identity")
    if identity is None:
        return MODEL_LABELS[key]
    name = identity["name"] if identity["name"] != "not recorded" else "Whisper"
    return f"{MODEL_LABELS[key]}: {name.split(' (')[0]}"


def _gflops(x) -> str:
    """GFLOPs per audio second with three decimals; "-" for none (an autoregressive teacher)."""
    return "-" if x is None else f"{x:.3f}"


def summary_table(report: dict) -> list[str]:
    """The lines the demo prints at the end: each model and artifact with its size, WER, CER and RTF."""
    real = report["demo"].get("real_manifest") is not None
    head = f"{'model / artifact':<26} {'params':>8} {'WER %':>7} {'CER %':>7} {'RTF 1thr':>9} {'MB':>7}"
    lines = [head + (f" {'real WER %':>10}" if real else ""), "-" * (len(head) + (11 if real else 0))]
    for key in MODEL_LABELS:
        m, label = report[key], model_label(report, key)
        line = (f"{label:<26} {m['params'] / 1e6:>7.2f}M {_pct(m['wer']):>7} {_pct(m['cer']):>7} "
                f"{_rtf(m['rtf_1thread']):>9} {'':>7}")
        lines.append(line + (f" {_pct(m.get('wer_real')):>10}" if real else ""))
    for a in report["export"]["artifacts"]:
        size = "-" if a["size_bytes"] is None else f"{a['size_bytes'] / 1e6:.2f}"
        label = f"{a['format']} {a['precision']}" + ("" if a["status"] == "ok" else f" ({a['status']})")
        lines.append(f"{label:<26} {'':>8} {_pct(a['wer']):>7} {_pct(a['cer']):>7} "
                     f"{_rtf(a['rtf_1thread']):>9} {size:>7}")
    for r in _streaming_rows(report):
        latency = r["latency"]
        lines.append(f"{r['label']:<26} {r['params']:>8} {_pct(r['wer']):>7} {_pct(r['cer']):>7} "
                     f"{_rtf(r['rtf']):>9} {r['size']:>7}"
                     + ("" if latency is None else f"  first partial {_ms(latency['first_partial'])} ms, "
                        f"final {_ms(latency['final'])} ms (median (p95))"))
    return lines


def _streaming_rows(report: dict) -> list[dict]:
    """The streaming student's rows, when the plan has one: the PyTorch model, then its artifact;
    the latency (and RTF) on the row it was measured on (``latency_of``)."""
    m = report.get("student_stream")
    if m is None:
        return []
    chunk = f"{1000 * m['latency']['chunk_seconds']:.0f} ms"
    rows = [{"label": f"streaming student {chunk}", "runtime": "pytorch", "params": f"{m['params'] / 1e6:.2f}M",
             "wer": m["wer"], "cer": m["cer"], "size": "", "status": "reference"}]
    a = m.get("artifact")
    if a is not None:
        size = "-" if a["size_bytes"] is None else f"{a['size_bytes'] / 1e6:.2f}"
        rows.append({"label": f"{a['format']} {a['precision']}" + ("" if a["status"] == "ok" else f" ({a['status']})"),
                     "runtime": f"{a['format']} {a['precision']}", "params": "", "wer": a["wer"], "cer": a["cer"],
                     "size": size, "status": a["status"]})
    for r in rows:
        measured = r["runtime"] == m["latency_of"]
        r["latency"], r["rtf"] = (m["latency"], m["rtf_1thread"]) if measured else (None, None)
    return rows


def _streaming_section(report: dict) -> list[str]:
    """REPORT.md's streaming table: WER while streaming and the latency an app would see."""
    rows = _streaming_rows(report)
    if not rows:
        return []
    m = report["student_stream"]
    lines = ["## Streaming student", "",
             f"The KD student's recipe with the preset `student-stream` (causal convolution, attention in "
             f"chunks of {m['chunk_size']} encoder frames, {1000 * m['latency']['chunk_seconds']:.0f} ms, with "
             f"{m['left_chunks']} chunks of left context) and a raw log-mel front end, distilled from the same "
             "cache, then exported with its state and run chunk by chunk as an app would (bundle_stream/, "
             "its contract.json says how). It emits text while the audio arrives; WER is that of the text "
             f"it emits (the full-context KD student's: {_pct(report['student_kd']['wer'])} %). Latency on one thread, audio arriving in real time (eval/latency.py): first "
             "partial = from the speech onset to the first token, final = from the end of the audio to "
             "the final text, median (p95) over the test set.", "",
             "| model | status | test WER % | first partial ms | final ms | compute per chunk ms | RTF (1 thread) | size MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        latency = r["latency"]
        if latency is None:
            first = final = compute = "-"
        else:
            no_token = latency["no_token"]
            first = _ms(latency["first_partial"]) + (f" ({no_token} of {latency['utterances']} without a token)"
                                                     if no_token else "")
            final, compute = _ms(latency["final"]), f"{1000 * latency['chunk_compute']['median']:.1f}"
        label = r["label"] + (" (PyTorch)" if r["runtime"] == "pytorch" else "")
        lines.append(f"| {label} | {r['status']} | {_pct(r['wer'])} | {first} | {final} | {compute} | "
                     f"{_rtf(r['rtf'])} | {r['size'] or '-'} |")
    return [*lines, ""]


def render_demo_markdown(report: dict) -> str:
    """``REPORT.md`` from ``report.json``'s dict: teacher against students, the artifacts, training."""
    d = report["demo"]
    plan = d["plan"]
    t, kd, ctc = report["teacher"], report["student_kd"], report["student_ctc"]
    real = d.get("real_manifest") is not None
    rel = (kd["wer"] / ctc["wer"]) if ctc["wer"] else None
    lines = [
        "# asrkd demo report",
        "",
        f"Plan `{plan['name']}`: {d['data']['train']['utterances']} synthetic training utterances "
        f"({d['data']['train']['audio_seconds'] / 60:.1f} min, {d['data']['train']['voices']} voices), "
        f"tested on {d['data']['test']['utterances']} utterances from {d['data']['test']['voices']} "
        "voices no model heard in training. RTF: compute seconds per audio second, PyTorch eager or "
        "the artifact's runtime, one thread, median of repeats. Lower is better everywhere.",
        "",
        "## Teacher vs students",
        "",
        "| model | params | GFLOPs / audio s | test WER % | test CER % | RTF (1 thread) |"
        + (" real-speech WER % |" if real else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if real else ""),
    ]
    for key in MODEL_LABELS:
        m = report[key]
        lines.append(f"| {model_label(report, key)} | {m['params'] / 1e6:.2f} M | {_gflops(m['gflops_per_audio_second'])} | "
                     f"{_pct(m['wer'])} | {_pct(m['cer'])} | {_rtf(m['rtf_1thread'])} |"
                     + (f" {_pct(m.get('wer_real'))} |" if real else ""))
    lines += [
        "",
        f"The student has {t['params'] / kd['params']:.1f}x fewer parameters than the teacher and runs "
        f"{t['rtf_1thread'] / kd['rtf_1thread']:.1f}x faster. "
        + ("" if rel is None else
           f"Knowledge distillation changed its test WER from {_pct(ctc['wer'])} % (CTC only) to "
           f"{_pct(kd['wer'])} % ({rel:.2f}x), with the same data, augmentation and steps."
           if t.get("identity") is None else
           f"Learning from the teacher alone, without the training transcripts, it reached {_pct(kd['wer'])} % "
           f"test WER; the same student on the ground-truth text (CTC only, same audio, augmentation and "
           f"epochs) {_pct(ctc['wer'])} % ({rel:.2f}x)."),
    ]
    if t.get("identity") is not None:
        lines += ["", _pretrained_teacher(t, plan["stages"]["student_kd"]["kd"]["weights"])]
    if real:
        lines += ["", f"Real speech: `{d['real_manifest']}` (a different domain from the synthetic "
                  "training data; expect a higher WER)."]
    lines += ["", "![WER against RTF](plots/pareto.png)", "",
              "## Mobile artifacts (the KD student)", "",
              "| artifact | status | test WER % | agreement with PyTorch % | RTF 1 thread | RTF all threads | size MB | load s |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for a in report["export"]["artifacts"]:
        size = "-" if a["size_bytes"] is None else f"{a['size_bytes'] / 1e6:.2f}"
        load = "-" if a.get("load_seconds") is None else f"{a['load_seconds']:.2f}"
        reason = (a.get("reason") or "").removeprefix("not run: ")
        status = a["status"] + (f": {reason}" if a["status"] != "ok" and reason else "")
        lines.append(f"| {a['format']} {a['precision']} | {status} | {_pct(a['wer'])} | "
                     f"{_pct(a['agreement'])} | {_rtf(a['rtf_1thread'])} | {_rtf(a['rtf_all_threads'])} | "
                     f"{size} | {load} |")
    # sherpa-onnx computes its own features: why its transcripts may differ from PyTorch's.
    notes = {(a.get("checks") or {}).get("frontend_note") for a in report["export"]["artifacts"]
             if (a.get("checks") or {}).get("frontend_matches_sherpa") is False}
    lines += [f"\nsherpa-onnx: {note}." for note in sorted(notes)]
    gate = report["export"]["gate"]
    lines += ["", f"Gate (each artifact within {gate['max_wer_increase']:g} WER point(s) of PyTorch): "
              f"{'passed' if gate['passed'] else 'FAILED: ' + str(gate.get('reason'))}. "
              "The bundle, ready for an app (artifacts, tokens.txt, contract.json, its own REPORT.md), "
              "is in `bundle/`.", "",
              "![artifact sizes](plots/sizes.png)", ""]
    if report["export"].get("edge_cases"):
        lines += _edge_case_section(report["export"])
    lines += _streaming_section(report)
    lines += ["## Training", "",
              "![training curves](plots/training.png)", "",
              "| stage | seconds |", "|---|---:|"]
    lines += [f"| {s} | {v:.0f} |" for s, v in d["stage_seconds"].items() if s != "report"]
    parallel = d.get("parallel_students")  # as run (with --threads 1 they train one after the other)
    if plan.get("parallel_students") if parallel is None else parallel:
        lines += ["", "The CTC-only student trains in a second process during the student_kd stage (one "
                  "thread each); its own stage only waits for it to finish."]
    lines += ["", f"Posterior cache: {d['cache']}", ""]
    return "\n".join(lines)


# What each KD term of a student distilled from a text-only teacher learns (`_pretrained_teacher`).
_SEQUENCE_TEACHER_TERMS = {
    "ctc": "CTC on the teacher's best hypothesis (pseudo-labels; the utterances its filter dropped are left out: "
           "the cache line below counts them)",
    "sequence": "sequence KD on its N-best",
    "feature": "feature KD from its encoder output",
}


def _pretrained_teacher(t: dict, weights: dict) -> str:
    """REPORT.md's paragraph on a pretrained teacher: who it is, its licence, and what the KD
    student (its ``kd.weights``, as plain data) learnt from it."""
    who = t["identity"]
    from asrkd.teachers.whisper import RUNTIME_NAMES

    runtime = RUNTIME_NAMES.get(t["runtime"], t["runtime"])
    terms = [text for term, text in _SEQUENCE_TEACHER_TERMS.items() if weights[term]["value"] > 0]
    return (f"The teacher is {who['name']}, from {who['source']}, licence {who['license']}; pretrained, not "
            f"trained here: teacher spec `{t['spec']}` (docs/TEACHERS.md), run by {runtime}. Its row scores "
            "its best hypothesis per utterance in the student's spelling; its RTF is one utterance per call, "
            "each encoded as a 30 s window. The KD student trained on the training audio without its text: "
            f"{'; '.join(terms)}. The CTC-only student, trained on the ground-truth text, is the reference.")


def _edge_case_section(export: dict) -> list[str]:
    """The export's edge-case table (plan ``export.edge_cases``): the KD student in PyTorch and
    each artifact under every condition of `eval.edge_cases`, on the test set."""
    lines = edge_case_markdown(export["edge_cases"], export["artifacts"])
    lines[1] = "## Edge cases (the KD student and its artifacts, test set)"
    note = ("Conditions and fields: docs/CONFIDENCE.md, \"Edge cases\". An artifact that tracks PyTorch under a "
            "condition has the same WER and an agreement near 100 %; the PyTorch column is how much the model "
            "itself suffers.")
    if not export.get("confidence"):
        note += " No fallback rate: the plan sets no export.fallback_target_precision."
    return [*lines, "", note, ""]
