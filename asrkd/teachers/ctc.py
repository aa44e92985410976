"""Teachers that give CTC posteriors: an asrkd checkpoint, a Hugging Face ``*ForCTC`` folder, any callable.

See `asrkd.teachers.base` for the interface they share.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from asrkd.contract import BLANK_ID, SAMPLE_RATE, Contract
from asrkd.teachers.base import Teacher, TeacherOutput, sha256_json, state_dict_sha256
from asrkd.text import BLANK, UNK, WORD_SEP

__all__ = ["CallableTeacher", "CheckpointTeacher", "HFCTCTeacher", "hf_vocabulary"]

# ---------------------------------------------------------------------------------------------
# asrkd checkpoint
# ---------------------------------------------------------------------------------------------


class CheckpointTeacher(Teacher):
    """An asrkd checkpoint (folder, or a run folder: its ``best``) as a teacher.

    Runs the checkpoint's own front end (``FrontendConfig`` from its config.json), so a teacher
    with other features than the student's is fine; ``sample_rate`` and ``frame_shift`` come from
    the checkpoint's `asrkd.contract.Contract`. ``hidden`` holds each Conformer block's output,
    ``[B, T, d_model]`` each.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        from asrkd.checkpoint import load_checkpoint, resolve_checkpoint

        self.path = resolve_checkpoint(path)
        loaded = load_checkpoint(self.path)
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.frontend = loaded.frontend.to(self.device).eval()
        self.tokenizer = loaded.tokenizer
        self.vocabulary = list(self.tokenizer.tokens)
        self.blank_id = self.tokenizer.blank_id
        contract = Contract.from_loaded(loaded)
        self.sample_rate = contract.sample_rate
        self.frame_shift = contract.output_frame_shift
        self._config = loaded.config
        self._weights_sha = state_dict_sha256(self.model)

    @torch.no_grad()
    def __call__(self, wavs: Tensor, wav_lens: Tensor, return_hidden: bool = False) -> TeacherOutput:
        feats, feat_lens = self.frontend(wavs.to(self.device), wav_lens.to(self.device))
        log_probs, lengths, hidden = self.model(feats, feat_lens, return_hidden=return_hidden)
        return TeacherOutput(log_probs.float(), lengths, hidden)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "asrkd-checkpoint",
            "weights": self._weights_sha,
            "config": sha256_json(self._config["model"]),
            "frontend": self._config["frontend"],
            "vocabulary": sha256_json(self.vocabulary),
        }

    def hidden_size(self) -> int:
        return self.model.config.d_model


# ---------------------------------------------------------------------------------------------
# Hugging Face *ForCTC
# ---------------------------------------------------------------------------------------------


def hf_vocabulary(tokens: Sequence[str], pad_token: str | None, word_delimiter: str | None,
                  unk_token: str | None) -> list[str]:
    """A Hugging Face CTC vocabulary in asrkd's convention.

    The pad token is the CTC blank ("<blk>"), the word delimiter ("|") is "▁", the unknown token
    is "<unk>", single letters are lower-cased (Wav2Vec2's English vocabulary is upper case;
    asrkd's text is normalised to lower case) unless that would collide with a symbol already
    there; every other symbol ("<s>", "</s>") keeps its name and so maps to no student token.
    """
    out: list[str] = []
    taken = set(tokens)
    for tok in tokens:
        if tok == pad_token:
            out.append(BLANK)
        elif tok == word_delimiter:
            out.append(WORD_SEP)
        elif tok == unk_token:
            out.append(UNK)
        elif len(tok) == 1 and tok.lower() != tok and tok.lower() not in taken:
            out.append(tok.lower())
        else:
            out.append(tok)
    return out


