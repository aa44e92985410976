"""Distillation: `asrkd.train.Trainer` with a loss that also listens to a teacher.

    Distiller(TrainConfig.from_yaml("configs/fsdd/kd.yaml")).fit()     # or: asrkd distill --config ...

Everything but the loss is the trainer's: data, sampler, augmentation, optimiser, schedule,
checkpoints (the student's checkpoint is a plain asrkd checkpoint: eval, transcribe and export
read it unchanged), exact resume, DDP, logs and the progress bar. One batch:

    wavs ─► LogMel ─► SpecAugment ─► student ─► log_probs [B, T, V], hidden states
                                          │
    teacher targets (cache: by utt_id; online: teacher(wavs)) ─► student ids ─► student frame rate
                                          │
    loss = Σ_term weight_term(step) · term       (terms: asrkd.losses; each is logged unweighted)

Terms (``kd.weights``): ``ctc`` (ground truth, or the teacher's best hypothesis for utterances
without text), ``frame`` (top-k KL with blank handling), ``sequence`` (N-best CTC), ``feature``
(hidden states through a learned projection), ``relation`` (frame similarity matrices).

Teacher targets come from a posterior cache (``kd.teacher_mode: cache``, the default: computed
once, on clean audio) or from the teacher run on every batch (``online``: on the same augmented
audio as the student). With cached targets, speed perturbation is refused: it changes the
length of the audio the student hears, so its frames would no longer line up with the cached
ones. Length-preserving augmentation (noise, band-limiting, SpecAugment) is fine: the student
then hears a noisier version of what the teacher heard ("noisy student").

The feature-KD projections (student dim -> teacher dim) are trained with the student, saved in
``trainer_state.pt`` (so that a resume is exact) and not in the student's checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor, nn

from asrkd.cache import CacheError, PosteriorCache, TeacherTargets, top_k_posteriors
from asrkd.checkpoint import list_step_checkpoints, load_trainer_state
from asrkd.config import ConfigError, TrainConfig
from asrkd.data import Utterance
from asrkd.decoding import prefix_beam_search
from asrkd.losses import (
    VocabularyMap,
    VocabularyMismatchError,
    align_to_student,
    feature_kd_loss,
    frame_kd_loss,
    frame_ratio,
    frame_weights,
    map_targets,
    pool_frames,
    relation_kd_loss,
    sequence_kd_loss,
)
from asrkd.teacher import Teacher, is_char_vocabulary, load_teacher
from asrkd.text import BLANK, UNK, WORD_SEP, CharTokenizer, UnknownCharactersError
from asrkd.train import Trainer

PSEUDO_LABEL_DROPS = "pseudo_label_drops.jsonl"


class Distiller(Trainer):
    """Train a student from a :class:`TrainConfig` whose ``kd`` section names a teacher."""

    def __init__(self, config: TrainConfig, resume: bool = False, teacher: Teacher | None = None):
        """``teacher``: an already built teacher for ``kd.teacher_mode: online`` (else
        ``kd.teacher`` is loaded); with a cache it is only used to check the cache's fingerprint."""
        self.kd = config.kd
        self.teacher = teacher
        self.cache: PosteriorCache | None = None
        self.pseudo_label_drops: list[dict] = []
        super().__init__(config, resume=False)
        kd = self.kd
        self.terms = kd.enabled_terms()
        if config.model.interctc_layers and "ctc" not in self.terms:
            raise ConfigError("model.interctc_layers is mixed into the ctc term, but kd.weights.ctc is 0: "
                              "give the ctc term a weight, or drop interctc_layers")
        self.layers = sorted(set(kd.layer_map.values())) if {"feature", "relation"} & set(self.terms) else []
        vocabulary, shift, blank = self._teacher_vocabulary()
        self.teacher_vocab_size = len(vocabulary)
        self.vmap: VocabularyMap | None = None
        try:
            self.vmap = VocabularyMap.build(vocabulary, self.tokenizer.tokens)
        except VocabularyMismatchError:
            if "frame" in self.terms:
                raise
        if self.vmap is not None and vocabulary[blank] != BLANK:
            raise ConfigError(f"the teacher's blank (id {blank}) is {vocabulary[blank]!r}, not {BLANK!r}")
        student_shift = self.frontend_config.frame_shift_seconds * self.model.config.subsampling
        self.ratio = frame_ratio(shift, student_shift) if {"frame", "feature", "relation"} & set(self.terms) else 1
        self._nbest = self._student_nbest() if "sequence" in self.terms and self.cache is not None else {}
        self.projections = self._make_projections()
        # The optimiser also trains the projections: rebuilt here, before any resume loads it.
        o = config.optim
        params = list(self.model.parameters()) + list(self.projections.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        if self.is_main:
            self._report_setup()
        if resume:
            self._resume()

    # ------------------------------------------------------------------ set-up
    def _validate(self) -> None:
        super()._validate()
        kd, a = self.cfg.kd, self.cfg.augment
        terms = kd.enabled_terms()
        if not set(terms) - {"ctc"}:
            raise ConfigError("kd.weights: no distillation term has a weight > 0 (frame, sequence, feature, "
                              "relation); for CTC alone use `asrkd train`")
        if kd.teacher_mode == "cache" and not kd.cache:
            raise ConfigError("kd.cache: give the posterior cache folder (asrkd cache build), "
                              "or set kd.teacher_mode: online with kd.teacher")
        if kd.teacher_mode == "online" and not kd.teacher and self.teacher is None:
            raise ConfigError("kd.teacher: online distillation needs a teacher (checkpoint or HF folder)")
        if {"feature", "relation"} & set(terms) and not kd.layer_map:
            raise ConfigError("kd.layer_map: feature/relation KD needs {student_block: teacher_layer}, e.g. {3: 7}")
        frame_level = {"frame", "feature", "relation"} & set(terms)
        if kd.teacher_mode == "cache" and frame_level and list(a.speed_factors or [1.0]) != [1.0]:
            raise ConfigError(
                f"augment.speed_factors is {a.speed_factors}: speed perturbation changes the audio's length, "
                f"so the student's frames would not line up with the teacher's cached ones "
                f"({', '.join(sorted(frame_level))} KD); set augment.speed_factors: [1.0] (noise, band-limiting "
                "and SpecAugment are fine), or use kd.teacher_mode: online"
            )

    def _load_train_utterances(self) -> list[Utterance]:
        """Manifests -> utterances, checked against the cache; unlabelled ones get pseudo-labels."""
        utts = super()._load_train_utterances()
        kd = self.cfg.kd
        with torch.random.fork_rng():  # building the teacher must not move the student's seed
            if kd.teacher_mode == "cache":
                self.cache = PosteriorCache(kd.cache)
                check_teacher = self.teacher or (load_teacher(kd.teacher) if kd.teacher else None)
                self.cache.check(utts, teacher=check_teacher)
            elif self.teacher is None:
                self.teacher = load_teacher(kd.teacher)
        if all(u.text is not None for u in utts):
            self._student_tokenizer = None  # the trainer's rule: data.tokens or the training texts
            return utts
        if self.cache is None:
            raise ConfigError("data.train has utterances without text: their pseudo-labels come from the teacher's "
                              "N-best in a posterior cache; build one (asrkd cache build) and set kd.cache")
        kept = self._pseudo_label(utts)
        self._student_tokenizer = self._unlabelled_tokenizer()
        kept = self._drop_unencodable(kept)
        if self.is_main:
            out = self.out_dir / PSEUDO_LABEL_DROPS
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in self.pseudo_label_drops))
            os.replace(tmp, out)
        if not kept:
            raise ConfigError(f"every unlabelled utterance was dropped; see {self.out_dir / PSEUDO_LABEL_DROPS}")
        return kept

    def _pseudo_label(self, utts: list[Utterance]) -> list[Utterance]:
        cfg = self.cfg.kd.pseudo_label
        kept = []
        for u in utts:
            if u.text is not None:
                kept.append(u)
                continue
            conf = self.cache.confidence(u.utt_id)
            hyps = self.cache.nbest(u.utt_id)
            text = hyps[0].text if hyps else ""
            if conf is not None and conf < cfg.min_confidence:
                self._drop(u, conf, f"confidence {conf:.4f} < min_confidence {cfg.min_confidence}")
            elif cfg.drop_empty and not text.strip():
                self._drop(u, conf, "the teacher's best hypothesis is empty")
            else:
                kept.append(replace(u, text=text, extra={**u.extra, "pseudo_label": True}))
        return kept

    def _drop(self, u: Utterance, confidence: float | None, reason: str) -> None:
        self.pseudo_label_drops.append({"utt_id": u.utt_id, "confidence": confidence,
                                        "threshold": self.cfg.kd.pseudo_label.min_confidence, "reason": reason})

    def _unlabelled_tokenizer(self):
        if self.cfg.data.tokens or self.cfg.model.init_from:
            return super()._make_tokenizer()  # given, or the initial checkpoint's
        vocab = self.cache.vocabulary
        tokens = [BLANK] + [t for t in vocab if t != BLANK and (len(t) == 1 or t == UNK)]
        if not is_char_vocabulary(vocab) or WORD_SEP not in tokens:
            raise ConfigError("data.tokens: unlabelled training audio and a teacher without a character "
                              "vocabulary; give the student's tokens.txt")
        return CharTokenizer(tokens)

    def _drop_unencodable(self, utts: list[Utterance]) -> list[Utterance]:
        tok = self._student_tokenizer
        kept = []
        for u in utts:
            unknown = tok.unknown_characters(u.text) if u.extra.get("pseudo_label") else []
            if unknown and getattr(tok, "unk_id", None) is None:
                self._drop(u, self.cache.confidence(u.utt_id),
                           f"pseudo-label {u.text!r} has characters outside the student vocabulary: {unknown}")
            else:
                kept.append(u)
        return kept

    def _make_tokenizer(self):
        return self._student_tokenizer or super()._make_tokenizer()

    def _teacher_vocabulary(self) -> tuple[list[str], float, int]:
        if self.cache is not None:
            if not self.cache.has_posteriors and set(self.terms) - {"ctc", "sequence"}:
                raise ConfigError(f"{self.cache.folder}: built from a text-only teacher; only the ctc (pseudo-label) "
                                  "and sequence terms can use it")
            return self.cache.vocabulary, self.cache.frame_shift, self.cache.blank_id
        return list(self.teacher.vocabulary), self.teacher.frame_shift, self.teacher.blank_id

    def _student_nbest(self) -> dict[str, list[tuple[list[int], float]]]:
        """Each training utterance's teacher N-best as student token ids (by text, unless the
        vocabularies are identical); hypotheses the student cannot spell are left out."""
        same = self.cache.vocabulary == list(self.tokenizer.tokens)
        out, skipped = {}, 0
        for u in self.train_utts:
            hyps = []
            for h in self.cache.nbest(u.utt_id):
                if same:
                    hyps.append((h.ids, h.score))
                    continue
                try:
                    hyps.append((self.tokenizer.encode(h.text), h.score))
                except UnknownCharactersError:
                    skipped += 1
            out[u.utt_id] = hyps
        self._nbest_skipped = skipped
        return out

    def _make_projections(self) -> nn.ModuleDict:
        projections = nn.ModuleDict()
        if "feature" not in self.terms:
            return projections
        d_teacher = self.cache.hidden_sizes if self.cache is not None else None
        for s_layer, t_layer in sorted(self.cfg.kd.layer_map.items()):
            if s_layer >= self.model.config.n_layers:
                raise ConfigError(f"kd.layer_map: student block {s_layer} does not exist "
                                  f"(the student has {self.model.config.n_layers}, 0-based)")
            if d_teacher is not None:
                if t_layer not in d_teacher:
                    raise CacheError(f"{self.cache.folder}: teacher layer {t_layer} (kd.layer_map) is not cached "
                                     f"(cached: {sorted(d_teacher)}); rebuild with --hidden-layers {t_layer}")
                dim = d_teacher[t_layer]
            else:
                dim = self.teacher.hidden_size()
            projections[str(s_layer)] = nn.Linear(self.model.config.d_model, dim)
        if self.world_size > 1:  # not inside the student's DDP wrapper: average their gradients here
            for p in projections.parameters():
                p.register_post_accumulate_grad_hook(_all_reduce_mean)
        return projections

    def _report_setup(self) -> None:
        kd = self.kd
        source = f"cache {self.cache.folder}" if self.cache is not None else f"online teacher {kd.teacher or self.teacher}"
        print(f"distilling from {source}; terms {self.terms}; teacher/student frame ratio {self.ratio}")
        if self.vmap is not None and not self.vmap.identity:
            print(f"vocabulary: teacher symbols without a student token (their mass joins the residual): "
                  f"{self.vmap.unmapped_teacher[:10]}; student tokens the teacher lacks: {self.vmap.uncovered_student[:10]}")
        if self.pseudo_label_drops:
            print(f"pseudo-labels: dropped {len(self.pseudo_label_drops)} utterance(s), "
                  f"see {self.out_dir / PSEUDO_LABEL_DROPS}")
        if getattr(self, "_nbest_skipped", 0):
            print(f"sequence KD: {self._nbest_skipped} teacher hypotheses use characters the student lacks; left out")

    # ------------------------------------------------------------------ state
    def _trainer_state(self) -> dict:
        return {**super()._trainer_state(), "kd_modules": self.projections.state_dict()}

    def _resume(self) -> None:
        super()._resume()
        steps = list_step_checkpoints(self.ckpt_dir)
        if steps and len(self.projections):
            self.projections.load_state_dict(load_trainer_state(steps[-1])["kd_modules"])

    # ------------------------------------------------------------------ loss
    def teacher_targets(self, batch: dict, student_lens: Tensor, max_t: int) -> TeacherTargets:
        """The teacher's targets for a batch, at the student's token ids, frame rate and length."""
        if self.cache is not None:
            targets = self.cache.targets(batch["utt_ids"], self.layers)
            targets = replace(targets, lengths=targets.lengths.to(student_lens.device))
        else:
            out = self.teacher(batch["wavs"], batch["wav_lens"], return_hidden=bool(self.layers))
            targets = top_k_posteriors(out.log_probs, out.lengths, self.kd.top_k)
            targets.hidden = {layer: out.hidden[layer].float() for layer in self.layers}
            if "sequence" in self.terms:
                self._online_nbest(batch, out)
        vocab_size = self.teacher_vocab_size
        if self.vmap is not None:
            targets = map_targets(targets, self.vmap)
            vocab_size = self.vmap.student_size
        targets = pool_frames(targets, self.ratio, vocab_size)
        return align_to_student(targets, student_lens, max_t)

    def _online_nbest(self, batch: dict, out) -> None:
        for b, utt_id in enumerate(batch["utt_ids"]):
            n = int(out.lengths[b])
            hyps = prefix_beam_search(out.log_probs[b, :n], beam=8, nbest=4, blank=self.teacher.blank_id)
            converted = []
            for ids, score in hyps:
                try:
                    converted.append((self.tokenizer.encode(self.teacher.decode(ids)), score))
                except UnknownCharactersError:
                    pass
            self._nbest[utt_id] = converted

    def compute_loss(self, batch: dict, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, dict[str, float]]:
        kd = self.kd
        w = {t: getattr(kd.weights, t).at(self.step) for t in self.terms}
        need_hidden = (w.get("feature", 0) > 0 or w.get("relation", 0) > 0
                       or (w.get("ctc", 0) > 0 and bool(self.cfg.model.interctc_layers)))
        log_probs, out_lens, hidden = self.ddp_model(feats, feat_lens, return_hidden=need_hidden)
        losses: dict[str, Tensor] = {}
        ctc_parts: dict[str, float] = {}
        if w.get("ctc", 0) > 0:
            if batch["targets"] is None:
                raise ValueError("a batch without transcripts reached the ctc term")
            losses["ctc"], ctc_parts = self.ctc_term(log_probs, out_lens, hidden, batch)
        targets = None
        if any(w.get(t, 0) > 0 for t in ("frame", "feature", "relation")) or (
                w.get("sequence", 0) > 0 and self.cache is None):
            targets = self.teacher_targets(batch, out_lens, log_probs.shape[1])
        if w.get("frame", 0) > 0:
            weights = frame_weights(targets, kd.blank_mode, kd.blank_weight)
            losses["frame"] = frame_kd_loss(log_probs, targets, weights, kd.temperature)
        if w.get("sequence", 0) > 0:
            nbest = [self._nbest.get(u, []) for u in batch["utt_ids"]]
            losses["sequence"] = sequence_kd_loss(log_probs, out_lens, nbest, kd.seq_temperature)
        if w.get("feature", 0) > 0:
            losses["feature"] = sum(
                feature_kd_loss(hidden[s], targets.hidden[t], targets.lengths, self.projections[str(s)])
                for s, t in kd.layer_map.items()) / len(kd.layer_map)
        if w.get("relation", 0) > 0:
            losses["relation"] = sum(
                relation_kd_loss(hidden[s], targets.hidden[t], targets.lengths)
                for s, t in kd.layer_map.items()) / len(kd.layer_map)
        total = sum(w[name] * value for name, value in losses.items())
        terms = {name: value.item() for name, value in losses.items()}
        terms.update(ctc_parts)  # with interctc_layers: `ctc` of the output alone and `interctc`, as in training
        terms.update({f"w_{t}": w[t] for t in self.terms if getattr(kd.weights, t).schedule != "constant"})
        return total, terms


def _all_reduce_mean(p: Tensor) -> None:
    dist.all_reduce(p.grad)
    p.grad.div_(dist.get_world_size())
