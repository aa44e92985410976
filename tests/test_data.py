"""Manifests, dataset, bucketing sampler, collation and augmentation, as a training loop uses them."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings

import numpy as np
import pytest
import torch

from asrkd.audio import write_wav
from asrkd.contract import SAMPLE_RATE
from asrkd.data import (
    AddNoise,
    AudioDataset,
    BandLimit,
    BreathNoise,
    BucketingBatchSampler,
    Compose,
    Gain,
    ManifestError,
    SpecAugment,
    SpeedPerturb,
    Utterance,
    check_manifest,
    collate,
    read_manifest,
    write_manifest,
)
from asrkd.data.check import check_utterances
from asrkd.text import CharTokenizer

# -- manifests ------------------------------------------------------------------------------------


def test_read_manifest_resolves_paths_ids_and_extra_fields(clean_manifest):
    utts = read_manifest(clean_manifest)
    folder = clean_manifest.parent
    assert [u.audio_filepath for u in utts] == [
        str(folder / "audio" / n) for n in ("a.wav", "b.wav", "c.wav")
    ]
    assert [u.utt_id for u in utts] == ["a-1", "b-2", "7"]  # without an id: stem-line
    assert utts[0].text == "Hello, world!" and utts[0].speaker == "s1" and utts[0].duration == 1.0
    assert utts[2].speaker is None and utts[2].offset == 0.0 and utts[2].extra == {}


def test_unlabelled_manifest(tmp_path):
    write_wav(tmp_path / "a.wav", np.zeros(SAMPLE_RATE, np.float32))
    path = _manifest(tmp_path, [{"audio_filepath": "a.wav", "duration": 1.0, "source": "web"}])
    [utt] = read_manifest(path)
    assert utt.text is None and utt.extra == {"source": "web"}
    assert check_manifest(path, CharTokenizer.default_english()) == []
    item = AudioDataset([utt], tokenizer=CharTokenizer.default_english())[0]
    assert item["tokens"] is None and item["wav"].shape == (SAMPLE_RATE,)


def test_read_manifest_error_names_file_line_and_fix(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"audio_filepath": "a.wav", "text": "x", "duration": 1}\n\n{"audio_filepath": "b.wav", "text": "y"}\n',
        encoding="utf-8",
    )
    with pytest.raises(ManifestError) as exc:
        read_manifest(path)
    assert str(exc.value).startswith(f"{path}:3: missing 'duration'")
    assert "asrkd manifest check" in str(exc.value)


def test_write_manifest_round_trip_keeps_paths_relative(tmp_path):
    inside = Utterance(
        str(tmp_path / "audio" / "x.wav"),
        "hi there",
        1.25,
        speaker="s",
        utt_id="u1",
        extra={"lang": "en"},
    )
    outside = Utterance("/elsewhere/y.wav", None, 2.0, offset=0.5, utt_id="u2")
    path = tmp_path / "out.jsonl"
    write_manifest(path, [inside, outside])
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["audio_filepath"] == "audio/x.wav" and rows[0]["lang"] == "en"
    assert rows[1]["audio_filepath"] == "/elsewhere/y.wav" and "text" not in rows[1]
    assert read_manifest(path) == [inside, outside]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left


class _HeldAudio:
    """Audio a data source holds (as a dataset holds bytes): `Utterance.audio`'s protocol."""

    def __init__(self, wav: np.ndarray):
        self.wav = wav

    def load(self, sample_rate, offset=0.0, duration=None):
        start = round(offset * sample_rate)
        return self.wav[start: None if duration is None else start + round(duration * sample_rate)]

    def length(self):
        return len(self.wav) / SAMPLE_RATE


def test_audio_held_by_a_source_is_read_from_it_and_never_written_as_a_path(tmp_path):
    wav = np.linspace(-0.5, 0.5, SAMPLE_RATE, dtype=np.float32)
    utt = Utterance(str(tmp_path / "ds#0"), "hi", 0.5, offset=0.25, audio=_HeldAudio(wav))
    item = AudioDataset([utt], tokenizer=CharTokenizer.default_english())[0]
    assert torch.equal(item["wav"], torch.from_numpy(wav[4000:12000]))
    assert utt == Utterance(str(tmp_path / "ds#0"), "hi", 0.5, offset=0.25)  # the reader is not data
    with pytest.raises(ManifestError, match="'ds-0' has no audio file of its own"):
        write_manifest(tmp_path / "out.jsonl", [dataclasses.replace(utt, utt_id="ds-0")])
    held = [(1, "row 0", dataclasses.replace(utt, duration=1.0, offset=0.0)), (2, "row 1", utt)]
    problems = check_utterances(held, [], CharTokenizer.default_english())
    assert [(p.line, p.kind) for p in problems] == [(2, "duplicate_id")]  # lengths from the reader
    assert problems[0].message.startswith("row 1: utt_id ")


