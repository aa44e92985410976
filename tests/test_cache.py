"""The posterior cache: round trip, staleness with a message naming the change, resuming a killed
build, building across ranks, and the `asrkd cache build` command."""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from asrkd.cache import (
    BuildReport,
    CacheError,
    CacheSet,
    PosteriorCache,
    StaleCacheError,
    build_cache,
    open_cache,
)
from asrkd.checkpoint import save_checkpoint
from asrkd.cli import main as cli_main
from asrkd.contract import SAMPLE_RATE
from asrkd.data import read_manifest, write_manifest
from asrkd.decoding import prefix_beam_search, utterance_confidence
from asrkd.features import FrontendConfig
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.synth import synthesize_corpus
from asrkd.teacher import CallableTeacher, CheckpointTeacher, PseudoLabelTeacher
from asrkd.text import CharTokenizer

SHARD = 2  # utterances per shard: 6 utterances make 3 shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """6 synthetic spoken-digit utterances, made once for this module."""
    return synthesize_corpus(task="digits", n=6, out_dir=tmp_path_factory.mktemp("synth6"), workers=1)


@pytest.fixture(scope="module")
def teacher_ckpt(corpus, tmp_path_factory) -> Path:
    """A randomly initialised student-xs checkpoint: a teacher for mechanics, not for accuracy."""
    tok = CharTokenizer.from_texts(u.text for u in read_manifest(corpus))
    torch.manual_seed(0)
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size))
    return save_checkpoint(tmp_path_factory.mktemp("teacher") / "ckpt", model, FrontendConfig(), tok)


def test_round_trip_keeps_top_k_within_fp16_precision(corpus, teacher_ckpt, tmp_path):
    teacher = CheckpointTeacher(teacher_ckpt)
    report = build_cache(teacher, [corpus], tmp_path / "cache", top_k=4, nbest=3, shard_size=SHARD,
                         hidden_layers=[1], progress=False)
    assert report.built == [0, 1, 2] and report.skipped == []
    assert report.bytes_per_frame == 4 * (2 + 2) + 2  # fp16 values + uint16 ids, fp16 residual
    assert report.dense_fp32_bytes_per_frame == 4 * len(teacher.vocabulary)
    assert report.hidden_bytes_per_frame == 2 * 64
    cache = PosteriorCache(tmp_path / "cache")
    utts = read_manifest(corpus)
    cache.check(utts, teacher)  # fresh: no complaint
    for u in utts:
        from asrkd.audio import load_audio

        wav = torch.from_numpy(load_audio(u.audio_filepath))[None]
        out = teacher(wav, torch.tensor([wav.shape[1]]), return_hidden=True)
        n = int(out.lengths[0])
        exact, exact_ids = out.log_probs[0, :n].topk(4, dim=-1)
        got = cache.targets([u.utt_id], hidden_layers=[1])
        assert got.lengths.tolist() == [n]
        assert torch.equal(got.topk_ids[0], exact_ids)
        # fp16 keeps 11 significant bits: relative error <= 2^-11, plus batch-vs-alone noise
        assert torch.allclose(got.topk_logp[0], exact, rtol=2**-11, atol=1e-4)
        residual = torch.log1p(-exact.double().exp().sum(-1)).float()
        assert torch.allclose(got.residual[0], residual, rtol=2**-10, atol=1e-3)
        assert torch.allclose(got.hidden[1][0], out.hidden[1][0, :n], rtol=2**-10, atol=1e-3)
        hyps = cache.nbest(u.utt_id)
        expected = prefix_beam_search(out.log_probs[0, :n], beam=8, nbest=3)
        assert [h.ids for h in hyps] == [ids for ids, _ in expected]
        assert hyps[0].text == teacher.decode(expected[0][0])
        assert cache.confidence(u.utt_id) == pytest.approx(utterance_confidence(out.log_probs[0], n), abs=1e-5)
    # the arrays are memory-mapped, not loaded
    assert isinstance(cache.utterance(utts[0].utt_id, "topk_logp").base, np.memmap)
    # a batch pads with empty entries
    batch = cache.targets([utts[0].utt_id, utts[1].utt_id])
    short = int(batch.lengths.min())
    row = int(batch.lengths.argmin())
    assert (batch.topk_ids[row, short:] == -1).all() and torch.isinf(batch.topk_logp[row, short:]).all()


