"""``asrkd train``: a YAML config built into the training loop's parts, then trained.

    Trainer(TrainConfig.from_yaml("recipes/quickstart/student.yaml")).fit()   # or: asrkd train --config ...

The parts come from `asrkd.builder.build_training` (plain CTC), the loop is
`asrkd.loop.TrainingLoop`; to train with your own data loader, model or loss, use those two
directly (README, "Python API").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from asrkd.builder import TrainingParts, build_training
from asrkd.config import TrainConfig
from asrkd.loop import read_log

__all__ = ["Trainer", "read_log"]


class Trainer:
    """``asrkd train``: a `TrainConfig` built into parts (`asrkd.builder.build_training`, plain CTC)
    and trained by an `asrkd.loop.TrainingLoop`.

    >>> Trainer(TrainConfig.from_yaml("recipes/quickstart/student.yaml")).fit()   # doctest: +SKIP

    ``parts`` holds what was built (model, tokenizer, data, ...), ``loop`` the loop.
    """

    def __init__(self, config: TrainConfig, resume: bool = False):
        self._start(build_training(config), resume)

    def _start(self, parts: TrainingParts, resume: bool) -> None:
        """Make the loop over ``parts``; with ``resume``, continue from the run's last checkpoint."""
        self.parts = parts
        self.loop = parts.loop()
        if resume:
            self.loop.resume()

    @property
    def model(self) -> torch.nn.Module:
        """The model being trained (``parts.model``)."""
        return self.parts.model

    @property
    def tokenizer(self) -> Any:
        """The run's tokenizer (``parts.tokenizer``)."""
        return self.parts.tokenizer

    def fit(self) -> Path | None:
        """Train to the config's step count; returns the best checkpoint (None on ranks other than 0)."""
        if self.loop.is_main:
            print(self.parts.summary())
        return self.loop.fit()
