"""PNG plots for the demo report (matplotlib, Agg backend: no display needed).

    paths = demo_plots(report, "runs/demo/plots")   # {"pareto": ..., "training": ..., "sizes": ...}

- ``pareto.png``: test WER against one-thread RTF (log scale) for the teacher, both students and
  every artifact that ran; the points no other point beats on both axes are joined (the Pareto
  front). Lower left is better.
- ``training.png``: the ground-truth CTC loss while training (smoothed; for the KD student the
  CTC term alone, so the runs are comparable) and the dev WER after each epoch.
- ``sizes.png``: artifact file sizes, one bar per (format, precision).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

MODEL_STYLE = {  # key: (label, colour, marker)
    "teacher": ("teacher (PyTorch)", "#1f4e79", "s"),
    "student_kd": ("student + KD (PyTorch)", "#2e8b57", "o"),
    "student_ctc": ("student, CTC only (PyTorch)", "#b22222", "o"),
}
FORMAT_COLOUR = {"onnx": "#6a3d9a", "tflite": "#ff7f00", "executorch": "#1f78b4", "coreml": "#7f7f7f"}
PRECISION_MARKER = {"fp32": "D", "fp16": "^", "int8": "v", "pal6": "P", "pal4": "X"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def pareto_points(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (rtf, wer) that no other point beats on both axes, by RTF."""
    front = []
    for i, (r, w) in enumerate(points):
        dominated = any((r2 <= r and w2 <= w) and (r2 < r or w2 < w) for j, (r2, w2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(report: dict, path: Path) -> Path:
    from asrkd.teachers.whisper import RUNTIME_NAMES

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    pts = []
    for key, (label, colour, marker) in MODEL_STYLE.items():
        m = report[key]
        if m.get("rtf_1thread") is None or m.get("wer") is None:
            continue
        # a pretrained teacher runs in its own runtime (asrkd demo --teacher whisper: CTranslate2)
        runtime = RUNTIME_NAMES.get(m.get("runtime"), "PyTorch")
        label = label.replace("(PyTorch)", f"({runtime}, {m['params'] / 1e6:.2f} M params)")
        ax.scatter(m["rtf_1thread"], 100 * m["wer"], s=140, c=colour, marker=marker, label=label,
                   zorder=3, edgecolors="black", linewidths=0.6)
        pts.append((m["rtf_1thread"], 100 * m["wer"]))
    skipped = []
    for a in report["export"]["artifacts"]:
        if a.get("rtf_1thread") is None or a.get("wer") is None:
            skipped.append(f"{a['format']} {a['precision']}")
            continue
        ax.scatter(a["rtf_1thread"], 100 * a["wer"], s=60, c=FORMAT_COLOUR.get(a["format"], "grey"),
                   marker=PRECISION_MARKER.get(a["precision"], "o"), zorder=3, alpha=0.85,
                   label=f"{a['format']} {a['precision']} (KD student)")
        pts.append((a["rtf_1thread"], 100 * a["wer"]))
    if pts:
        front = pareto_points(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", c="grey", lw=1,
                zorder=1, label="Pareto front")
        ax.set_xscale("log")
        top = max(y for _, y in pts)
        ax.set_ylim(0, max(5.0, 1.15 * top))
    ax.set_xlabel("real-time factor, 1 thread (compute s per audio s, log scale)")
    ax.set_ylabel("test WER (%)")
    title = "WER against speed: lower left is better"
    if skipped:
        title += f"\n(not timed here: {', '.join(skipped)})"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    out = _save(fig, path)
    plt.close(fig)
    return out


def read_train_log(run_dir: str | os.PathLike) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, ground-truth CTC loss) and (step, dev WER) from a run's ``train_log.csv``."""
    path = Path(run_dir) / "train_log.csv"
    loss, dev = [], []
    if not path.is_file():
        return loss, dev
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            value = row.get("ctc") or row.get("loss")
            if value:
                loss.append((step, float(value)))
            if row.get("dev_wer"):
                dev.append((step, float(row["dev_wer"])))
    return loss, dev


def _smooth(values: list[float], window: int = 9) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot_training(report: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, (label, colour, _) in MODEL_STYLE.items():
        run_dir = report[key].get("run_dir")
        if not run_dir:
            continue
        loss, dev = read_train_log(run_dir)
        label = label.split(" (")[0]
        if loss:
            loss = [(s, v) for s, v in loss if math.isfinite(v)]
            ax1.plot([s for s, _ in loss], _smooth([v for _, v in loss]), c=colour, label=label)
        if dev:
            ax2.plot([s for s, _ in dev], [100 * w for _, w in dev], "o-", c=colour, label=label)
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training CTC loss per utterance (smoothed)")
    ax1.set_title("Ground-truth CTC loss (KD student: its CTC term)", fontsize=10)
    ax2.set_xlabel("step")
    ax2.set_ylabel("dev WER (%)")
    ax2.set_title("Dev WER after each epoch", fontsize=10)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_sizes(report: dict, path: Path) -> Path:
    plt = _pyplot()
    arts = [a for a in report["export"]["artifacts"] if a.get("size_bytes")]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(3, len(arts)) + 1))
    names = [f"{a['format']} {a['precision']}" for a in arts]
    sizes = [a["size_bytes"] / 1e6 for a in arts]
    bars = ax.barh(names, sizes, color=[FORMAT_COLOUR.get(a["format"], "grey") for a in arts])
    for bar, size in zip(bars, sizes):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {size:.2f} MB", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("file size (MB)")
    ax.set_title("Artifact sizes of the KD student", fontsize=10)
    if sizes:
        ax.set_xlim(0, 1.25 * max(sizes))
    ax.grid(True, axis="x", alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def demo_plots(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {
        "pareto": plot_pareto(report, out_dir / "pareto.png"),
        "training": plot_training(report, out_dir / "training.png"),
        "sizes": plot_sizes(report, out_dir / "sizes.png"),
    }
