"""The contract every stage shares: audio in, frames out, which id is blank. Stated once, here.

Two kinds of fact live here:

* **Project constants** (module level): the default sample rate, the CTC blank id, the defaults of
  the teacher's N-best search and top-k cache, the default export windows. Nothing else in the
  project writes these numbers; it imports them.
* **A model's contract** (`Contract`): what one checkpoint fixes — its front end (sample rate, hop,
  mel bands), its encoder's subsampling and so its output frame shift, its vocabulary size and
  fingerprint, its blank id. It is derived from a checkpoint (`Contract.from_checkpoint`) or from
  the parts a training run builds (`Contract.from_parts`), and read by every stage that needs one
  of those numbers: data loading (sample rate), the posterior cache and the teachers (sample rate,
  frame shift), the KD losses (frame ratio), the export graph and `contract.json` (all of it).

This module imports nothing from the rest of asrkd at import time, so every module can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily below: asrkd.features itself imports this module
    from asrkd.features import FrontendConfig

# ---------------------------------------------------------------------------------------------
# Project constants
# ---------------------------------------------------------------------------------------------

SAMPLE_RATE = 16000
"""Default sample rate (Hz) of audio fed to every model; a checkpoint's front end may state another."""

BLANK_ID = 0
"""Id of the CTC blank ``<blk>`` in every asrkd vocabulary (`asrkd.text`)."""

NBEST_BEAM = 8
"""Prefix beam width of the teacher's N-best search (posterior cache, online sequence KD)."""

NBEST = 4
"""Hypotheses kept per utterance in the teacher's N-best."""

TOP_K = 8
"""Teacher posteriors kept per frame in the cache and in online KD."""

EXPORT_WINDOWS_SECONDS: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0)
"""Default input windows (seconds) of static-shape artifacts (TFLite signatures, Core ML shapes)."""


# ---------------------------------------------------------------------------------------------
# One model's contract
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contract:
    """What a checkpoint fixes for every stage that feeds it audio or reads its frames.

    >>> c = Contract.from_checkpoint("runs/demo/student_kd/checkpoints/best")   # doctest: +SKIP
    >>> c.sample_rate, c.output_frame_shift, c.blank_id                         # doctest: +SKIP
    (16000, 0.04, 0)
    """

    frontend: FrontendConfig
    subsampling: int
    vocab_size: int
    blank_id: int = BLANK_ID
    vocabulary_sha256: str | None = None

    # -------------------------------------------------------------- construction
    @classmethod
    def from_parts(cls, frontend_config: FrontendConfig, model_config: Any, tokenizer: Any = None) -> Contract:
        """From a front-end config, a ``ConformerConfig`` and (optionally) a tokenizer."""
        return cls(
            frontend=frontend_config,
            subsampling=int(model_config.subsampling),
            vocab_size=int(model_config.vocab_size),
            blank_id=int(getattr(tokenizer, "blank_id", BLANK_ID)),
            vocabulary_sha256=tokenizer.fingerprint() if tokenizer is not None else None,
        )

    @classmethod
    def from_loaded(cls, loaded: Any) -> Contract:
        """From an ``asrkd.checkpoint.LoadedModel``."""
        return cls.from_parts(loaded.frontend.config, loaded.model.config, loaded.tokenizer)

    @classmethod
    def from_checkpoint(cls, path: Any) -> Contract:
        """From a checkpoint folder (or a run folder: its ``best`` / last checkpoint). Reads only
        its ``config.json``, not the weights."""
        from asrkd.checkpoint import read_config, resolve_checkpoint

        return cls.from_checkpoint_config(read_config(resolve_checkpoint(path)))

    @classmethod
    def from_checkpoint_config(cls, config: dict[str, Any]) -> Contract:
        """From a checkpoint's ``config.json`` (``asrkd.checkpoint.read_config``)."""
        from asrkd.features import FrontendConfig
        from asrkd.text import load_tokenizer

        model = config["model"]
        tokenizer = load_tokenizer(config["tokenizer"])
        return cls(
            frontend=FrontendConfig.from_dict(config["frontend"]),
            subsampling=int(model["subsampling"]),
            vocab_size=int(model["vocab_size"]),
            blank_id=int(tokenizer.blank_id),
            vocabulary_sha256=tokenizer.fingerprint(),
        )

    # -------------------------------------------------------------- derived numbers
    @property
    def sample_rate(self) -> int:
        """Samples per second the model expects."""
        return self.frontend.sample_rate

    @property
    def hop_length(self) -> int:
        """Samples between two feature frames."""
        return self.frontend.hop_length

    @property
    def n_mels(self) -> int:
        return self.frontend.n_mels

    @property
    def feature_frame_shift(self) -> float:
        """Seconds between two feature frames (the front end's hop)."""
        return self.frontend.hop_length / self.frontend.sample_rate

    @property
    def output_frame_shift_samples(self) -> int:
        """Samples between two output frames: front-end hop x encoder subsampling."""
        return self.frontend.hop_length * self.subsampling

    @property
    def output_frame_shift(self) -> float:
        """Seconds between two output (CTC) frames: front-end hop x encoder subsampling."""
        return self.output_frame_shift_samples / self.frontend.sample_rate

    @property
    def output_frame_rate(self) -> float:
        """Output (CTC) frames per second."""
        return 1.0 / self.output_frame_shift

    def samples(self, seconds: float) -> int:
        """PCM samples in ``seconds`` of audio (rounded to the nearest sample)."""
        return round(seconds * self.frontend.sample_rate)

    def feature_frames(self, num_samples: int) -> int:
        """Feature frames the front end gives for ``num_samples`` samples."""
        return self.frontend.num_frames(num_samples)

    def output_frames(self, num_samples: int) -> int:
        """Valid output frames for ``num_samples`` samples: ``ceil(feature_frames / subsampling)``
        (the encoder's stride-2 stages each round up; see ``asrkd.models.subsampling``)."""
        from asrkd.models.subsampling import subsampled_lengths

        return int(subsampled_lengths(self.frontend.num_frames(num_samples), self.subsampling))

    # -------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "frontend": self.frontend.to_dict(),
            "subsampling": self.subsampling,
            "output_frame_shift_seconds": self.output_frame_shift,
            "output_frame_shift_samples": self.output_frame_shift_samples,
            "vocab_size": self.vocab_size,
            "blank_id": self.blank_id,
            "vocabulary_sha256": self.vocabulary_sha256,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Contract:
        """Inverse of `to_dict` (also reads the same keys of a bundle's ``contract.json``)."""
        from asrkd.features import FrontendConfig

        return cls(
            frontend=FrontendConfig.from_dict(d["frontend"]),
            subsampling=int(d["subsampling"]),
            vocab_size=int(d["vocab_size"]),
            blank_id=int(d.get("blank_id", BLANK_ID)),
            vocabulary_sha256=d.get("vocabulary_sha256"),
        )
