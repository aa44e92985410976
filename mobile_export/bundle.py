"""The bundle: one folder an app team drops into its project, and the contract that describes it.

    OUT/
        model.fp32.onnx, model.int8.tflite, model.fp16.mlpackage/, model.int8.pte, ...
        tokens.txt          the vocabulary ("symbol id" per line, blank first)
        contract.json       how to feed the artifacts and read their outputs (this module), and
                            with a fallback target precision the confidence calibration and threshold
        report.json         what each artifact measured (mobile_export/report.py; CI parses it)
        REPORT.md           the same as tables
        MODEL_CARD.md       what the model is, what it was trained on, how well it does
        utterances.jsonl    per-utterance results of every artifact
        reliability.png     with a fallback target precision: the reliability diagram

Every number in ``contract.json`` is derived from the checkpoint's config (front end, model,
tokenizer): nothing here restates a sample rate, hop or vocabulary.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asrkd.confidence import Calibration, Fallback
from asrkd.errors import AsrkdError
from asrkd.models.conformer import count_parameters
from asrkd.teachers.record import distilled_from
from asrkd.text import TOKENS_FILENAME, WORD_SEP
from mobile_export.graph import TENSOR_MEANINGS

if TYPE_CHECKING:
    from mobile_export.source import ExportSource

CONTRACT_FILE = "contract.json"
REPORT_FILE = "report.json"
REPORT_MD = "REPORT.md"
MODEL_CARD = "MODEL_CARD.md"
UTTERANCES_FILE = "utterances.jsonl"
BUNDLE_FORMAT = "asrkd-mobile-bundle"
BUNDLE_VERSION = 1
REPORT_FORMAT = "asrkd-export-report"  # report.json's "format"
STAGING_SUFFIX = ".partial"  # OUT.partial: where an export builds the bundle that replaces OUT
PREVIOUS_SUFFIX = ".previous"  # OUT.previous: the old bundle for the instant of the swap

# What a runner does with audio longer than an artifact accepts (eval/runners.py implements it).
LONG_AUDIO_POLICY = (
    "split into consecutive, non-overlapping pieces of the largest accepted length; each piece "
    "is run on its own and the valid frames of the pieces are concatenated. Words cut at a piece "
    "boundary can be misrecognised: segment long recordings at pauses (e.g. with a VAD) into "
    "pieces no longer than the largest window"
)
SHORT_AUDIO_POLICY = (
    "artifacts with a min_seconds (Core ML with a range input) need at least that much: zero-pad "
    "shorter audio with pcm_lens set to the real length, which changes no valid output frame; "
    "the others accept any length from one sample"
)
DECODING = (
    "greedy CTC: per valid frame take the argmax token (or read token_ids), collapse repeats, drop "
    "blank_id, concatenate the symbols of tokens.txt and replace the word separator with a space"
)


@dataclass
class Artifact:
    """One exported file (or .mlpackage folder) and how it must be fed.

    ``windows_seconds``: the fixed input lengths it accepts (TFLite signatures, Core ML
    enumerated shapes); None for a dynamic time axis, then up to ``max_seconds`` (None: any).
    ``signatures``: TFLite signature name per window. ``checks``: what was verified without
    running it (Core ML program checks on Linux).
    """

    format: str
    precision: str
    path: Path
    windows_seconds: list[float] | None = None
    max_seconds: float | None = None
    min_seconds: float | None = None
    signatures: dict[str, str] | None = None
    description: str = ""
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.format}-{self.precision}"

    @property
    def size_bytes(self) -> int:
        return path_size(self.path)

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = os.path.relpath(self.path, root) if root else str(self.path)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], root: Path | None = None) -> Artifact:
        d = dict(d)
        path = Path(d.pop("path"))
        d.pop("file", None)
        return cls(path=(root / path) if root and not path.is_absolute() else path, **d)


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (an .mlpackage)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def artifact_stem(precision: str) -> str:
    return f"model.{precision}"


CALIBRATION_FORMULAS = {
    "temperature": "p = 1 / (1 + exp(-(ln(c / (1 - c)) + bias) / temperature)), c = the artifact's "
    "confidence output clipped to [1e-6, 1 - 1e-6]",
    "isotonic": "p = linear interpolation of the artifact's confidence output c between the points "
    "(knots_x[i], knots_y[i]); knots_y[0] below knots_x[0], knots_y[-1] above knots_x[-1]",
}


def confidence_contract(calibration: Calibration, fallback: Fallback) -> dict[str, Any]:
    """contract.json's ``confidence``: how to turn the artifacts' ``confidence`` output into
    P(transcript exactly right) (``calibrated_output``: the output that holds it already, with a
    temperature calibration) and when to fall back (docs/CONFIDENCE.md)."""
    return {
        "output": "confidence",
        # a temperature calibration is in the graph too (graph.py): the app reads p directly
        **({"calibrated_output": "calibrated_confidence"} if calibration.method == "temperature" else {}),
        "calibration": calibration.to_dict(),
        "calibrated": CALIBRATION_FORMULAS[calibration.method],
        "fallback_threshold": fallback.threshold,
        "target_precision": fallback.target_precision,
        "rule": "keep the transcript when p >= fallback_threshold; otherwise fall back (server, a larger "
        "model, or ask the user to repeat)",
    }


def read_confidence(out_dir: Path) -> tuple[Calibration, float] | None:
    """The calibration and the fallback threshold of a bundle's contract.json (None if it has none)."""
    conf = read_contract(out_dir).get("confidence")
    if conf is None:
        return None
    return Calibration.from_dict(conf["calibration"]), float(conf["fallback_threshold"])


