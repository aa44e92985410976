"""The graph every mobile artifact holds: raw PCM in, CTC log-posteriors out.

    pcm [B, N] float32 in [-1, 1], pcm_lens [B] int
        ─► LogMel (the checkpoint's FrontendConfig)       feats [B, T, n_mels], T = 1 + N // hop
        ─► ConformerCTC                                   log_probs [B, T', V], out_lens [B]
        ─► (optional) argmax per frame                    token_ids [B, T']   (collapse: the app's job)
        ─► (optional) confidence                          confidence [B] in [0, 1]
        ─► (optional) its temperature calibration          calibrated_confidence [B] in [0, 1]

The features-in variant (``features_in=True``) starts at ``feats [B, T, n_mels], feat_lens [B]``
for apps that compute their own log-mel (it must match the checkpoint's FrontendConfig exactly).

Static windows and padding: a runtime with static shapes (TFLite, Core ML enumerated shapes) gets
one input length per window, and the real length travels in ``pcm_lens``. Everything that mixes
samples or frames is masked by that length (LogMel zeroes samples and frames past it and
normalises over valid frames only; the Conformer masks its convolutions and attention keys), so
the frames ``t < out_lens`` do not depend on how much padding follows them. Frames at or beyond
``out_lens`` hold unspecified values: read outputs through ``out_lens``. No shape in the graph
depends on the values of the inputs.

One output frame covers ``hop_length * subsampling`` input samples (``ExportGraph.contract``:
``output_frame_shift_samples``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from asrkd.confidence import CALIBRATION_EPS
from asrkd.contract import BLANK_ID, Contract
from asrkd.features import LogMel
from asrkd.models.conformer import ConformerCTC

PCM_INPUTS = ("pcm", "pcm_lens")
FEATURE_INPUTS = ("feats", "feat_lens")

# Lower bound of the length range in exported programs with a dynamic length: the ExecuTorch
# shape solver needs one, and it is the Core ML RangeDim minimum (which Core ML enforces; runners
# zero-pad shorter audio with the real length in pcm_lens, which leaves the valid frames alone).
MIN_SECONDS = 0.1

# What each tensor is; contract.json and the Core ML descriptions quote these.
TENSOR_MEANINGS = {
    "pcm": "float32 [batch, samples]: mono PCM in [-1, 1] at the contract's sample_rate, zero-padded "
    "to the window (static-shape artifacts) or of any length (dynamic ones)",
    "pcm_lens": "int [batch]: number of real samples in each row of pcm; samples beyond it are ignored",
    "feats": "float32 [batch, frames, n_mels]: log-mel features as asrkd.features.LogMel computes them",
    "feat_lens": "int [batch]: number of real frames in each row of feats",
    "log_probs": "float32 [batch, out_frames, vocab]: CTC log-posteriors (log_softmax, blank = "
    "blank_id); frames at or beyond out_lens are padding with unspecified values",
    "out_lens": "int [batch]: number of valid output frames per row",
    "token_ids": "int [batch, out_frames]: argmax token id per frame; to get text, keep the first "
    "out_lens frames, collapse repeats, drop blank_id, map ids through tokens.txt",
    "confidence": "float32 [batch]: utterance confidence in [0, 1] (mean of 1 - entropy / log V over "
    "valid non-blank frames; asrkd.decoding.batch_confidence)",
    "calibrated_confidence": "float32 [batch]: confidence calibrated as contract.json's confidence.calibration "
    "says (temperature method): an estimate of P(transcript exactly right), to compare with "
    "confidence.fallback_threshold",
}


class ExportGraph(nn.Module):
    """LogMel + ConformerCTC (+ greedy ids, confidence) as one module with positional outputs.

    ``forward(x, x_lens)`` with ``x = pcm [B, N]`` (or ``feats [B, T, n_mels]`` when
    ``features_in``) returns a tuple in the order of ``output_names``:
    ``log_probs [B, T', V] float32, out_lens [B] int64`` then, if enabled,
    ``token_ids [B, T'] int64`` and ``confidence [B] float32``, and with a ``calibration``
    ``(temperature, bias)`` (a temperature `asrkd.confidence.Calibration` of ``confidence``, set by
    the export once it is fitted) ``calibrated_confidence [B] float32`` after it.
    """

    def __init__(
        self,
        frontend: LogMel,
        model: ConformerCTC,
        *,
        features_in: bool = False,
        with_tokens: bool = True,
        with_confidence: bool = True,
        blank_id: int = BLANK_ID,
        calibration: tuple[float, float] | None = None,
    ):
        super().__init__()
        if frontend.config.n_mels != model.config.n_mels:
            raise ValueError(
                f"front end gives {frontend.config.n_mels} mel bands but the model expects "
                f"{model.config.n_mels}; the checkpoint's 'frontend' and 'model' configs disagree"
            )
        self.frontend = frontend.eval()
        self.model = model.eval()
        self.features_in = features_in
        self.with_tokens = with_tokens
        self.with_confidence = with_confidence
        self.blank_id = blank_id
        self.calibration = calibration

    @classmethod
    def from_loaded(cls, loaded, **options) -> ExportGraph:
        """From an ``asrkd.checkpoint.LoadedModel``; ``options`` as ``__init__``."""
        return cls(loaded.frontend, loaded.model, blank_id=loaded.tokenizer.blank_id, **options)

    @property
    def input_names(self) -> tuple[str, str]:
        return FEATURE_INPUTS if self.features_in else PCM_INPUTS

    @property
    def output_names(self) -> tuple[str, ...]:
        names = ["log_probs", "out_lens"]
        if self.with_tokens:
            names.append("token_ids")
        if self.with_confidence:
            names.append("confidence")
            if self.calibration is not None:
                names.append("calibrated_confidence")
        return tuple(names)

    @property
    def contract(self) -> Contract:
        """The numbers an app needs to feed the graph and read its outputs (sample rate, hop,
        mel bands, subsampling, vocabulary size, blank id), from the front end's and the model's
        configs. The graph holds no tokenizer, so ``vocabulary_sha256`` is None here; an
        `mobile_export.source.ExportSource` has the full contract."""
        contract = Contract.from_parts(self.frontend.config, self.model.config)
        return replace(contract, blank_id=self.blank_id)

    def input_length(self, seconds: float) -> int:
        """Length of the time axis of ``x`` for ``seconds`` of audio (samples, or frames)."""
        contract = self.contract
        n = contract.samples(seconds)
        return contract.feature_frames(n) if self.features_in else n

    def example_inputs(self, length: int, batch: int = 1, valid: int | None = None) -> tuple[Tensor, Tensor]:
        """Deterministic inputs to trace with: ``x`` of ``length`` on its time axis, ``x_lens`` =
        ``valid`` (default ``length``). Noise at speech level, so no branch sees all-zero input."""
        gen = torch.Generator().manual_seed(0)
        if self.features_in:
            x = torch.randn(batch, length, self.frontend.config.n_mels, generator=gen)
        else:
            x = 0.1 * torch.randn(batch, length, generator=gen)
        lens = torch.full((batch,), length if valid is None else valid, dtype=torch.long)
        return x, lens

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, ...]:
        x_lens = x_lens.to(torch.long)
        if self.features_in:
            feats, feat_lens = x, x_lens
        else:
            feats, feat_lens = self.frontend(x, x_lens)
        # An fp16 encoder (ONNX fp16) takes half features; log_probs come back float32 either way.
        feats = feats.to(self.model.ctc_head.weight.dtype)
        log_probs, out_lens, _ = self.model(feats, feat_lens)
        outputs = [log_probs, out_lens]
        if self.with_tokens:
            outputs.append(log_probs.argmax(dim=-1))
        if self.with_confidence:
            conf = confidence(log_probs, out_lens, blank=self.blank_id, vocab_size=self.model.config.vocab_size)
            outputs.append(conf)
            if self.calibration is not None:
                outputs.append(calibrated(conf, *self.calibration))
        return tuple(outputs)


def confidence(log_probs: Tensor, out_lens: Tensor, blank: int = BLANK_ID, vocab_size: int | None = None) -> Tensor:
    """``asrkd.decoding.batch_confidence`` written for converters: log_probs [B, T, V], out_lens [B]
    -> [B] float32.

    Same definition (mean over valid non-blank frames of 1 - H(p_t) / log V; all valid frames
    when none is non-blank; 0 without valid frames) with the boolean masks as float arithmetic:
    onnxruntime has no ``Where`` over booleans, and ``special.entr`` decomposes into NaN checks.
    ``-p * log p`` uses the log-probs directly; log_softmax of finite logits is finite, so no
    ``0 * -inf`` can occur. ``vocab_size`` (default: the last dimension) is passed by the graph
    so that tracing sees a Python constant rather than a traced size.
    """
    frames = torch.arange(log_probs.shape[1], device=log_probs.device)
    valid = (frames.unsqueeze(0) < out_lens.unsqueeze(1)).to(log_probs.dtype)  # [B, T]
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    log_v = math.log(vocab_size if vocab_size is not None else log_probs.shape[-1])
    frame_conf = (1.0 - entropy / log_v).clamp(0.0, 1.0)
    non_blank = valid * (log_probs.argmax(dim=-1) != blank).to(log_probs.dtype)
    any_non_blank = (non_blank.sum(dim=1, keepdim=True) > 0).to(log_probs.dtype)  # [B, 1]
    use = any_non_blank * non_blank + (1.0 - any_non_blank) * valid
    return (frame_conf * use).sum(dim=1) / use.sum(dim=1).clamp(min=1.0)


def calibrated(conf: Tensor, temperature: float, bias: float) -> Tensor:
    """``asrkd.confidence.Calibration.apply`` (temperature method) for converters: conf [B] ->
    sigmoid((logit(conf) + bias) / temperature) [B], conf clipped to [1e-6, 1 - 1e-6] first.
    The constants are Python floats, so they are baked into the graph."""
    c = conf.clamp(CALIBRATION_EPS, 1.0 - CALIBRATION_EPS)
    return torch.sigmoid((torch.log(c) - torch.log(1.0 - c) + bias) / temperature)


def with_encoder_dtype(graph: ExportGraph, dtype: torch.dtype) -> ExportGraph:
    """A copy of ``graph`` whose encoder (Conformer) computes in ``dtype``; the front end stays
    float32 (its variance sums overflow float16 on long windows) and so do the log-probs."""
    return ExportGraph(
        graph.frontend,
        copy.deepcopy(graph.model).to(dtype),
        features_in=graph.features_in,
        with_tokens=graph.with_tokens,
        with_confidence=graph.with_confidence,
        blank_id=graph.blank_id,
        calibration=graph.calibration,
    )