def test_stale_cache_is_refused_with_a_message_naming_what_changed(corpus, teacher_ckpt, tmp_path):
    teacher = CheckpointTeacher(teacher_ckpt)
    build_cache(teacher, [corpus], tmp_path / "cache", shard_size=SHARD, progress=False)
    cache = PosteriorCache(tmp_path / "cache")
    utts = read_manifest(corpus)

    u, v = utts[2], utts[4]
    changed = list(utts)
    changed[2] = replace(u, duration=u.duration + 0.08)  # re-measured audio
    changed[4] = replace(v, text="nine nine")  # corrected transcript
    with pytest.raises(StaleCacheError) as err:
        cache.check(changed)
    message = str(err.value)
    assert f"manifest entry {u.utt_id}: duration {u.duration:g} → {u.duration + 0.08:g}" in message
    assert f"manifest entry {v.utt_id}: text {v.text!r} → 'nine nine'" in message
    assert "2 change(s)" in message and "--force" in message
    # The same audio without its text (label-free distillation) reads the cache as it is; a
    # changed duration on an unlabelled line is still stale.
    cache.check([replace(x, text=None) for x in utts])
    with pytest.raises(StaleCacheError, match=f"manifest entry {u.utt_id}: duration"):
        cache.check([replace(x, text=None) for x in changed])
    # And the other way round: a cache of the audio without its text serves the labelled lines.
    unlabelled = tmp_path / "unlabelled.jsonl"
    write_manifest(unlabelled, [replace(x, text=None) for x in utts])
    build_cache(teacher, [unlabelled], tmp_path / "cache_unlabelled", shard_size=SHARD, progress=False)
    PosteriorCache(tmp_path / "cache_unlabelled").check(utts)

    # another teacher (one weight moved)
    model = CheckpointTeacher(teacher_ckpt).model
    with torch.no_grad():
        model.ctc_head.bias[0] += 0.01
    other = save_checkpoint(tmp_path / "other", model, FrontendConfig(), teacher.tokenizer)
    with pytest.raises(StaleCacheError, match="teacher weights changed"):
        cache.check(utts, CheckpointTeacher(other))

    # building into the folder with other manifest lines is refused too, unless forced
    edited = tmp_path / "edited.jsonl"
    write_manifest(edited, changed)
    with pytest.raises(StaleCacheError, match=f"manifest entry {u.utt_id}: duration"):
        build_cache(teacher, [edited], tmp_path / "cache", shard_size=SHARD, progress=False)
    report = build_cache(teacher, [edited], tmp_path / "cache", shard_size=SHARD, force=True, progress=False)
    assert report.built == [0, 1, 2]
    PosteriorCache(tmp_path / "cache").check(changed)


class _Killed(Exception):
    pass


def test_a_killed_build_resumes_without_recomputing_finished_shards(corpus, teacher_ckpt, tmp_path):
    inner = CheckpointTeacher(teacher_ckpt)
    calls = {"n": 0, "die_at": 3}

    def fn(wavs, wav_lens):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise _Killed  # the third shard's first batch: as if the process were killed there
        out = inner(wavs, wav_lens)
        return out.log_probs, out.lengths

    teacher = CallableTeacher(fn, inner.vocabulary, inner.frame_shift, fingerprint="teacher-v1")
    folder = tmp_path / "cache"
    with pytest.raises(_Killed):
        build_cache(teacher, [corpus], folder, shard_size=SHARD, max_batch_seconds=1000, progress=False)
    finished = {p.name: p.stat().st_mtime_ns for p in (folder / "shards").iterdir()}
    assert sorted(finished) == ["00000", "00001"]
    with pytest.raises(CacheError, match="unfinished cache build"):
        PosteriorCache(folder)

    calls.update(n=0, die_at=-1)
    report = build_cache(teacher, [corpus], folder, shard_size=SHARD, max_batch_seconds=1000, progress=False)
    assert report.skipped == [0, 1] and report.built == [2]
    assert calls["n"] == 1  # one teacher batch: the missing shard only
    assert {p: (folder / "shards" / p).stat().st_mtime_ns for p in finished} == finished
    assert len(PosteriorCache(folder)) == 6