def contract(source: ExportSource, artifacts: list[Artifact], windows_seconds: list[float],
             root: Path, confidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """``contract.json`` for ``artifacts`` exported from ``source``: its `asrkd.contract.Contract`
    (``to_dict``; the sample rate under ``audio``) plus what the bundle adds (module docstring);
    ``confidence`` (`confidence_contract`) when the export calibrated one; ``streaming``
    (`streaming_contract`) when a streaming artifact is among ``artifacts``."""
    model = source.contract.to_dict()
    frontend = source.contract.frontend
    return {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "audio": {
            "sample_rate": model.pop("sample_rate"),
            "channels": 1,
            "pcm": "float32 mono, samples in [-1, 1] (int16 PCM / 32768)",
        },
        "windows_seconds": list(windows_seconds),
        "window_samples": [source.contract.samples(s) for s in windows_seconds],
        **model,
        "output_frames": "out_lens = ceil(feature_frames / subsampling), feature_frames = "
        + ("(samples + hop_length // 2) // hop_length" if frontend.framing == "kaldi"
           else "1 + samples // hop_length" if frontend.center else "1 + (samples - n_fft) // hop_length"),
        "tokens_file": TOKENS_FILENAME,
        "word_separator": WORD_SEP,
        "decoding": DECODING,
        "long_audio": LONG_AUDIO_POLICY,
        "short_audio": SHORT_AUDIO_POLICY,
        "inputs": {n: TENSOR_MEANINGS[n] for n in source.graph.input_names},
        "outputs": {n: TENSOR_MEANINGS[n] for n in source.graph.output_names},
        "model": {
            "config": source.config.get("model"),
            "step": source.config.get("step"),
            "asrkd_version": source.config.get("asrkd_version"),
            "teacher": distilled_from(source.config.get("train_config")),
        },
        "artifacts": [
            {**a.to_dict(root), "file": os.path.relpath(a.path, root)} for a in artifacts
        ],
        **({"confidence": confidence} if confidence is not None else {}),
        **({"streaming": streaming_contract(source)} if any(a.format in streaming_formats() for a in artifacts)
           else {}),
    }


def streaming_formats() -> tuple[str, ...]:
    """The registry's streaming formats (imported here: the registry imports this module)."""
    from mobile_export.formats import STREAMING_FORMATS

    return STREAMING_FORMATS


def streaming_contract(source: ExportSource) -> dict[str, Any]:
    """contract.json's ``streaming``: how to drive the streaming artifacts of ``source``
    (`mobile_export.stream_graph.StreamGraph.streaming_contract`)."""
    from mobile_export.stream_export import stream_graph

    return stream_graph(source).streaming_contract()


def read_contract(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / CONTRACT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; {out_dir} is not an asrkd export bundle (run `asrkd export` first)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def model_card(source: ExportSource, report: dict) -> str:
    """``MODEL_CARD.md``: what the model is and how it measured, from the checkpoint and report."""
    recorded = source.config
    mc = recorded.get("model", {})
    train = recorded.get("train_config") or {}
    data = train.get("data") if isinstance(train, dict) else None
    c = source.contract
    ref = report.get("reference", {})
    n_params = count_parameters(source.graph.model)
    lines = [
        "# Model card",
        "",
        "## What it is",
        f"A Conformer-CTC speech recogniser ({n_params / 1e6:.2f} M parameters: d_model "
        f"{mc.get('d_model')}, {mc.get('n_layers')} layers, {mc.get('n_heads')} heads, x{mc.get('subsampling')} "
        f"subsampling, {c.vocab_size} output tokens with blank id {c.blank_id}) trained with asrkd "
        f"(checkpoint step {recorded.get('step')}, asrkd {recorded.get('asrkd_version')}). Input: "
        f"{c.sample_rate} Hz mono float PCM; output: CTC log-posteriors every "
        f"{c.output_frame_shift * 1000:g} ms. The log-mel front end is inside every artifact.",
        "",
        "## Training data (as recorded in the checkpoint)",
    ]
    if data:
        lines += ["```json", json.dumps(data, indent=2, ensure_ascii=False), "```"]
    elif train:
        lines += ["The checkpoint records this training configuration:", "```json",
                  json.dumps(train, indent=2, ensure_ascii=False)[:4000], "```"]
    else:
        lines.append("Not recorded: the checkpoint's `train_config` is empty. Ask whoever trained it.")
    kd = train.get("kd") if isinstance(train, dict) else None
    if kd:
        lines += ["", "Distillation settings recorded in the checkpoint:", "```json",
                  json.dumps(kd, indent=2, ensure_ascii=False), "```"]
    metrics = recorded.get("metrics") or {}
    if metrics:
        lines += ["", "Metrics stored in the checkpoint at save time:", "```json",
                  json.dumps(metrics, indent=2), "```"]
    teacher = distilled_from(train if isinstance(train, dict) else None)
    if teacher:
        who = teacher.get("model") or {}
        lines += ["", "## Teacher", f"Distilled from `{teacher.get('spec') or teacher.get('kind')}`"
                  + (f": {who.get('name')}, from {who.get('source')}, licence **{who.get('license')}**"
                     if who else "") + f"; weights sha256 {teacher.get('weights', 'not recorded')} "
                  f"({teacher['recorded']}). The student's weights may inherit the teacher's terms."]
    lines += [
        "",
        "## Intended use",
        "On-device transcription of short utterances in the language and domain of the training "
        "data, decoded greedily (see contract.json `decoding`). Not evaluated for other languages, "
        "accents, far-field or noisy audio unless the training data above covers them.",
        "",
        "## Measured (this export, see REPORT.md)",
        f"Evaluation set: {report.get('eval', {}).get('manifest')} "
        f"({report.get('eval', {}).get('utterances')} utterances, "
        f"{_fmt(report.get('eval', {}).get('audio_seconds'), '{:.1f}')} s).",
        "",
        f"PyTorch reference: WER {_pct(ref.get('wer'))}, CER {_pct(ref.get('cer'))}, "
        f"RTF {_fmt(ref.get('rtf_1thread'), '{:.4f}')} on one thread of the export machine.",
        "",
        "| artifact | status | WER | CER | agreement | RTF (1 thread) | size |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in report.get("artifacts", []):
        lines.append(
            f"| {a['format']} {a['precision']} | {a['status']} | {_pct(a.get('wer'))} | {_pct(a.get('cer'))} "
            f"| {_pct(a.get('agreement'))} | {_fmt(a.get('rtf_1thread'), '{:.4f}')} "
            f"| {_mb(a.get('size_bytes'))} |"
        )
    lines += [
        "",
        "RTF is measured on the export machine's CPU, not on a phone: use it to compare artifacts, "
        "and measure on your target devices.",
        "",
        "## Limitations",
        "- Greedy CTC without a language model: errors are per character/token, spelling is not "
        "corrected.",
        f"- Audio longer than the largest window ({max(report.get('windows_seconds') or [0]):g} s) is "
        "split into pieces without overlap (contract.json `long_audio`).",
        "- Quantized artifacts are verified on this evaluation set only; check them on your data.",
        "- Core ML artifacts can only be run on Apple platforms; when exported on Linux their "
        "numbers are not measured (report status `not_run`).",
        "",
        "## License",
        "The asrkd code is Apache-2.0. The weights inherit the terms of the data and teacher they "
        "were trained on (see the training data above): check those before shipping.",
        "",
    ]
    return "\n".join(lines)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def _fmt(x, spec: str) -> str:
    return "–" if x is None else spec.format(x)


def _mb(x) -> str:
    return "–" if x is None else f"{x / 1e6:.2f} MB"


class OutputFolderError(AsrkdError, ValueError):
    """An export's output folder that holds something other than an earlier asrkd bundle."""


def is_bundle(folder: Path) -> bool:
    """True for a folder an earlier ``asrkd export`` wrote: its contract.json or (an export that
    stopped early) its report.json says so."""
    for name, fmt in ((CONTRACT_FILE, BUNDLE_FORMAT), (REPORT_FILE, REPORT_FORMAT)):
        try:
            d = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("format") == fmt:
            return True
    return False


def holds_artifacts(folder: Path) -> bool:
    """True for a bundle worth keeping: one with a contract.json (an export that got as far as
    its artifacts), not just the report of an export that stopped before them."""
    return (Path(folder) / CONTRACT_FILE).is_file()


def _beside(out_dir: Path, suffix: str) -> Path:
    out_dir = Path(os.path.abspath(out_dir))  # "." has no name to add a suffix to
    return out_dir.with_name(out_dir.name + suffix)


def staging_folder(out_dir: Path) -> Path:
    """``OUT.partial``: the folder next to ``OUT`` where a new bundle is built before the swap."""
    return _beside(Path(out_dir), STAGING_SUFFIX)


def check_output_folder(out_dir: Path) -> None:
    """Raise `OutputFolderError` unless ``out_dir`` is new, empty or an earlier asrkd bundle (the
    only folders an export may replace). Touches nothing."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputFolderError(f"{out_dir}: exists and is not a folder; choose a new folder for the bundle")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_bundle(out_dir):
        raise OutputFolderError(
            f"{out_dir}: exists, is not empty and is not an asrkd bundle (no {CONTRACT_FILE} or {REPORT_FILE} "
            "of an earlier export); an export replaces only its own bundle: choose a new or empty folder")


def begin_bundle(out_dir: Path) -> Path:
    """Check ``out_dir`` (`check_output_folder`), finish or undo what a killed export left beside
    it, and return an empty staging folder (`staging_folder`) to build the new bundle in."""
    out_dir = Path(out_dir)
    previous = _beside(out_dir, PREVIOUS_SUFFIX)
    if previous.exists():
        if not (previous.is_dir() and is_bundle(previous)):
            raise OutputFolderError(f"{previous}: exists and is not an asrkd bundle; move it away (an export "
                                    f"of {out_dir.name} puts the old bundle there while it swaps in the new one)")
        if out_dir.exists():  # killed after the swap: OUT is the new bundle
            shutil.rmtree(previous)
        else:  # killed between the two renames: put the old bundle back
            os.replace(previous, out_dir)
    check_output_folder(out_dir)
    staging = staging_folder(out_dir)
    if staging.exists():
        if not staging.is_dir() or (any(staging.iterdir()) and not is_bundle(staging)):
            raise OutputFolderError(f"{staging}: exists and is not an unfinished asrkd bundle; move it away "
                                    f"(an export of {out_dir.name} builds there)")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def replace_bundle(staging: Path, out_dir: Path) -> None:
    """Put the finished bundle ``staging`` in place of ``out_dir`` as a whole: the old bundle is
    renamed aside, the new one renamed in, the old one deleted. Each rename is atomic; a kill
    between them leaves ``OUT.previous``, which the next `begin_bundle` puts back."""
    out_dir = Path(out_dir)
    previous = _beside(out_dir, PREVIOUS_SUFFIX)
    if out_dir.exists():
        os.replace(out_dir, previous)
    os.replace(staging, out_dir)
    if previous.exists():
        shutil.rmtree(previous)


def zip_bundle(out_dir: Path) -> Path:
    """``OUT.zip`` next to ``OUT`` with the folder's content (an .mlpackage stays a folder inside)."""
    out_dir = Path(out_dir)
    target = out_dir.with_name(out_dir.name + ".zip")
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(out_dir.rglob("*")):
            if p.is_file():
                zf.write(p, Path(out_dir.name) / p.relative_to(out_dir))
    os.replace(tmp, target)
    return target


def remove_path(path: Path) -> None:
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