def test_check_manifest_finds_every_planted_fault(faulty_manifest):
    path, expected = faulty_manifest
    problems = check_manifest(path, tokenizer=CharTokenizer.default_english())
    assert [(p.line, p.kind) for p in problems] == expected
    by_kind = {p.kind: p.message for p in problems}
    assert "+0.500 s" in by_kind["duration_mismatch"]
    for char in ("U+00EF", "U+00E9", "U+0034", "U+0032"):  # ï é 4 2, every one listed
        assert char in by_kind["oov"]
    # without a tokenizer the vocabulary is not checked; everything else still is
    assert [p.kind for p in check_manifest(path)] == [k for _, k in expected if k != "oov"]


def test_check_manifest_clean(clean_manifest):
    assert check_manifest(clean_manifest, tokenizer=CharTokenizer.default_english()) == []


def _manifest(tmp_path, rows):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_check_manifest_more_kinds(tmp_path):
    write_wav(tmp_path / "long.wav", np.zeros(3 * SAMPLE_RATE, np.float32))
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wav file")
    path = _manifest(
        tmp_path,
        [
            # one file cut into segments: each must lie inside it, no length match needed
            {"audio_filepath": "long.wav", "text": "a", "duration": 1.0, "offset": 0.0, "id": "x"},
            {"audio_filepath": "long.wav", "text": "b", "duration": 1.5, "offset": 2.0, "id": "y"},
            {"audio_filepath": "bad.wav", "text": "c", "duration": 1.0, "id": "x"},
            {"text": "d", "duration": 1.0},
            {"audio_filepath": "long.wav", "text": "e", "duration": -1},
            {"audio_filepath": "long.wav", "text": "f", "duration": 1.0, "offset": 0.0, "id": "z"},
            [1, 2],
            {"audio_filepath": "long.wav", "duration": 0.5, "offset": 1.0, "id": "w"},
        ],
    )
    got = [(p.line, p.kind) for p in check_manifest(path)]
    assert got == [
        (2, "segment_past_end"),
        (3, "unreadable_audio"),
        (3, "duplicate_id"),
        (4, "missing_field"),
        (5, "bad_field"),
        (6, "duplicate_entry"),
        (7, "malformed_json"),
        (8, "missing_field"),  # no text in a labelled manifest
    ]


