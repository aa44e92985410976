"""Streaming artifacts (``onnx-stream``, ``tflite-stream``, ``coreml-stream`` on macOS) driven chunk
by chunk in their own runtimes, as an app would: from the bundle's ``contract.json`` alone.

    stepper = open_stepper("bundle/", "onnx-stream", "int8", threads=1)   # or StreamStepper subclasses
    stepper.reset()
    ids = stepper.step(pcm[: stepper.chunk_samples + stepper.lookahead_samples])   # new token ids
    ids += stepper.step(next_chunk)                 # chunk_samples each
    ids += stepper.finish()                         # flush: the contract's zeros, the last chunk
    log_probs = stepper.run(pcm)                    # a whole utterance: [T', V], valid frames only

Each stepper is an `eval.latency.ChunkStepper` (``chunk_samples``, ``lookahead_samples``,
``reset``, ``step``, ``finish``), so `eval.latency.measure_latency` times it, and it has ``run``
like an `eval.runners.Runner`, so `eval.report.transcribe` scores it.

What a call does is contract.json's ``streaming`` section (mobile_export/stream_graph.py writes
it): the state starts at zeros with the utterance's first ``lookahead_samples`` samples written
into ``samples`` after ``left_padding_samples`` zeros; every ``chunk_samples`` samples after them
are one call, whose ``next_X`` outputs are the next call's ``X`` inputs; at the end zeros are pushed
until the chunks cover the utterance's feature frames, and the log-prob frames past
``ceil(feature_frames / subsampling)`` are dropped.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from asrkd.contract import Contract
from asrkd.streaming import StreamingError
from eval.latency import CtcCollapse

CONTRACT_FILE = "contract.json"


def read_streaming_contract(folder: str | Path) -> dict[str, Any]:
    """A bundle's ``contract.json``, checked to have a ``streaming`` section.

    Raises:
        StreamingError: the file is missing, not JSON, or has no ``streaming`` section; names it.
    """
    path = Path(folder) / CONTRACT_FILE
    if not path.is_file():
        raise StreamingError(f"{path}: missing; {folder} is not an asrkd export bundle")
    try:
        contract = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # bad JSON or UTF-8
        raise StreamingError(f"{path}: not readable JSON ({e}); export the bundle again") from None
    if not isinstance(contract, dict) or "streaming" not in contract:
        raise StreamingError(f"{path}: no 'streaming' section; the bundle holds no streaming artifact "
                         "(export a streaming checkpoint, e.g. preset student-stream)")
    return contract


class StreamStepper(ABC):
    """One streaming artifact, one utterance at a time (module docstring). Subclasses load the
    artifact and implement `_call` (one call of the graph) and `io_specs` (its real tensors)."""

    format = ""

    def __init__(self, path: str | Path, contract: dict[str, Any], threads: int = 1):
        self.path, self.threads = Path(path), int(threads)
        self.contract = Contract.from_dict(contract)
        s = self.streaming = contract["streaming"]
        self.chunk_samples = int(s["chunk_samples"])
        self.lookahead_samples = int(s["lookahead_samples"])
        self.last_chunks = 1  # eval.report.transcribe: the utterance ran as one stream
        self.collapse = CtcCollapse(self.contract.blank_id)
        self.reset()

    @classmethod
    def load(cls, path: str | Path, threads: int = 1) -> StreamStepper:
        """The artifact at ``path``, with the contract.json of its bundle (the folder it is in)."""
        return cls(path, read_streaming_contract(Path(path).parent), threads)

    @abstractmethod
    def _call(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call: ``pcm`` and every state tensor by name -> every output by name."""

    @abstractmethod
    def io_specs(self) -> dict[str, dict[str, tuple[list[int], str]]]:
        """The artifact's real tensors: ``{"inputs": {name: (shape, dtype)}, "outputs": {...}}``."""

    def reset(self) -> None:
        """A new utterance: the contract's initial state."""
        self.state = {t["name"]: np.full(t["shape"], t["initial"], dtype=t["dtype"])
                      for t in self.streaming["states"]}
        self._primed = 0  # of the first lookahead_samples samples, how many are in the state
        self._pending = np.zeros(0, dtype=np.float32)
        self._received = self._calls = self._kept = 0
        self._log_probs: list[np.ndarray] = []
        self.collapse.reset()

    def step(self, pcm: np.ndarray) -> list[int]:
        """Feed the next samples (any count) -> the token ids of the chunks this completed."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self._received += pcm.size
        if self._primed < self.lookahead_samples:
            head = pcm[: self.lookahead_samples - self._primed]
            start = int(self.streaming["left_padding_samples"]) + self._primed
            self.state["samples"][0, start : start + head.size] = head
            self._primed += head.size
            pcm = pcm[head.size :]
        self._pending = np.concatenate([self._pending, pcm])
        new = []
        while self._pending.size >= self.chunk_samples:
            new += self._run_chunk(self._pending[: self.chunk_samples])
            self._pending = self._pending[self.chunk_samples :]
        return new

    def finish(self) -> list[int]:
        """End of the utterance: the contract's flush (zeros until the chunks cover every feature
        frame) -> the last new token ids. Call `reset` before the next utterance."""
        frames = self.contract.feature_frames(self._received)
        per_call = int(self.streaming["chunk_feature_frames"])
        new = []
        while self._calls < math.ceil(frames / per_call):
            chunk = np.zeros(self.chunk_samples, dtype=np.float32)
            chunk[: min(self._pending.size, self.chunk_samples)] = self._pending[: self.chunk_samples]
            self._pending = self._pending[self.chunk_samples :]
            new += self._run_chunk(chunk, valid=min(per_call, frames - self._calls * per_call),
                                   limit=self.contract.output_frames(self._received))
        return new

    def run(self, pcm: np.ndarray) -> np.ndarray:
        """A whole utterance ``pcm [N]`` streamed -> its log-probs ``[ceil(F / subsampling), V]``."""
        self.reset()
        self.step(pcm)
        self.finish()
        return np.concatenate(self._log_probs, axis=0)

    def _run_chunk(self, pcm: np.ndarray, valid: int | None = None, limit: int | None = None) -> list[int]:
        """One call on ``pcm [chunk_samples]`` of which ``valid`` feature frames are the utterance's
        (None: all); keep the state; the log-prob frames up to ``limit`` in all (None: every
        frame) are the utterance's -> their new token ids."""
        if valid is None:
            valid = int(self.streaming["chunk_feature_frames"])
        feeds = {"pcm": pcm[None], "feature_frames": np.array([valid], dtype=np.int32), **self.state}
        out = self._call(feeds)
        for t in self.streaming["states"]:
            self.state[t["name"]] = np.asarray(out[t["output"]]).astype(t["dtype"], copy=False)
        self._calls += 1
        log_probs = np.asarray(out["log_probs"][0], dtype=np.float32)
        if limit is not None:
            log_probs = log_probs[: max(0, limit - self._kept)]
        self._kept += log_probs.shape[0]
        self._log_probs.append(log_probs)
        return self.collapse.push(log_probs)


