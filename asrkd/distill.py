"""``asrkd distill``: training with `asrkd.kd.KDLoss` instead of plain CTC.

    Distiller(TrainConfig.from_yaml("recipes/fsdd/conf/student_kd.yaml")).fit()     # or: asrkd distill --config ...

Everything but the loss is plain training's (`asrkd.builder`, `asrkd.loop`): data, sampler,
augmentation, optimiser, schedule, checkpoints (the student's checkpoint is a plain asrkd
checkpoint: eval, transcribe and export read it unchanged), exact resume, DDP, logs and the
progress bar. The ``kd`` section chooses the teacher's targets (`asrkd.teacher_targets`: a
posterior cache, ``kd.teacher_mode: cache``, the default; or the teacher run on every batch,
``online``) and the terms and their weights (`asrkd.kd.KDLoss`). Unlabelled training
utterances get pseudo-labels from the cache (`asrkd.pseudo_labels`).

With cached targets, speed perturbation is refused for the frame-level terms: it changes the
length of the audio the student hears, so its frames would no longer line up with the cached
ones. Length-preserving augmentation (noise, band-limiting, SpecAugment) is fine: the student
then hears a noisier version of what the teacher heard ("noisy student").
"""

from __future__ import annotations

from asrkd.builder import build_training
from asrkd.config import TrainConfig
from asrkd.pseudo_labels import PSEUDO_LABEL_DROPS
from asrkd.teacher import Teacher
from asrkd.train import Trainer

__all__ = ["PSEUDO_LABEL_DROPS", "Distiller"]


class Distiller(Trainer):
    """``asrkd distill``: a `TrainConfig` whose ``kd`` section names a teacher, built into parts
    with a `KDLoss` (``parts.loss``) and trained by the same loop as `Trainer`."""

    def __init__(self, config: TrainConfig, resume: bool = False, teacher: Teacher | None = None):
        """``teacher``: an already built teacher for ``kd.teacher_mode: online`` (else
        ``kd.teacher`` is loaded); with a cache it is only used to check the cache's fingerprint."""
        self._start(build_training(config, distill=True, teacher=teacher), resume)