def test_check_manifest_ctc_feasibility(tmp_path):
    write_wav(tmp_path / "a.wav", np.zeros(SAMPLE_RATE // 2, np.float32))
    path = _manifest(tmp_path, [{"audio_filepath": "a.wav", "text": "eleven", "duration": 0.5}])
    tok = CharTokenizer.default_english()
    # "eleven" needs 6 frames; 0.5 s gives 12 at 25 frames/s but only 3 at 6.25 frames/s
    assert check_manifest(path, tok, ctc_frame_rate=25.0) == []
    assert [p.kind for p in check_manifest(path, tok, ctc_frame_rate=6.25)] == ["ctc_infeasible"]


def test_missing_and_empty_manifest(tmp_path):
    assert [p.kind for p in check_manifest(tmp_path / "nope.jsonl")] == ["unreadable_manifest"]
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    assert [p.kind for p in check_manifest(tmp_path / "empty.jsonl")] == ["empty_manifest"]


@pytest.mark.parametrize("name, count", [("fsdd_isolated", 2000), ("fsdd_connected", 400)])
def test_fsdd_manifests_check_clean(fsdd_dir, name, count):
    path = fsdd_dir / "manifests" / f"{name}.jsonl"
    t0 = time.perf_counter()
    problems = check_manifest(path, tokenizer=CharTokenizer.default_english())
    elapsed = time.perf_counter() - t0
    assert problems == []
    assert len(read_manifest(path)) == count
    assert elapsed < 10.0, f"header-only checks should be fast, took {elapsed:.1f} s"


# -- dataset and collation --------------------------------------------------------------------------


def test_dataset_items_and_collate(clean_manifest):
    utts = read_manifest(clean_manifest)
    tok = CharTokenizer.default_english()
    labelled = AudioDataset(utts[:2], tokenizer=tok)
    item = labelled[1]
    assert item["wav"].dtype == torch.float32 and item["wav"].shape == (int(1.5 * SAMPLE_RATE),)
    assert tok.decode(item["tokens"].tolist()) == "it's fine"
    assert (item["text"], item["utt_id"], item["speaker"], item["index"]) == (
        "it's fine",
        "b-2",
        "s2",
        1,
    )

    batch = collate([labelled[0], labelled[1]])
    assert batch["wavs"].shape == (2, int(1.5 * SAMPLE_RATE))
    assert batch["wav_lens"].tolist() == [SAMPLE_RATE, int(1.5 * SAMPLE_RATE)]
    assert batch["wavs"][0, SAMPLE_RATE:].abs().sum() == 0  # zero padding
    assert batch["targets"].shape == (2, len("hello world"))
    assert batch["target_lens"].tolist() == [len("hello world"), len("it's fine")]
    assert (batch["targets"][1, len("it's fine") :] == -1).all()
    assert batch["utt_ids"] == ["a-1", "b-2"] and batch["indices"] == [0, 1]

    unlabelled = AudioDataset([dataclasses.replace(utts[2], text=None)], tokenizer=tok)[0]
    assert collate([unlabelled])["targets"] is None and collate([unlabelled])["target_lens"] is None
    with pytest.raises(ValueError, match="mixes labelled and unlabelled"):
        collate([labelled[0], unlabelled])


def test_dataset_refuses_out_of_vocabulary_text_up_front(clean_manifest):
    utts = read_manifest(clean_manifest)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        AudioDataset(utts, tokenizer=CharTokenizer.from_texts(["hello"]))


def test_dataset_augmentation_is_reproducible_per_seed_epoch_and_index(clean_manifest):
    utts = read_manifest(clean_manifest)
    aug = Compose([SpeedPerturb(), AddNoise(snr_db=(5, 20)), BandLimit(prob=0.5)])
    ds = AudioDataset(utts, transform=aug, seed=7)
    first = [ds[i]["wav"] for i in range(3)]
    again = [AudioDataset(utts, transform=aug, seed=7)[i]["wav"] for i in (2, 1, 0)][
        ::-1
    ]  # any order
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["wav"], first[0])
    assert not torch.equal(AudioDataset(utts, transform=aug, seed=8)[0]["wav"], first[0])


def test_dataloader_end_to_end(clean_manifest):
    utts = read_manifest(clean_manifest)[:2]
    ds = AudioDataset(utts, tokenizer=CharTokenizer.default_english())
    sampler = BucketingBatchSampler([u.duration for u in utts], max_batch_seconds=10.0)
    batches = list(torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate))
    assert len(batches) == 1 and sorted(batches[0]["indices"]) == [0, 1]


# -- bucketing sampler ------------------------------------------------------------------------------

DURATIONS = np.random.default_rng(0).uniform(0.5, 12.0, size=400).round(2).tolist()


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_is_deterministic_and_seeded():
    a, b, c = (BucketingBatchSampler(DURATIONS, 60.0, seed=s) for s in (0, 0, 1))
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 0) != _epoch(c, 0)
    assert _epoch(a, 0) != _epoch(a, 1)


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_covers_every_index_once_within_budget(shuffle):
    sampler = BucketingBatchSampler(DURATIONS, 60.0, shuffle=shuffle)
    batches = _epoch(sampler, 3)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(DURATIONS)))
    for b in batches:
        assert max(DURATIONS[i] for i in b) * len(b) <= 60.0
    mean_fill = np.mean([max(DURATIONS[i] for i in b) * len(b) for b in batches]) / 60.0
    assert mean_fill > 0.8  # buckets keep padding low: batches are nearly full
    if not shuffle:  # evaluation order: ascending length
        longest = [max(DURATIONS[i] for i in b) for b in batches]
        assert longest == sorted(longest)


