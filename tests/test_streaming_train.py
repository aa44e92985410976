"""Training a streaming (causal) student: dynamic chunks drawn from (seed, step), distillation
from a full-context teacher's cache with a frame delay, exact resume, the config's refusals, and
`asrkd eval` of a streaming checkpoint at its own chunking or another."""

from __future__ import annotations

import pytest
import torch
from test_distill import _Killed, cache_dir, corpus, dies_before_step, kd_config, teacher_ckpt  # noqa: F401

from asrkd.checkpoint import list_step_checkpoints
from asrkd.cli import main as cli_main
from asrkd.config import ConfigError, TrainConfig
from asrkd.contract import Contract
from asrkd.distill import Distiller
from asrkd.features import FrontendConfig
from asrkd.inference import ChunkingError, evaluate_checkpoint
from asrkd.kd import KDLoss
from asrkd.loop import DynamicChunks
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.models.streaming import FULL_CONTEXT
from asrkd.teacher_targets import InMemoryTargets
from asrkd.text import CharTokenizer
from asrkd.train import read_log

# student-xs made causal: 2-frame chunks (x8 subsampling: 160 ms), 2 chunks of left context
STREAM_MODEL = {"preset": "student-xs",
                "overrides": {"subsampling": 8, "dropout": 0.1, "causal": True, "chunk_size": 2, "left_chunks": 2},
                "dynamic_chunks": {"enabled": True, "max_chunk_size": 4, "full_context_prob": 0.3,
                                   "max_left_chunks": 2}}


def stream_config(manifest, out_dir, cache, **changes) -> dict:
    """`kd_config` with the streaming student (its dynamic chunks on) and a streamable front end."""
    cfg = kd_config(manifest, out_dir, cache, **changes)
    cfg["model"] = {**STREAM_MODEL, **changes.get("model", {})}
    cfg["frontend"] = {"normalize": "none"}
    return cfg


def test_dynamic_chunks_are_a_function_of_seed_and_step_and_leave_the_global_rng_alone():
    chunks = DynamicChunks(max_chunk_size=4, full_context_prob=0.3, max_left_chunks=2, seed=7)
    state = torch.get_rng_state()
    draws = [chunks(step) for step in range(40)]
    assert torch.equal(torch.get_rng_state(), state)
    assert draws == [chunks(step) for step in range(40)]  # a resumed run draws the same
    assert draws != [DynamicChunks(4, 0.3, 2, seed=8)(step) for step in range(40)]
    sizes = {c.chunk_size for c in draws}
    assert FULL_CONTEXT in sizes and sizes - {FULL_CONTEXT} <= {1, 2, 3, 4} and len(sizes) > 2
    assert all(c.left_chunks == FULL_CONTEXT if c.chunk_size == FULL_CONTEXT else 0 <= c.left_chunks <= 2
               for c in draws)


def test_a_streaming_student_distils_with_dynamic_chunks_and_a_killed_run_resumes_to_the_same_losses(
        corpus, cache_dir, tmp_path):  # noqa: F811
    changes = dict(
        augment={"speed_factors": [1.0], "noise_prob": 0.5, "freq_masks": 2, "time_masks": 2},
        optim={"max_steps": 6, "schedule": "cosine", "warmup_steps": 2},
        run={"checkpoint_every": 2, "keep_last": 5},
        kd={"cache": str(cache_dir), "frame_delay": 1, "layer_map": {2: 1},
            "weights": {"ctc": 1.0, "frame": 1.0, "sequence": 0.5, "feature": 0.5}},
    )
    straight = tmp_path / "straight"
    distiller = Distiller(TrainConfig.from_dict(stream_config(corpus, straight, cache_dir, **changes)))
    assert distiller.loop.chunks == DynamicChunks(4, 0.3, 2, seed=0)
    best = distiller.fit()
    log = [r for r in read_log(straight) if "loss" in r]
    expected = {int(r["step"]): r["loss"] for r in log}
    assert sorted(expected) == list(range(1, 7))
    for term in ("ctc", "frame", "sequence", "feature"):
        assert all(r[term] > 0 for r in log), term

    killed = tmp_path / "killed"
    config = TrainConfig.from_dict(stream_config(corpus, killed, cache_dir, **changes))
    with pytest.raises(_Killed):
        dies_before_step(Distiller(config), 5).fit()
    assert list_step_checkpoints(killed / "checkpoints")[-1].name == "step-0000004"
    Distiller(config, resume=True).fit()
    got = {int(r["step"]): r["loss"] for r in read_log(killed) if "loss" in r}
    for step in (5, 6):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step

    # asrkd eval: the checkpoint's own chunking (its streaming WER) by default, or another one
    own = evaluate_checkpoint(best, corpus)
    assert (own["chunk_size"], own["left_chunks"]) == (2, 2)
    full = evaluate_checkpoint(best, corpus, chunk_size=FULL_CONTEXT)
    assert (full["chunk_size"], full["left_chunks"]) == (FULL_CONTEXT, 2)
    assert cli_main(["eval", str(best), "--manifest", str(corpus), "--chunk-size", "4", "--left-chunks", "-1"]) == 0


