"""One runner per runtime, one interface: ``load(path, threads)`` -> ``run(pcm)`` -> log-probs.

    runner = open_runner("tflite", "bundle/model.int8.tflite", threads=1)
    log_probs = runner.run(pcm)          # pcm: float32 [N] at the contract's sample rate
                                          # log_probs: float32 [T', V], valid frames only

| format     | runtime                                   | input lengths                   |
|------------|-------------------------------------------|---------------------------------|
| torch      | PyTorch eager (the checkpoint itself)     | any                             |
| onnx       | onnxruntime, CPU execution provider       | any                             |
| tflite     | ai_edge_litert Interpreter (XNNPACK)      | its signatures' windows         |
| executorch | ExecuTorch Python runtime (XNNPACK)       | up to its planned maximum       |
| coreml     | coremltools predict, **macOS only**       | enumerated windows or a range   |
| sherpa-onnx| sherpa-onnx OfflineRecognizer (nemo_ctc)  | any                             |

What ``run`` does with lengths (the same for every runner, so artifacts are compared on equal
terms; it is what contract.json tells apps to do):
- shorter than the artifact's minimum (only Core ML with a range input has one): zero-padded,
  real length in ``pcm_lens``;
- a fixed-window artifact: zero-padded to the smallest window that holds the audio;
- longer than the artifact's maximum: split into consecutive pieces of the maximum length, each
  run on its own, valid frames concatenated (``last_chunks`` says how many pieces were used).

``threads``: onnxruntime intra-op threads, LiteRT ``num_threads``, ExecuTorch's thread pool
(process-wide), ``torch.set_num_threads`` (process-wide, set on every call), sherpa-onnx's
``num_threads``. Core ML chooses its own compute units and threads; ``threads`` is ignored there.

sherpa-onnx decodes by itself (its own front end and greedy search, what an app using it gets):
its runner's ``run`` returns None instead of log-probs and leaves the transcript in
``last_text`` (``decodes_text``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from asrkd.contract import SAMPLE_RATE
from asrkd.errors import AsrkdError
from asrkd.text import TOKENS_FILENAME, WORD_SEP

FORMATS = ("torch", "onnx", "tflite", "executorch", "coreml", "sherpa-onnx")

SHERPA_LOADER = "sherpa_onnx.OfflineRecognizer.from_nemo_ctc"
# Metadata sherpa-onnx's NeMo CTC loader reads with SHERPA_ONNX_READ_META_DATA: it calls exit(255)
# when one is missing (normalize_type may be empty, is_giga_am has a default).
SHERPA_REQUIRED_METADATA = ("vocab_size", "subsampling_factor", "normalize_type")


class RunnerUnavailable(RuntimeError):
    """The runtime cannot execute here (e.g. Core ML on Linux); the message says why."""


class ArtifactError(AsrkdError, OSError):
    """An artifact that is missing, or that its runtime cannot load (truncated, another format);
    the message names the file. An ``OSError``: like a file that cannot be read."""


class Runner(ABC):
    """Base class: subclasses load the artifact and implement ``_forward`` for one padded input."""

    format = ""
    #: fixed input lengths in samples, ascending (None: any length up to ``max_samples``)
    windows: list[int] | None = None
    #: longest input in samples (None: unbounded)
    max_samples: int | None = None
    #: shortest input in samples
    min_samples: int = 1
    #: whether ``threads`` sets the runtime's threads (Core ML picks its own)
    sets_threads: bool = True
    #: whether the runtime decodes by itself: ``run`` returns None, the text is in ``last_text``
    decodes_text: bool = False

    def __init__(self, path: str | Path | None, threads: int = 1):
        self.path = None if path is None else Path(path)
        self.threads = int(threads)
        self.last_chunks = 0

    @classmethod
    def load(cls, path: str | Path, threads: int = 1) -> Runner:
        return cls(path, threads)

    @abstractmethod
    def _forward(self, pcm: np.ndarray, length: int) -> tuple[np.ndarray, int]:
        """pcm float32 [1, L] (padded), length = real samples -> (log_probs [T', V], out_len)."""

    def run(self, pcm: np.ndarray) -> np.ndarray:
        """Log-posteriors of one utterance ``pcm [N]`` (float32 in [-1, 1]) -> ``[T', V]``."""
        pcm = np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1)
        limit = self.max_samples
        if limit is None or len(pcm) <= limit:
            pieces = [pcm]
        else:
            pieces = [pcm[i : i + limit] for i in range(0, len(pcm), limit)]
        self.last_chunks = len(pieces)
        return np.concatenate([self._run_piece(p) for p in pieces], axis=0)

    def input_length(self, n: int) -> int:
        """Length the input of ``n`` samples is padded to."""
        if self.windows:
            for w in self.windows:
                if w >= n:
                    return w
            raise ValueError(f"{n} samples exceed the largest window {self.windows[-1]}")
        return max(n, self.min_samples)

    def _run_piece(self, piece: np.ndarray) -> np.ndarray:
        n = len(piece)
        padded = np.zeros((1, self.input_length(n)), dtype=np.float32)
        padded[0, :n] = piece
        log_probs, out_len = self._forward(padded, n)
        return np.asarray(log_probs[:out_len], dtype=np.float32)


class TorchRunner(Runner):
    """The checkpoint in PyTorch eager mode.

    ``graph``: any module that maps ``(pcm [1, N], pcm_lens [1])`` to ``(log_probs [1, T', V],
    out_lens [1], ...)``, such as the export graph the artifacts hold (the export passes it, so
    its reference runs exactly what it converted; ``path`` may then be None, for a model that is
    only in memory). Without one, the checkpoint at ``path`` is loaded and run as
    `asrkd.inference.log_posteriors` (LogMel -> Conformer), the same numbers.
    """

    format = "torch"

    def __init__(self, path, threads: int = 1, graph=None):
        super().__init__(path, threads)
        if graph is None:
            from functools import partial

            from asrkd.checkpoint import load_checkpoint, resolve_checkpoint
            from asrkd.inference import log_posteriors

            loaded = load_checkpoint(resolve_checkpoint(path))
            graph = partial(log_posteriors, loaded.model, loaded.frontend)
        self.graph = graph

    def _forward(self, pcm, length):
        import torch

        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            out = self.graph(torch.from_numpy(pcm), torch.tensor([length], dtype=torch.long))
        return out[0][0].numpy(), int(out[1][0])


class OnnxRunner(Runner):
    """An ``.onnx`` file in onnxruntime's CPU execution provider: any length and batch."""

    format = "onnx"

    def __init__(self, path, threads: int = 1):
        super().__init__(path, threads)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in self.session.get_inputs()]
        if names != ["pcm", "pcm_lens"]:
            raise ValueError(f"{path}: inputs are {names}; runners take PCM-input graphs (pcm, pcm_lens)")

    def _forward(self, pcm, length):
        log_probs, out_lens = self.session.run(
            ["log_probs", "out_lens"], {"pcm": pcm, "pcm_lens": np.array([length], dtype=np.int64)}
        )
        return log_probs[0], int(out_lens[0])