def test_sampler_gives_overlong_utterances_their_own_batch():
    with pytest.warns(UserWarning, match="1 utterance\\(s\\) are longer than max_batch_seconds"):
        sampler = BucketingBatchSampler([1.0, 2.0, 30.0, 1.5], 10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, at construction; not per epoch
        batches = _epoch(sampler, 0) + _epoch(sampler, 1)
    assert [2] in batches
    assert sorted(i for b in batches for i in b) == sorted(list(range(4)) * 2)


def test_sampler_resumes_mid_epoch():
    uninterrupted = _epoch(BucketingBatchSampler(DURATIONS, 60.0, seed=3), 5)
    first = BucketingBatchSampler(DURATIONS, 60.0, seed=3)
    first.set_epoch(5)
    it = iter(first)
    seen = [next(it) for _ in range(7)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint

    resumed = BucketingBatchSampler(DURATIONS, 60.0, seed=3)
    resumed.load_state_dict(state)
    assert seen + list(resumed) == uninterrupted
    assert list(resumed) == uninterrupted  # the resume position applies to one pass only

    other = BucketingBatchSampler(DURATIONS[:-1], 60.0, seed=3)
    with pytest.raises(ValueError, match="durations_sha256"):
        other.load_state_dict(state)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_across_ranks(drop_last):
    world = 3
    total = len(_epoch(BucketingBatchSampler(DURATIONS, 60.0), 2))
    assert total % world != 0  # so that padding / dropping is exercised
    shards = []
    for rank in range(world):
        s = BucketingBatchSampler(DURATIONS, 60.0, rank=rank, world_size=world, drop_last=drop_last)
        shards.append(_epoch(s, 2))
        assert len(s) == len(shards[-1])
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    per_rank = [{i for b in s for i in b} for s in shards]
    covered = set().union(*per_rank)
    if drop_last:
        assert sum(len(x) for x in per_rank) == len(covered)  # disjoint
        assert len(shards[0]) == total // world
    else:
        assert covered == set(range(len(DURATIONS)))  # nothing lost; a few batches repeat
        assert len(shards[0]) == -(-total // world)


# -- augmentation -----------------------------------------------------------------------------------


def _speechlike(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (env * (0.3 * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.standard_normal(len(t)))).astype(
        np.float32
    )


def _power_above(wav, hz):
    spec = np.abs(np.fft.rfft(wav.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1 / SAMPLE_RATE)
    return spec[freqs > hz].sum()


@pytest.mark.parametrize(
    "transform",
    [
        SpeedPerturb(),
        AddNoise(),
        BandLimit(prob=1.0),
        Gain(prob=1.0),
        BreathNoise(prob=1.0),
        Compose([SpeedPerturb(), BreathNoise(), AddNoise(), BandLimit(), Gain()]),
    ],
    ids=["speed", "noise", "bandlimit", "gain", "breath", "compose"],
)
def test_augmentation_is_reproducible_for_a_seed(transform):
    wav = _speechlike()
    outs = [transform(wav, np.random.default_rng(s)) for s in (1, 1)]
    assert np.array_equal(outs[0], outs[1]) and outs[0].dtype == np.float32
    varied = {transform(wav, np.random.default_rng(s)).tobytes() for s in range(8)}
    assert len(varied) > 1


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_changes_length_by_the_factor(factor):
    wav = _speechlike(2.0)
    out = SpeedPerturb(factors=(factor,))(wav, np.random.default_rng(0))
    assert abs(len(out) - len(wav) / factor) <= 1


def test_gain_scales_within_its_range_and_clips():
    wav = _speechlike(1.0)
    for seed in range(8):
        out = Gain(gain_db=(-20.0, -10.0), prob=1.0)(wav, np.random.default_rng(seed))
        ratio = out.astype(np.float64) / np.where(wav == 0, 1, wav)
        gain_db = 20 * np.log10(np.median(ratio[wav != 0]))
        assert -20.0 - 1e-3 <= gain_db <= -10.0 + 1e-3 and np.allclose(ratio[wav != 0], ratio[wav != 0][0], rtol=1e-4)
    loud = Gain(gain_db=(20.0, 20.0), prob=1.0)(wav, np.random.default_rng(0))
    assert loud.max() == 1.0 and loud.min() == -1.0 and loud.dtype == np.float32
    assert Gain(prob=0.0)(wav, np.random.default_rng(0)) is wav


def test_breath_noise_follows_the_speech_envelope_in_its_band():
    # 0.4 s of speech-like sound between two 0.3 s silences
    speech = _speechlike(0.4)
    silence = np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)
    wav = np.concatenate([silence, speech, silence])
    out = BreathNoise(level_db=(-12.0, -12.0), band_hz=(1000.0, 4000.0), prob=1.0)(
        wav, np.random.default_rng(0)
    )
    assert out.shape == wav.shape and out.dtype == np.float32
    added = out.astype(np.float64) - wav
    # Silence stays silent (20 ms from the edges, the envelope's window)...
    edge = int(0.02 * SAMPLE_RATE)
    assert np.abs(added[: len(silence) - edge]).max() == 0.0
    assert np.abs(added[-len(silence) + edge :]).max() == 0.0
    # ...speech gets noise at the drawn level relative to its own power...
    inner = slice(len(silence) + edge, len(silence) + len(speech) - edge)
    level = 10 * np.log10(np.mean(added[inner] ** 2) / np.mean(wav[inner].astype(np.float64) ** 2))
    assert abs(level - -12.0) < 1.5
    # ...and the noise lies in the band (the envelope's modulation leaks a little).
    spec = np.abs(np.fft.rfft(added)) ** 2
    freqs = np.fft.rfftfreq(len(added), 1 / SAMPLE_RATE)
    assert spec[(freqs < 900) | (freqs > 4100)].sum() < 0.01 * spec.sum()
    assert BreathNoise(prob=0.0)(wav, np.random.default_rng(0)) is wav


def _snr_db(clean, noisy):
    noise = noisy.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


def test_add_noise_hits_the_target_snr(tmp_path):
    wav = _speechlike(1.0)
    for seed in range(4):  # generated white or pink noise
        assert (
            abs(_snr_db(wav, AddNoise(snr_db=(12, 12))(wav, np.random.default_rng(seed))) - 12)
            < 0.5
        )
    # noise files: one longer than the speech (random crop), one shorter (looped)
    write_wav(
        tmp_path / "long.wav",
        0.1 * np.random.default_rng(1).standard_normal(3 * SAMPLE_RATE).astype(np.float32),
    )
    write_wav(
        tmp_path / "short.wav",
        0.1 * np.random.default_rng(2).standard_normal(SAMPLE_RATE // 4).astype(np.float32),
    )
    for name in ("long.wav", "short.wav"):
        aug = AddNoise(snr_db=(5, 5), noise=[tmp_path / name])
        out = aug(wav, np.random.default_rng(0))
        assert out.shape == wav.shape and abs(_snr_db(wav, out) - 5) < 0.5
    crops = {
        AddNoise(snr_db=(5, 5), noise=[tmp_path / "long.wav"])(
            wav, np.random.default_rng(s)
        ).tobytes()
        for s in range(3)
    }
    assert len(crops) == 3


def test_band_limit_removes_energy_above_the_cutoff():
    wav = (0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32)
    out = BandLimit(prob=1.0, cutoff_hz=(3400, 4000))(wav, np.random.default_rng(0))
    assert out.shape == wav.shape
    assert _power_above(out, 4000) < 1e-4 * _power_above(wav, 4000)
    in_band = _power_above(wav, 300) - _power_above(wav, 3000)
    kept = _power_above(out, 300) - _power_above(out, 3000)
    assert 0.95 < kept / in_band < 1.05
    assert BandLimit(prob=0.0)(wav, np.random.default_rng(0)) is wav


def test_spec_augment_masks_only_valid_frames_and_only_in_training():
    feats = torch.randn(3, 200, 80) + 5.0  # no feature is 0 before masking
    lengths = torch.tensor([200, 120, 40])
    feats[1, 120:] = -7.0  # padding; a value masking (to 0) would visibly change
    feats[2, 40:] = -7.0
    aug = SpecAugment(freq_masks=2, freq_width=27, time_masks=10, time_width=0.05)
    out = aug(feats, lengths, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, aug(feats, lengths, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(out, aug(feats, lengths, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(out[1, 120:], feats[1, 120:]) and torch.equal(out[2, 40:], feats[2, 40:])
    assert all((out[b, :n] == 0).any() for b, n in enumerate(lengths.tolist()))
    aug.eval()
    assert aug(feats, lengths) is feats


def test_spec_augment_mask_sizes():
    feats = torch.randn(4, 300, 80) + 5.0
    lengths = torch.tensor([300, 200, 100, 60])
    g = torch.Generator().manual_seed(0)
    time_only = SpecAugment(freq_masks=0, time_masks=10, time_width=0.05)(
        feats, lengths, generator=g
    )
    for b, n in enumerate(lengths.tolist()):
        masked = time_only[b, :n] == 0
        rows = masked.all(dim=1)
        assert torch.equal(masked.any(dim=1), rows)  # whole frames only
        assert int(rows.sum()) <= 10 * int(0.05 * n)  # each span <= 5 % of this utterance
    freq_only = SpecAugment(freq_masks=2, freq_width=27, time_masks=0)(feats, lengths, generator=g)
    for b, n in enumerate(lengths.tolist()):
        masked = freq_only[b, :n] == 0
        cols = masked.all(dim=0)
        assert torch.equal(masked.any(dim=0), cols)  # whole bands only
        assert int(cols.sum()) <= 2 * 27