class HFCTCTeacher(Teacher):
    """A Hugging Face ``*ForCTC`` model (Wav2Vec2, HuBERT, WavLM, Data2Vec-audio: anything
    ``AutoModelForCTC`` loads) with its feature extractor and tokenizer, from a local folder.

    Nothing is downloaded (``local_files_only=True``): save the model and processor to a folder
    first (``model.save_pretrained(d); processor.save_pretrained(d)``).

    ``sample_rate`` is the feature extractor's ``sampling_rate``. Input: the feature extractor's normalisation (zero mean, unit variance per utterance when
    ``do_normalize``) and padding. Models whose feature extractor has
    ``return_attention_mask=False`` (wav2vec2-base and friends) were trained without a mask on
    zero-padded batches; padding changes their output, so they run one utterance at a time.
    ``hidden`` holds the output of each transformer layer (the embedding output is left out).
    """

    def __init__(self, folder: str | os.PathLike, device: str | torch.device = "cpu"):
        try:
            from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer
        except ImportError as e:
            raise ImportError("HFCTCTeacher needs transformers: pip install 'asrkd[hf]'") from e
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder}: no config.json; HFCTCTeacher loads a local folder written by "
                "save_pretrained (it never downloads)"
            )
        self.path = folder
        self.device = torch.device(device)
        self.model = AutoModelForCTC.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.sample_rate = int(getattr(self.feature_extractor, "sampling_rate", SAMPLE_RATE))
        # Online distillation feeds a teacher the student's own batch, at the project's rate.
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"{folder}: the feature extractor expects {self.sample_rate} Hz audio, asrkd gives "
                             f"{SAMPLE_RATE} Hz")
        cfg = self.model.config
        vocab_size = int(cfg.vocab_size)
        by_id = {i: t for t, i in self.tokenizer.get_vocab().items()}
        raw = [by_id.get(i, f"<unused{i}>") for i in range(vocab_size)]
        tk = self.tokenizer
        self.vocabulary = hf_vocabulary(raw, tk.pad_token, getattr(tk, "word_delimiter_token", None), tk.unk_token)
        pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else tk.pad_token_id
        if pad_id is None or not 0 <= pad_id < vocab_size:
            raise ValueError(f"{folder}: no pad token id in the config or tokenizer; it is the CTC blank")
        self.blank_id = int(pad_id)
        self.vocabulary[self.blank_id] = BLANK
        self.frame_shift = float(np.prod(cfg.conv_stride)) / self.sample_rate
        self.batched = bool(getattr(self.feature_extractor, "return_attention_mask", False))
        self._weights_sha = state_dict_sha256(self.model)
        self._config_sha = sha256_json(cfg.to_dict())

    def _prepare(self, wavs: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Per-utterance normalisation over the valid samples, zeros beyond (the extractor's rule)."""
        x = wavs.float()
        valid = torch.arange(x.shape[1])[None, :] < wav_lens[:, None]
        if getattr(self.feature_extractor, "do_normalize", False):
            n = wav_lens.clamp(min=1)[:, None].float()
            mean = (x * valid).sum(1, keepdim=True) / n
            var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7)
        return torch.where(valid, x, float(self.feature_extractor.padding_value)), valid.long()

    @torch.no_grad()
    def __call__(self, wavs: Tensor, wav_lens: Tensor, return_hidden: bool = False) -> TeacherOutput:
        wavs, wav_lens = wavs.cpu(), wav_lens.cpu().long()
        if not self.batched and wavs.shape[0] > 1:
            outs = [self(wavs[b : b + 1, : int(wav_lens[b])], wav_lens[b : b + 1], return_hidden)
                    for b in range(wavs.shape[0])]
            return _pad_outputs(outs)
        x, mask = self._prepare(wavs, wav_lens)
        kwargs = {"attention_mask": mask.to(self.device)} if self.batched else {}
        out = self.model(x.to(self.device), output_hidden_states=return_hidden, **kwargs)
        log_probs = torch.log_softmax(out.logits.float(), dim=-1)
        lengths = self.model._get_feat_extract_output_lengths(wav_lens).long().clamp(max=log_probs.shape[1])
        hidden = list(out.hidden_states[1:]) if return_hidden else None
        return TeacherOutput(log_probs, lengths.to(log_probs.device), hidden)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "hf-ctc",
            "weights": self._weights_sha,
            "config": self._config_sha,
            "frontend": self.feature_extractor.to_dict(),
            "vocabulary": sha256_json(self.vocabulary),
        }

    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def _pad_outputs(outs: list[TeacherOutput]) -> TeacherOutput:
    t = max(o.log_probs.shape[1] for o in outs)
    lp = torch.cat([torch.nn.functional.pad(o.log_probs, (0, 0, 0, t - o.log_probs.shape[1])) for o in outs])
    lengths = torch.cat([o.lengths for o in outs])
    hidden = None
    if outs[0].hidden is not None:
        hidden = [torch.cat([torch.nn.functional.pad(o.hidden[i], (0, 0, 0, t - o.hidden[i].shape[1]))
                             for o in outs]) for i in range(len(outs[0].hidden))]
    return TeacherOutput(lp, lengths, hidden)


# ---------------------------------------------------------------------------------------------
# Any callable
# ---------------------------------------------------------------------------------------------


class CallableTeacher(Teacher):
    """Any function ``fn(wavs [B, N], wav_lens [B]) -> (log_probs [B, T, V], lengths [B])``
    (optionally a third item, the hidden states, returned when called with ``return_hidden=True``).

    ``fingerprint``: a string that changes whenever the function's output would (a model
    version, a hash of its weights). Required unless ``fn`` is a ``torch.nn.Module``, whose
    state dict is hashed: a cache must be able to tell that its teacher changed.
    ``sample_rate``: the rate of the audio ``fn`` takes.
    """

    def __init__(self, fn: Callable, vocabulary: Sequence[str], frame_shift: float,
                 blank_id: int = BLANK_ID, fingerprint: str | None = None, hidden_size: int | None = None,
                 sample_rate: int = SAMPLE_RATE):
        if fingerprint is None:
            if not isinstance(fn, torch.nn.Module):
                raise ValueError(
                    "CallableTeacher needs fingerprint=... (a string that changes when the function "
                    "does) unless fn is a torch.nn.Module, whose weights are hashed"
                )
            fingerprint = state_dict_sha256(fn)
        self.fn = fn
        self.vocabulary = list(vocabulary)
        self.blank_id = blank_id
        self.sample_rate = int(sample_rate)
        self.frame_shift = float(frame_shift)
        self._fingerprint = fingerprint
        self._hidden_size = hidden_size

    @torch.no_grad()
    def __call__(self, wavs: Tensor, wav_lens: Tensor, return_hidden: bool = False) -> TeacherOutput:
        out = self.fn(wavs, wav_lens, return_hidden=True) if return_hidden else self.fn(wavs, wav_lens)
        log_probs, lengths = out[0], out[1]
        hidden = list(out[2]) if return_hidden and len(out) > 2 and out[2] is not None else None
        if return_hidden and hidden is None:
            raise ValueError("the teacher function returned no hidden states for return_hidden=True")
        return TeacherOutput(log_probs.float(), torch.as_tensor(lengths).long(), hidden)

    def describe(self) -> dict[str, Any]:
        return {"kind": "callable", "weights": self._fingerprint, "config": sha256_json(self.frame_shift),
                "frontend": {}, "vocabulary": sha256_json(self.vocabulary)}

    def hidden_size(self) -> int | None:
        return self._hidden_size