def test_eval_refuses_a_chunked_run_of_a_full_context_checkpoint(corpus, teacher_ckpt):  # noqa: F811
    assert "chunk_size" not in evaluate_checkpoint(teacher_ckpt, corpus)
    with pytest.raises(ChunkingError, match="not causal"):
        evaluate_checkpoint(teacher_ckpt, corpus, chunk_size=4)
    with pytest.raises(ChunkingError, match="chunk_size=0"):
        evaluate_checkpoint(teacher_ckpt, corpus, chunk_size=0)


@pytest.mark.parametrize("model, frontend, message", [
    ({"preset": "student-xs", "dynamic_chunks": {"enabled": True}}, {"normalize": "none"},
     "model.dynamic_chunks.enabled: model.preset 'student-xs' is not causal"),
    (STREAM_MODEL, {}, "needs the whole utterance: frontend.normalize='per_feature'"),
    (STREAM_MODEL, {"normalize": "none", "framing": "kaldi"}, "frontend.framing='kaldi'"),
    ({**STREAM_MODEL, "dynamic_chunks": {"full_context_prob": 1.5}}, {}, "model.dynamic_chunks.full_context_prob: 1.5 is out of range"),
    ({**STREAM_MODEL, "dynamic_chunks": {"max_left_chunks": -1}}, {}, "model.dynamic_chunks.max_left_chunks: -1 is out of range"),
])
def test_streaming_settings_that_cannot_work_are_named(corpus, cache_dir, tmp_path, model, frontend, message):  # noqa: F811
    cfg = stream_config(corpus, tmp_path, cache_dir)
    cfg.update(model=model, frontend=frontend)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Distiller(TrainConfig.from_dict(cfg))
    with pytest.raises(ConfigError, match=r"kd.frame_delay: -2 is out of range \(allowed: a whole number >= 0\)"):
        TrainConfig.from_dict({"kd": {"frame_delay": -2}})


def test_kd_loss_with_a_frame_delay_compares_student_frame_t_with_teacher_frame_t_minus_d():
    tok = CharTokenizer.from_texts(["one two"])
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size))
    teacher = torch.log_softmax(3 * torch.randn(1, 20, tok.vocab_size, generator=torch.Generator().manual_seed(0)), -1)
    source = InMemoryTargets.from_log_probs({"a": teacher[0]}, tok.tokens,
                                            Contract.from_parts(FrontendConfig(), model.config).output_frame_shift)
    late = torch.cat([torch.log_softmax(torch.randn(1, 2, tok.vocab_size), -1), teacher[:, :-2]], dim=1)
    batch = {"utt_ids": ["a"], "targets": None}

    def frame_loss(delay):
        kd = KDLoss(source, model, tok, weights={"frame": 1.0}, frame_delay=delay)
        return kd((late, torch.tensor([20]), None), batch)[1]["frame"]

    assert frame_loss(2) == pytest.approx(0.0, abs=1e-4)  # top-k + residual buckets: rounding
    assert frame_loss(0) > 1.0