class LiteRTRunner(Runner):
    """A multi-signature ``.tflite``: one signature per window, picked by input length."""

    format = "tflite"

    def __init__(self, path, threads: int = 1):
        super().__init__(path, threads)
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=self.threads)
        self._runners = {}
        for name, sig in self.interpreter.get_signature_list().items():
            if sorted(sig["inputs"]) != ["pcm", "pcm_lens"]:
                raise ValueError(f"{path}: signature {name} takes {sig['inputs']}, not (pcm, pcm_lens)")
            runner = self.interpreter.get_signature_runner(name)
            details = runner.get_input_details()
            self._runners[int(details["pcm"]["shape"][1])] = (runner, details["pcm_lens"]["dtype"])
        self.windows = sorted(self._runners)
        self.max_samples = self.windows[-1]

    def _forward(self, pcm, length):
        runner, len_dtype = self._runners[pcm.shape[1]]
        out = runner(pcm=pcm, pcm_lens=np.array([length], dtype=len_dtype))
        return out["log_probs"][0], int(out["out_lens"][0])


class ExecuTorchRunner(Runner):
    """A ``.pte`` program in ExecuTorch's Python runtime: any length up to its planned maximum."""

    format = "executorch"

    def __init__(self, path, threads: int = 1):
        super().__init__(path, threads)
        import torch
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        self._torch = torch
        _unsafe_reset_threadpool(self.threads)  # process-wide, like torch.set_num_threads
        program = Runtime.get().load_program(str(path))
        self.method = program.load_method("forward")
        # Memory is planned for the upper bound of the dynamic length: that is the maximum.
        meta = self.method.metadata.input_tensor_meta(0)
        self.max_samples = int(meta.sizes()[1])

    def _forward(self, pcm, length):
        torch = self._torch
        out = self.method.execute((torch.from_numpy(pcm), torch.tensor([length], dtype=torch.long)))
        return out[0][0].numpy(), int(out[1][0])