def test_text_only_teacher_caches_hypotheses_and_confidence(corpus, tmp_path):
    texts = {u.duration: u.text for u in read_manifest(corpus)}

    def transcribe(audio):
        return texts[min(texts, key=lambda d: abs(d - len(audio) / SAMPLE_RATE))], 0.7

    build_cache(PseudoLabelTeacher(transcribe, fingerprint="oracle"), [corpus], tmp_path / "c",
                shard_size=SHARD, progress=False)
    cache = PosteriorCache(tmp_path / "c")
    u = read_manifest(corpus)[3]
    assert cache.nbest(u.utt_id)[0].text == u.text and cache.confidence(u.utt_id) == 0.7
    with pytest.raises(CacheError, match="no posteriors"):
        cache.targets([u.utt_id])


def test_the_teacher_hears_audio_at_its_own_sample_rate(corpus, tmp_path):
    heard = []

    def transcribe(audio):
        heard.append(len(audio))
        return "one"

    teacher = PseudoLabelTeacher(transcribe, fingerprint="8k-system", sample_rate=8000)
    build_cache(teacher, [corpus], tmp_path / "c", progress=False)
    assert PosteriorCache(tmp_path / "c").sample_rate == 8000  # recorded in the request's settings
    durations = [u.duration for u in read_manifest(corpus)]  # the corpus is 16 kHz audio
    assert sorted(heard) == sorted(round(d * 8000) for d in durations)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, world, port, ckpt, manifest, folder, results):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    report = build_cache(CheckpointTeacher(ckpt), [manifest], folder, shard_size=SHARD, progress=False)
    Path(results, f"rank{rank}.json").write_text(json.dumps({"built": report.built, "frames": report.frames}))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_split_the_shards_and_rank_0_writes_the_index(corpus, teacher_ckpt, tmp_path):
    folder = tmp_path / "cache"
    torch.multiprocessing.spawn(_rank_worker, args=(2, _free_port(), str(teacher_ckpt), str(corpus),
                                                    str(folder), str(tmp_path)), nprocs=2)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["built"] == [0, 2] and r1["built"] == [1]  # shard i on rank i % 2
    assert r0["frames"] > 0 and r1["frames"] == 0  # the index summary is rank 0's
    cache = PosteriorCache(folder)
    assert len(cache) == 6
    single = build_cache(CheckpointTeacher(teacher_ckpt), [corpus], tmp_path / "single", shard_size=SHARD,
                         progress=False)
    assert single.frames == r0["frames"]
    u = read_manifest(corpus)[5]
    assert torch.equal(cache.targets([u.utt_id]).topk_ids, PosteriorCache(tmp_path / "single").targets([u.utt_id]).topk_ids)


def test_cache_build_command_prints_bytes_per_frame(corpus, teacher_ckpt, tmp_path, capsys):
    assert cli_main(["cache", "build", "--teacher", str(teacher_ckpt), "--manifest", str(corpus),
                     "--out", str(tmp_path / "c"), "--top-k", "3", "--nbest", "2"]) == 0
    out = capsys.readouterr().out
    vocab = len(CheckpointTeacher(teacher_ckpt).vocabulary)
    assert f"14 bytes/frame vs {4 * vocab} for dense fp32 posteriors" in out
    assert math.isclose(PosteriorCache(tmp_path / "c").info["bytes_per_frame"], 14)


def test_cache_build_command_refuses_a_stale_folder_with_the_reason(corpus, teacher_ckpt, tmp_path, capsys):
    args = ["cache", "build", "--teacher", str(teacher_ckpt), "--manifest", str(corpus), "--out", str(tmp_path / "c")]
    assert cli_main(args + ["--top-k", "3"]) == 0
    capsys.readouterr()
    assert cli_main(args + ["--top-k", "4"]) == 2
    err = capsys.readouterr().err
    assert "setting top_k: 3 → 4" in err and "--force" in err
    assert cli_main(args + ["--top-k", "4", "--force"]) == 0