class OnnxStreamStepper(StreamStepper):
    """An ``onnx-stream`` artifact in onnxruntime (CPU, ``threads`` intra-op threads)."""

    format = "onnx-stream"

    def __init__(self, path, contract, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self.session.get_outputs()]
        super().__init__(path, contract, threads)

    def _call(self, feeds):
        return dict(zip(self._outputs, self.session.run(self._outputs, feeds), strict=True))

    def io_specs(self):
        def spec(tensors):
            return {t.name: (list(t.shape), t.type.removeprefix("tensor(").removesuffix(")").replace(
                "float", "float32")) for t in tensors}
        return {"inputs": spec(self.session.get_inputs()), "outputs": spec(self.session.get_outputs())}


class TFLiteStreamStepper(StreamStepper):
    """A ``tflite-stream`` artifact (one signature) in the LiteRT interpreter (XNNPACK)."""

    format = "tflite-stream"

    def __init__(self, path, contract, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=int(threads))
        (name,) = self.interpreter.get_signature_list()
        self.runner = self.interpreter.get_signature_runner(name)
        super().__init__(path, contract, threads)

    def _call(self, feeds):
        return self.runner(**feeds)

    def io_specs(self):
        def spec(details):
            return {n: ([int(x) for x in d["shape"]], np.dtype(d["dtype"]).name) for n, d in details.items()}
        return {"inputs": spec(self.runner.get_input_details()),
                "outputs": spec(self.runner.get_output_details())}


class CoreMLStreamStepper(StreamStepper):
    """A ``coreml-stream`` artifact through coremltools' ``predict`` (**macOS only**; Core ML picks
    its own compute units and threads, ``threads`` is ignored)."""

    format = "coreml-stream"

    def __init__(self, path, contract, threads: int = 1):
        import coremltools as ct

        self.model = ct.models.MLModel(str(path))
        super().__init__(path, contract, threads)

    def _call(self, feeds):
        return self.model.predict(feeds)

    def io_specs(self):
        from coremltools.proto import FeatureTypes_pb2 as ft

        def spec(features):
            names = ft.ArrayFeatureType.ArrayDataType
            return {f.name: (list(f.type.multiArrayType.shape),
                             names.Name(f.type.multiArrayType.dataType).lower()) for f in features}
        description = self.model.get_spec().description
        return {"inputs": spec(description.input), "outputs": spec(description.output)}


STEPPERS: dict[str, type[StreamStepper]] = {
    s.format: s for s in (OnnxStreamStepper, TFLiteStreamStepper, CoreMLStreamStepper)
}


def open_stepper(folder: str | Path, fmt: str, precision: str, threads: int = 1) -> StreamStepper:
    """The ``fmt`` artifact at ``precision`` listed in the bundle ``folder``'s contract.json.

    Raises:
        StreamingError: an unknown ``fmt``, a folder that is no streaming bundle, or no such artifact.
    """
    if fmt not in STEPPERS:
        raise StreamingError(f"unknown streaming format {fmt!r}; choose one of {sorted(STEPPERS)}")
    contract = read_streaming_contract(folder)
    for a in contract.get("artifacts", []):
        if a["format"] == fmt and a["precision"] == precision:
            return STEPPERS[fmt](Path(folder) / a["file"], contract, threads)
    raise StreamingError(f"{Path(folder) / CONTRACT_FILE}: no {fmt} artifact at {precision}")