class CoreMLRunner(Runner):
    """``coremltools`` predict on an ``.mlpackage``: macOS only (the Core ML framework).

    Written for macOS and not executed in asrkd's Linux CI: on Linux ``load`` raises
    ``RunnerUnavailable`` and the export report says ``not_run: needs macOS``.
    """

    format = "coreml"
    sets_threads = False

    def __init__(self, path, threads: int = 1):
        super().__init__(path, threads)
        if sys.platform != "darwin":
            raise RunnerUnavailable(
                f"not run: needs macOS (Core ML predict is only available on Apple platforms, this is {sys.platform})"
            )
        import coremltools as ct

        self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)
        spec = self.model.get_spec()
        arr = spec.description.input[0].type.multiArrayType
        if arr.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
            self.windows = sorted(int(s.shape[1]) for s in arr.enumeratedShapes.shapes)
            self.max_samples = self.windows[-1]
        else:
            low, high = arr.shapeRange.sizeRanges[1].lowerBound, arr.shapeRange.sizeRanges[1].upperBound
            self.min_samples, self.max_samples = int(low), int(high)

    def _forward(self, pcm, length):
        out = self.model.predict({"pcm": pcm, "pcm_lens": np.array([length], dtype=np.int32)})
        return np.asarray(out["log_probs"])[0], int(np.asarray(out["out_lens"]).reshape(-1)[0])


class SherpaLoadError(RuntimeError):
    """sherpa-onnx refused a model (it would have ended the process); the message says why."""


def sherpa_metadata(path: str | Path, check: bool = True) -> dict[str, str]:
    """The metadata of the ONNX model at ``path``. With ``check``, raises `SherpaLoadError`
    naming the keys sherpa-onnx's NeMo CTC loader needs and the file lacks (sherpa itself would
    exit(255))."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in SHERPA_REQUIRED_METADATA if k not in meta]
    if check and missing:
        raise SherpaLoadError(
            f"{path}: metadata {missing} missing; sherpa-onnx's NeMo CTC loader needs "
            f"{list(SHERPA_REQUIRED_METADATA)} (re-export with `asrkd export --formats sherpa-onnx`)"
        )
    return meta


def sherpa_recognizer(path: str | Path, threads: int = 1, meta: dict[str, str] | None = None):
    """sherpa-onnx's ``OfflineRecognizer.from_nemo_ctc`` (greedy search) for the model at
    ``path`` and the tokens.txt beside it, with the sample rate and feature dimension its
    metadata states (``meta``: already read). sherpa ends the process on a model it cannot use:
    check it first (`SherpaOnnxRunner`, `check_sherpa_loads`)."""
    import sherpa_onnx

    meta = sherpa_metadata(path, check=False) if meta is None else meta
    options = {k: int(meta[k]) for k in ("sample_rate", "feature_dim") if k in meta}
    return sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
        model=str(path), tokens=str(Path(path).parent / TOKENS_FILENAME), num_threads=threads,
        decoding_method="greedy_search", **options,
    )


def check_sherpa_loads(path: str | Path, timeout: float = 300) -> None:
    """Load the model at ``path`` (tokens.txt beside it) with sherpa-onnx in a fresh process:
    sherpa calls ``exit()`` on a model it cannot use, which would end this one. Raises
    `SherpaLoadError` with sherpa's own message."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from eval.runners import sherpa_recognizer; "
         "sherpa_recognizer(sys.argv[1])", str(path)],
        capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise SherpaLoadError(f"{path}: sherpa-onnx could not load it (exit status {proc.returncode}): {said}")