def test_the_build_summary_of_a_text_only_teacher_says_it_holds_no_posteriors(tmp_path):
    text_only = BuildReport(tmp_path, shards=1, built=[0], skipped=[], utterances=3, frames=90,
                            hidden_bytes_per_frame=768, hidden_bytes_per_second=38400)
    assert "no posteriors (a text-only teacher: N-best); hidden states 768 B/frame (38.4 kB" in text_only.summary()
    assert "x smaller" not in text_only.summary()
    ctc = BuildReport(tmp_path, shards=1, built=[0], skipped=[], bytes_per_frame=34, dense_fp32_bytes_per_frame=340)
    assert "34 bytes/frame vs 340 for dense fp32 posteriors (10.0x smaller)" in ctc.summary()


def test_a_cache_set_reads_each_utterance_from_the_cache_that_holds_it(corpus, teacher_ckpt, tmp_path):
    """kd.cache: [A, B]: one batch may mix utterances of both caches; every read equals the read
    from the cache that was built over that utterance."""
    teacher = CheckpointTeacher(teacher_ckpt)
    utts = read_manifest(corpus)
    for name, part in (("a", utts[:4]), ("b", utts[4:])):
        write_manifest(tmp_path / f"{name}.jsonl", part)
        build_cache(teacher, [tmp_path / f"{name}.jsonl"], tmp_path / name, top_k=4, nbest=3, shard_size=SHARD,
                    hidden_layers=[1], progress=False)
    a, b = PosteriorCache(tmp_path / "a"), PosteriorCache(tmp_path / "b")
    both = open_cache([str(tmp_path / "a"), str(tmp_path / "b")])
    assert isinstance(both, CacheSet) and len(both) == 6 and utts[5].utt_id in both
    both.check(utts, teacher)
    ids = [utts[5].utt_id, utts[0].utt_id, utts[3].utt_id, utts[4].utt_id]  # b, a, a (2nd shard), b
    got = both.targets(ids, hidden_layers=[1])
    for row, utt_id in enumerate(ids):
        own = (a if utt_id in a else b).targets([utt_id], hidden_layers=[1])
        n = int(own.lengths[0])
        assert int(got.lengths[row]) == n
        assert torch.equal(got.topk_ids[row, :n], own.topk_ids[0])
        assert torch.equal(got.topk_logp[row, :n], own.topk_logp[0])
        assert torch.equal(got.hidden[1][row, :n], own.hidden[1][0])
        assert both.nbest(utt_id) == (a if utt_id in a else b).nbest(utt_id)
    # a stale entry is named with the cache that holds it
    moved = [replace(u, duration=u.duration + 0.5) if i == 5 else u for i, u in enumerate(utts)]
    with pytest.raises(StaleCacheError, match=f"(?s){tmp_path / 'b'}: .*duration 2"):
        both.check(moved)
    # one folder in a list is that cache
    assert type(open_cache([str(tmp_path / "a")])) is PosteriorCache


def test_a_cache_set_refuses_caches_of_other_teachers_or_shared_utterances(corpus, teacher_ckpt, tmp_path):
    utts = read_manifest(corpus)
    write_manifest(tmp_path / "a.jsonl", utts[:3])
    write_manifest(tmp_path / "b.jsonl", utts[2:])
    build_cache(CheckpointTeacher(teacher_ckpt), [tmp_path / "a.jsonl"], tmp_path / "a", top_k=4,
                shard_size=SHARD, progress=False)
    build_cache(CheckpointTeacher(teacher_ckpt), [tmp_path / "b.jsonl"], tmp_path / "b", top_k=4,
                shard_size=SHARD, progress=False)
    with pytest.raises(CacheError, match="is in both"):
        CacheSet([tmp_path / "a", tmp_path / "b"])
    build_cache(CheckpointTeacher(teacher_ckpt), [tmp_path / "b.jsonl"], tmp_path / "k2", top_k=2,
                shard_size=SHARD, progress=False)
    with pytest.raises(CacheError, match="other settings.*top_k: 4 → 2"):
        CacheSet([tmp_path / "a", tmp_path / "k2"])
    with pytest.raises(CacheError, match="empty list"):
        CacheSet([])
