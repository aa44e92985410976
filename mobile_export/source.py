"""What an export starts from: a checkpoint on disk or a model in memory, as one object.

    source = ExportSource.of("runs/fsdd/student_ctc")              # checkpoint or run folder
    source = ExportSource.of(asrkd.load_checkpoint(path))           # a LoadedModel
    source = ExportSource.of((LogMel(FrontendConfig()), model, tokenizer))   # modules in memory
    source.graph      # the torch module every artifact holds (mobile_export/graph.py)
    source.contract   # its asrkd.contract.Contract: sample rate, frame shift, vocabulary, blank id
    source.at_chunking(3, 21)   # a streaming checkpoint at 120 ms chunks (asrkd export --chunk-size 3 --left-chunks 21)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asrkd import __version__
from asrkd.checkpoint import LoadedModel, load_checkpoint, resolve_checkpoint
from asrkd.contract import Contract
from mobile_export.graph import ExportGraph
from mobile_export.stream_graph import at_chunking, is_streaming


@dataclass
class ExportSource:
    """A model to export: the graph its artifacts hold, its vocabulary, its contract and what its
    checkpoint records.

    ``checkpoint``: the checkpoint folder it was loaded from; None for a model built in memory
    (then no cold start can be measured for PyTorch: there is no file to load).
    ``config``: the checkpoint's ``config.json`` (``model``, ``step``, ``asrkd_version``,
    ``train_config``, ``metrics``), quoted by ``contract.json`` and the model card.
    ``checkpoint_chunking``: after `at_chunking` changed it, the checkpoint's own
    ``{"chunk_size", "left_chunks"}`` (``config["model"]`` then states the exported one); else None.
    """

    graph: ExportGraph
    tokenizer: Any
    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    checkpoint_chunking: dict[str, int] | None = None
    contract: Contract = field(init=False)

    def __post_init__(self):
        self.contract = Contract.from_parts(self.graph.frontend.config, self.graph.model.config, self.tokenizer)

    def at_chunking(self, chunk_size: int | None, left_chunks: int | None) -> ExportSource:
        """This model at another chunking (`mobile_export.stream_graph.at_chunking`, which says
        what it refuses): the same weights and front end, a graph whose model config, and so
        ``config["model"]`` (contract.json's ``model.config``), states the chunking. ``self`` when
        it is the model's own (None, None included)."""
        graph = self.graph
        model = at_chunking(graph.model, graph.frontend, chunk_size, left_chunks,
                            "the model" if self.checkpoint is None else str(self.checkpoint))
        if model is graph.model:
            return self
        own = graph.model.config
        chunked = ExportGraph(graph.frontend, model, features_in=graph.features_in, with_tokens=graph.with_tokens,
                              with_confidence=graph.with_confidence, blank_id=graph.blank_id,
                              calibration=graph.calibration)
        return ExportSource(chunked, self.tokenizer, self.checkpoint, {**self.config, "model": model.config.to_dict()},
                            self.checkpoint_chunking or {"chunk_size": own.chunk_size, "left_chunks": own.left_chunks})

    def chunking(self) -> dict[str, Any] | None:
        """report.json's ``chunking`` for a streaming model (None for any other): the chunking
        its export ran at, ``chunk_size`` encoder frames (``chunk_ms``) with ``left_chunks`` chunks
        of left context (``left_context_ms``), and the checkpoint's own (``checkpoint``; another
        one when ``asrkd export --chunk-size/--left-chunks`` chose it)."""
        c = self.graph.model.config
        if not is_streaming(self.graph.model):
            return None
        ms = 1000.0 * self.contract.output_frame_shift_samples / self.contract.sample_rate
        return {"chunk_size": c.chunk_size, "left_chunks": c.left_chunks, "chunk_ms": c.chunk_size * ms,
                "left_context_ms": None if c.left_chunks < 0 else c.left_chunks * c.chunk_size * ms,
                "checkpoint": self.checkpoint_chunking or {"chunk_size": c.chunk_size, "left_chunks": c.left_chunks}}

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> ExportSource:
        """From an ``asrkd.checkpoint.LoadedModel`` (what ``load_checkpoint`` returns)."""
        return cls(ExportGraph.from_loaded(loaded), loaded.tokenizer, loaded.path, loaded.config)

    @classmethod
    def from_parts(cls, frontend, model, tokenizer) -> ExportSource:
        """From a ``LogMel`` front end, a ``ConformerCTC`` and its tokenizer, held in memory."""
        config = {"model": model.config.to_dict(), "asrkd_version": __version__}
        return cls(ExportGraph(frontend, model, blank_id=tokenizer.blank_id), tokenizer, None, config)

    @classmethod
    def of(cls, model: Any) -> ExportSource:
        """``model`` as an ExportSource: a checkpoint folder or run folder (path), a
        ``LoadedModel``, a ``(frontend, model, tokenizer)`` tuple, or an ExportSource."""
        if isinstance(model, ExportSource):
            return model
        if isinstance(model, (str, os.PathLike)):
            return cls.from_loaded(load_checkpoint(resolve_checkpoint(model)))
        if isinstance(model, LoadedModel):
            return cls.from_loaded(model)
        if isinstance(model, tuple) and len(model) == 3:
            return cls.from_parts(*model)
        raise TypeError(
            f"cannot export a {type(model).__name__}: pass a checkpoint folder, an "
            "asrkd.checkpoint.LoadedModel or a (frontend, model, tokenizer) tuple"
        )