class SherpaOnnxRunner(Runner):
    """A model of a sherpa-onnx folder (``model.onnx`` / ``model.int8.onnx``, ``tokens.txt``
    beside it) in sherpa-onnx's ``OfflineRecognizer.from_nemo_ctc`` with greedy search: sherpa's
    features, its model call and its decoding, as an app gets them. Any length.

    The metadata and tokens.txt are checked first (`sherpa_metadata`): sherpa would exit the
    process without them. `check_sherpa_loads` goes further and loads it in a subprocess.
    """

    format = "sherpa-onnx"
    decodes_text = True

    def __init__(self, path, threads: int = 1):
        super().__init__(path, threads)
        meta = sherpa_metadata(path)
        tokens = Path(path).parent / TOKENS_FILENAME
        if not tokens.is_file():
            raise SherpaLoadError(f"{tokens}: missing; sherpa-onnx needs it next to {Path(path).name}")
        self.sample_rate = int(meta.get("sample_rate", SAMPLE_RATE))
        self.recognizer = sherpa_recognizer(path, self.threads, meta)
        self.last_text = ""
        self.last_tokens: list[str] = []
        self.last_timestamps: list[float] = []

    def run(self, pcm: np.ndarray) -> None:
        """Decode ``pcm [N]`` (float32 at the model's sample rate): the transcript goes to
        ``last_text`` (word separators as spaces), its tokens and their start times (seconds) to
        ``last_tokens`` and ``last_timestamps``. Returns None: sherpa gives no log-probs."""
        stream = self.recognizer.create_stream()
        stream.accept_waveform(self.sample_rate, np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1))
        self.recognizer.decode_stream(stream)
        result = stream.result
        self.last_tokens, self.last_timestamps = list(result.tokens), list(result.timestamps)
        self.last_text = re.sub(r"\s+", " ", result.text.replace(WORD_SEP, " ")).strip()
        self.last_chunks = 1
        return None

    def _forward(self, pcm, length):
        raise TypeError("sherpa-onnx decodes by itself: call run() and read last_text")


RUNNERS: dict[str, type[Runner]] = {
    "torch": TorchRunner,
    "onnx": OnnxRunner,
    "tflite": LiteRTRunner,
    "executorch": ExecuTorchRunner,
    "coreml": CoreMLRunner,
    "sherpa-onnx": SherpaOnnxRunner,
}


def open_runner(fmt: str, path: str | Path, threads: int = 1) -> Runner:
    """Load the artifact (or, for ``torch``, the checkpoint) at ``path`` with ``threads`` threads.

    Raises:
        ArtifactError: the file is missing, or the runtime cannot load it (its own error, e.g.
            onnxruntime's InvalidProtobuf, is chained).
        RunnerUnavailable, ImportError: the runtime cannot run here.
    """
    if fmt not in RUNNERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    if fmt != "torch" and not Path(path).exists():
        raise ArtifactError(f"{path}: no such {fmt} artifact; export it again (asrkd export) or restore the file")
    try:
        return RUNNERS[fmt].load(path, threads)
    except (RunnerUnavailable, ImportError, AsrkdError):
        raise
    except Exception as e:  # each runtime has its own error types for a file it cannot read
        raise ArtifactError(f"{path}: {fmt} cannot load it ({type(e).__name__}: {e}); the file is damaged or "
                            f"not an asrkd {fmt} artifact: export it again (asrkd export)") from e


class SequenceTeacherRunner:
    """A sequence teacher (`asrkd.teachers.WhisperTeacher`, ...) with a runner's ``run(pcm)``, so
    that `eval.rtf.measure` times it and `asrkd.metrics.score` scores it as it does an artifact:
    ``run(pcm [N]) -> text``, its best hypothesis of one utterance in the student's spelling ("" when
    its filter dropped the utterance). One utterance per call, as an app runs it (Whisper encodes
    each as one 30 s window)."""

    def __init__(self, teacher):
        self.teacher = teacher

    def run(self, pcm: np.ndarray) -> str:
        import torch

        wav = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))[None]
        out = self.teacher.sequence_outputs(wav, torch.tensor([wav.shape[1]])).outputs[0]
        return out.nbest[0].text if out.nbest else ""
