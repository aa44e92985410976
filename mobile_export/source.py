"""What an export starts from: a checkpoint on disk or a model in memory, as one object.

    source = ExportSource.of("runs/fsdd/student_ctc")              # checkpoint or run folder
    source = ExportSource.of(asrkd.load_checkpoint(path))           # a LoadedModel
    source = ExportSource.of((LogMel(FrontendConfig()), model, tokenizer))   # modules in memory
    source.graph      # the torch module every artifact holds (mobile_export/graph.py)
    source.contract   # its asrkd.contract.Contract: sample rate, frame shift, vocabulary, blank id
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


@dataclass
class ExportSource:
    """A model to export: the graph its artifacts hold, its vocabulary, its contract and what its
    checkpoint records.

    ``checkpoint``: the checkpoint folder it was loaded from; None for a model built in memory
    (then no cold start can be measured for PyTorch: there is no file to load).
    ``config``: the checkpoint's ``config.json`` (``model``, ``step``, ``asrkd_version``,
    ``train_config``, ``metrics``), quoted by ``contract.json`` and the model card.
    """

    graph: ExportGraph
    tokenizer: Any
    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    contract: Contract = field(init=False)

    def __post_init__(self):
        self.contract = Contract.from_parts(self.graph.frontend.config, self.graph.model.config, self.tokenizer)

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
