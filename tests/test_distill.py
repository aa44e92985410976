"""The distiller: every loss term end to end, exact resume, online vs cached teacher, pseudo-labels,
and the refusals (speed perturbation with cached targets, stale caches, mismatched vocabularies)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from asrkd.cache import PosteriorCache, StaleCacheError, build_cache
from asrkd.checkpoint import list_step_checkpoints, load_checkpoint, save_checkpoint
from asrkd.cli import main as cli_main
from asrkd.config import ConfigError, TrainConfig
from asrkd.data import read_manifest, write_manifest
from asrkd.distill import PSEUDO_LABEL_DROPS, Distiller
from asrkd.features import FrontendConfig
from asrkd.inference import Transcriber
from asrkd.losses import VocabularyMismatchError
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.synth import synthesize_corpus
from asrkd.teacher import CallableTeacher, CheckpointTeacher, load_teacher
from asrkd.text import CharTokenizer
from asrkd.train import read_log


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthesize_corpus(task="digits", n=6, out_dir=tmp_path_factory.mktemp("synth6"), workers=1)


@pytest.fixture(scope="module")
def teacher_ckpt(corpus, tmp_path_factory) -> Path:
    """A randomly initialised x4 student-xs as the teacher (40 ms frames)."""
    tok = CharTokenizer.from_texts(u.text for u in read_manifest(corpus))
    torch.manual_seed(123)
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size))
    return save_checkpoint(tmp_path_factory.mktemp("teacher") / "ckpt", model, FrontendConfig(), tok)


@pytest.fixture(scope="module")
def cache_dir(corpus, teacher_ckpt, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache") / "c"
    build_cache(CheckpointTeacher(teacher_ckpt), [corpus], folder, top_k=4, shard_size=3, hidden_layers=[1],
                progress=False)
    return folder


def kd_config(manifest, out_dir, cache, **changes) -> dict:
    """student-xs at x8 subsampling (80 ms frames): two teacher frames per student frame."""
    cfg = {
        "data": {"train": [str(manifest)], "max_batch_seconds": 5.0, "num_workers": 0},
        "model": {"preset": "student-xs", "overrides": {"subsampling": 8, "dropout": 0.0}},
        "augment": {"speed_factors": [1.0], "noise_prob": 0.0, "freq_masks": 0, "time_masks": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 5, "schedule": "constant", "max_steps": 6},
        "run": {"out_dir": str(out_dir), "threads": 1, "checkpoint_every": 1000, "log_every": 1,
                "progress": False},
        "kd": {"cache": str(cache), "weights": {"ctc": 1.0, "frame": 1.0}},
    }
    for section, values in changes.items():
        cfg[section].update(values)
    return cfg


EVERY_TERM = {
    "cache": None,  # filled in
    "blank_mode": "symmetric",
    "temperature": 2.0,
    "layer_map": {2: 1},
    "weights": {"ctc": 1.0, "frame": 1.0, "sequence": 0.5,
                "feature": {"value": 0.5, "schedule": "linear", "ramp_steps": 4},
                "relation": {"value": 1.0, "schedule": "cosine", "initial": 0.2, "ramp_steps": 4}},
}


class _Killed(Exception):
    pass


def dies_before_step(distiller: Distiller, step: int) -> Distiller:
    """The distiller, made to raise (as if killed) when it is about to take optimiser step ``step``."""
    loop, train_step = distiller.loop, distiller.loop.train_step

    def dying(batch):
        if loop.pos.step + 1 == step:
            raise _Killed
        return train_step(batch)

    loop.train_step = dying
    return distiller


def test_every_term_trains_and_a_killed_run_resumes_to_the_same_losses(corpus, cache_dir, tmp_path):
    # Waveform noise, band-limiting, SpecAugment and dropout on: what exact resume must replay.
    changes = dict(
        model={"preset": "student-xs", "overrides": {"subsampling": 8, "dropout": 0.1},
               "interctc_layers": [1]},  # the ctc term with intermediate CTC mixed in
        augment={"speed_factors": [1.0], "noise_prob": 0.5, "bandlimit_prob": 0.5, "freq_masks": 2,
                 "time_masks": 2},
        optim={"max_steps": 10, "schedule": "cosine", "warmup_steps": 3},
        run={"checkpoint_every": 3, "keep_last": 5},
        kd={**EVERY_TERM, "cache": str(cache_dir)},
    )
    straight = tmp_path / "straight"
    best = Distiller(TrainConfig.from_dict(kd_config(corpus, straight, cache_dir, **changes))).fit()
    log = read_log(straight)
    expected = {int(r["step"]): r["loss"] for r in log if "loss" in r}
    assert sorted(expected) == list(range(1, 11))
    for term in ("ctc", "interctc", "frame", "sequence", "feature", "relation"):
        assert all(r[term] > 0 for r in log if "loss" in r and r["step"] > 1), term
    assert [r["w_feature"] for r in log[:5]] == [0.0, 0.125, 0.25, 0.375, 0.5]
    for r in log:  # the ctc term is (1 - 0.3) CTC(output) + 0.3 CTC(block 1); the log has both parts
        if "loss" in r and r["step"] > 1:
            total = (0.7 * r["ctc"] + 0.3 * r["interctc"] + r["frame"] + 0.5 * r["sequence"]
                     + r["w_feature"] * r["feature"] + r["w_relation"] * r["relation"])
            assert r["loss"] == pytest.approx(total, rel=1e-4), r

    killed = tmp_path / "killed"
    config = TrainConfig.from_dict(kd_config(corpus, killed, cache_dir, **changes))
    with pytest.raises(_Killed):
        dies_before_step(Distiller(config), 7).fit()
    resumed_from = int(list_step_checkpoints(killed / "checkpoints")[-1].name[5:])
    assert resumed_from == 6
    Distiller(config, resume=True).fit()
    got = {int(r["step"]): r["loss"] for r in read_log(killed) if "loss" in r}
    assert sorted(got) == list(range(1, 11))
    for step in range(resumed_from + 1, 11):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step

    # The student's checkpoint is a plain asrkd checkpoint: no projection weights in it.
    loaded = load_checkpoint(best)
    assert loaded.model_config.subsampling == 8
    assert set(load_file(str(best / "model.safetensors"))) == set(loaded.model.state_dict())
    wav = read_manifest(corpus)[0].audio_filepath
    assert isinstance(Transcriber.from_checkpoint(best).transcribe_files([wav])[0].text, str)


def test_frame_kd_alone_pulls_the_student_towards_the_teacher(corpus, cache_dir, tmp_path):
    cfg = kd_config(corpus, tmp_path / "run", cache_dir, optim={"max_steps": 40, "lr": 5e-3},
                    kd={"cache": str(cache_dir), "weights": {"ctc": 0.0, "frame": 1.0}})
    with pytest.raises(ConfigError, match="model.interctc_layers is mixed into the ctc term, but kd.weights.ctc is 0"):
        Distiller(TrainConfig.from_dict({**cfg, "model": {**cfg["model"], "interctc_layers": [1]}}))
    Distiller(TrainConfig.from_dict(cfg)).fit()
    frame = [r["frame"] for r in read_log(tmp_path / "run")]
    assert "ctc" not in read_log(tmp_path / "run")[0]
    assert sum(frame[-3:]) / 3 < 0.3 * sum(frame[:3]) / 3, frame


def test_online_teacher_gives_the_cached_targets(corpus, cache_dir, teacher_ckpt, tmp_path):
    def first_loss(kd, name):
        cfg = kd_config(corpus, tmp_path / name, cache_dir, optim={"max_steps": 1}, kd=kd)
        Distiller(TrainConfig.from_dict(cfg)).fit()
        return read_log(tmp_path / name)[0]

    weights = {"ctc": 0.0, "frame": 1.0, "feature": 1.0, "relation": 1.0}
    cached = first_loss({"cache": str(cache_dir), "layer_map": {1: 1}, "weights": weights}, "cached")
    online = first_loss({"teacher_mode": "online", "teacher": str(teacher_ckpt), "top_k": 4,
                         "layer_map": {1: 1}, "weights": weights}, "online")
    for term in ("frame", "feature", "relation"):  # the cache only rounds to fp16
        assert online[term] == pytest.approx(cached[term], rel=2e-3), term


def test_speed_perturbation_is_refused_with_cached_frame_targets(corpus, cache_dir, tmp_path):
    cfg = kd_config(corpus, tmp_path / "run", cache_dir, augment={"speed_factors": [0.9, 1.0, 1.1]})
    with pytest.raises(ConfigError, match=r"speed_factors: \[1.0\]"):
        Distiller(TrainConfig.from_dict(cfg))
    # sequence KD alone does not compare frames: speed perturbation is fine there
    cfg["kd"]["weights"] = {"ctc": 1.0, "sequence": 1.0}
    Distiller(TrainConfig.from_dict(cfg))


def test_a_stale_cache_is_refused_by_the_distiller(corpus, cache_dir, tmp_path):
    utts = read_manifest(corpus)
    utts[1] = replace(utts[1], text="zero zero zero")
    edited = tmp_path / "edited.jsonl"
    write_manifest(edited, utts)
    with pytest.raises(StaleCacheError, match=f"manifest entry {utts[1].utt_id}: text"):
        Distiller(TrainConfig.from_dict(kd_config(edited, tmp_path / "run", cache_dir)))


def test_unlabelled_audio_gets_pseudo_labels_and_the_filter_records_its_drops(corpus, teacher_ckpt, tmp_path):
    unlabelled = tmp_path / "unlabelled.jsonl"
    write_manifest(unlabelled, [replace(u, text=None) for u in read_manifest(corpus)])
    cache = tmp_path / "cache"
    build_cache(CheckpointTeacher(teacher_ckpt), [unlabelled], cache, top_k=4, progress=False)
    confidences = {u.utt_id: PosteriorCache(cache).confidence(u.utt_id) for u in read_manifest(unlabelled)}
    threshold = sorted(confidences.values())[3]  # keeps the 3 most confident
    cfg = kd_config(unlabelled, tmp_path / "run", cache, optim={"max_steps": 2},
                    kd={"cache": str(cache), "pseudo_label": {"min_confidence": threshold},
                        "weights": {"ctc": 1.0, "frame": 1.0}})
    distiller = Distiller(TrainConfig.from_dict(cfg))
    drops = [json.loads(line) for line in (tmp_path / "run" / PSEUDO_LABEL_DROPS).read_text().splitlines()]
    dropped = {d["utt_id"] for d in drops}
    assert dropped == {u for u, c in confidences.items() if c < threshold}
    for d in drops:
        assert d["confidence"] == confidences[d["utt_id"]] and d["threshold"] == threshold
        assert d["reason"].startswith("confidence ") and f"< min_confidence {threshold}" in d["reason"]
    kept = distiller.parts.train_utts
    assert len(kept) == 3 and all(u.extra["pseudo_label"] for u in kept)
    teacher_cache = PosteriorCache(cache)
    assert [u.text for u in kept] == [teacher_cache.nbest(u.utt_id)[0].text for u in kept]
    assert distiller.tokenizer.tokens == teacher_cache.vocabulary  # the teacher's characters
    first = distiller.fit()
    assert all(r["ctc"] > 0 and r["frame"] > 0 for r in read_log(tmp_path / "run") if "loss" in r)
    # a second stage starts from the first one's weights and keeps its vocabulary
    cfg["model"]["init_from"] = str(first)
    cfg["run"]["out_dir"] = str(tmp_path / "stage2")
    assert Distiller(TrainConfig.from_dict(cfg)).tokenizer.tokens == distiller.tokenizer.tokens


def test_word_piece_teacher_refuses_frame_kd_but_sequence_kd_still_works(corpus, teacher_ckpt, tmp_path):
    inner = CheckpointTeacher(teacher_ckpt)
    pieces = ["<blk>", "▁"] + [f"▁{t}" if i % 2 else t for i, t in enumerate(inner.vocabulary[2:])]

    def fn(wavs, wav_lens):
        out = inner(wavs, wav_lens)
        return out.log_probs, out.lengths

    teacher = CallableTeacher(fn, pieces, inner.frame_shift, fingerprint="bpe-teacher")
    build_cache(teacher, [corpus], tmp_path / "cache", progress=False)
    cfg = kd_config(corpus, tmp_path / "run", tmp_path / "cache", optim={"max_steps": 2})
    with pytest.raises(VocabularyMismatchError, match="sequence-level KD"):
        Distiller(TrainConfig.from_dict(cfg))
    cfg["kd"]["weights"] = {"ctc": 1.0, "sequence": 1.0}
    Distiller(TrainConfig.from_dict(cfg)).fit()
    assert all("sequence" in r for r in read_log(tmp_path / "run") if "loss" in r)


def test_distill_command(corpus, cache_dir, tmp_path, capsys):
    config = tmp_path / "kd.yaml"
    config.write_text(yaml.safe_dump(kd_config(corpus, tmp_path / "run", cache_dir, optim={"max_steps": 2})))
    assert cli_main(["distill", "--config", str(config)]) == 0
    assert "best checkpoint:" in capsys.readouterr().out
    assert (tmp_path / "run" / "config.yaml").is_file()
    saved = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.kd.weights.frame.value == 1.0 and saved.kd.cache == str(cache_dir)


def _ddp_worker(rank, world, port, cfg_dict, out):
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    distiller = Distiller(TrainConfig.from_dict(cfg_dict))
    distiller.fit()
    state = {**distiller.model.state_dict(), **{f"kd.{k}": v for k, v in distiller.parts.loss.state_dict().items()}}
    torch.save({k: v.clone() for k, v in state.items()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_keeps_student_and_projections_identical(corpus, cache_dir, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = kd_config(corpus, tmp_path / "ddp", cache_dir, optim={"max_steps": 4},
                    kd={"cache": str(cache_dir), "layer_map": {2: 1},
                        "weights": {"ctc": 1.0, "frame": 1.0, "feature": 1.0}})
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, cfg, str(tmp_path)), nprocs=2)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert any(k.startswith("kd.") for k in w0)
    assert all(torch.equal(w0[k], w1[k]) for k in w0), [k for k in w0 if not torch.equal(w0[k], w1[k])]


def test_a_hugging_face_teacher_at_20ms_distils_into_a_40ms_character_student(corpus, tmp_path):
    pytest.importorskip("transformers")
    from test_teacher import tiny_wav2vec2

    tiny_wav2vec2(tmp_path / "w2v", return_attention_mask=False)
    build_cache(load_teacher(tmp_path / "w2v"), [corpus], tmp_path / "cache", hidden_layers=[1], progress=False)
    cfg = kd_config(corpus, tmp_path / "run", tmp_path / "cache", optim={"max_steps": 2},
                    model={"preset": "student-xs", "overrides": {"dropout": 0.0}},  # x4: 40 ms
                    kd={"cache": str(tmp_path / "cache"), "layer_map": {2: 1},
                        "weights": {"ctc": 1.0, "frame": 1.0, "sequence": 1.0, "feature": 1.0}})
    distiller = Distiller(TrainConfig.from_dict(cfg))
    kd = distiller.parts.loss
    assert kd.ratio == 2
    teacher_vocab, student = PosteriorCache(tmp_path / "cache").vocabulary, distiller.tokenizer.tokens
    assert kd.vmap.ids[teacher_vocab.index("e")] == student.index("e")  # "E" in the HF vocabulary
    assert {"<s>", "</s>", "<unk>"} <= set(kd.vmap.unmapped_teacher)
    distiller.fit()
    rows = [r for r in read_log(tmp_path / "run") if "loss" in r]
    assert all(r["frame"] > 0 and r["feature"] > 0 and "sequence" in r for r in rows)


def test_in_memory_targets_give_the_cached_losses(corpus, cache_dir, tmp_path):
    """The same teacher targets from memory as from the cache: the same KDLoss terms."""
    from asrkd.data import collate
    from asrkd.kd import KDLoss
    from asrkd.teacher_targets import CachedTargets, InMemoryTargets

    cfg = kd_config(corpus, tmp_path / "run", cache_dir, kd={**EVERY_TERM, "cache": str(cache_dir)})
    parts = Distiller(TrainConfig.from_dict(cfg)).parts
    cache = PosteriorCache(cache_dir)
    utts = parts.train_utts
    in_memory = InMemoryTargets({u.utt_id: cache.targets([u.utt_id], [1]) for u in utts}, cache.vocabulary,
                                cache.frame_shift, nbest={u.utt_id: [(h.text, h.score) for h in cache.nbest(u.utt_id)]
                                                          for u in utts})
    batch = collate([parts.data.dataset[i] for i in range(4)])
    feats, feat_lens = parts.frontend(batch["wavs"], batch["wav_lens"])
    parts.model.eval()
    out = parts.model(feats, feat_lens, return_hidden=True)
    kd_args = dict(weights=parts.loss.weights, temperature=2.0, blank_mode="symmetric", layer_map={2: 1})
    losses = []
    for source in (CachedTargets(cache), in_memory):
        torch.manual_seed(0)  # the same feature projection
        kd = KDLoss(source, parts.model, parts.tokenizer, parts.frontend.config, **kd_args)
        losses.append(kd(out, batch, step=4)[1])
    assert set(losses[0]) == {"ctc", "frame", "sequence", "feature", "relation", "w_feature", "w_relation"}
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert losses[0]["frame"] > 0 and losses[0]["sequence"] > 0


@pytest.mark.parametrize("kd, message", [
    ({"weights": {"ctc": 1.0, "feature": 1.0}}, r"kd.layer_map: feature/relation KD needs \{student_block: teacher_layer\}"),
    ({"layer_map": {5: 1}, "weights": {"ctc": 1.0, "feature": 1.0}},
     r"kd.layer_map: student block 5 does not exist \(the student has 3, 0-based\)"),
])
def test_bad_kd_settings_are_named_with_their_config_key(corpus, cache_dir, tmp_path, kd, message):
    cfg = kd_config(corpus, tmp_path / "run", cache_dir, kd={"cache": str(cache_dir), **kd})
    with pytest.raises(ConfigError, match=message):
        Distiller(TrainConfig.from_dict(cfg))


def test_kd_loss_built_by_hand_names_a_bad_argument(corpus, cache_dir):
    from asrkd.kd import KDLoss, KDSettingError
    from asrkd.teacher_targets import CachedTargets

    tok = CharTokenizer.from_texts(u.text for u in read_manifest(corpus))
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size, subsampling=8))
    with pytest.raises(KDSettingError, match=r"weights: unknown term\(s\) \['frames'\]"):
        KDLoss(CachedTargets(cache_dir), model, tok, weights={"ctc": 1.0, "frames": 1.0})
    kd = KDLoss(CachedTargets(cache_dir), model, tok, weights={"frame": 1.0})
    assert kd.terms == ["frame"] and kd.ratio == 2 and kd.parameters() == []  # unnamed terms weigh 0


def test_an_online_teacher_at_another_sample_rate_is_refused(corpus):
    from asrkd.kd import KDLoss, KDSettingError
    from asrkd.teacher_targets import OnlineTargets

    tok = CharTokenizer.from_texts(u.text for u in read_manifest(corpus))
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size))
    teacher = CallableTeacher(lambda wavs, lens: None, tok.tokens, 0.04, fingerprint="8k", sample_rate=8000)
    with pytest.raises(KDSettingError, match="expects 8000 Hz audio.*at 16000 Hz"):
        KDLoss(OnlineTargets(teacher), model, tok, FrontendConfig(), weights={"frame": 1.0})
    same_rate = CallableTeacher(lambda wavs, lens: None, tok.tokens, 0.04, fingerprint="16k")
    assert KDLoss(OnlineTargets(same_rate), model, tok, FrontendConfig(), weights={"frame": 1.0}).ratio == 1
