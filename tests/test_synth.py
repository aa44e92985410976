"""Synthetic corpora from espeak-ng: what the demo and a user's first run rely on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkd.contract import SAMPLE_RATE
from asrkd.data import check_manifest, read_manifest
from asrkd.synth import (
    DIGIT_WORDS,
    VARIANT_FAMILIES,
    Espeak,
    SynthError,
    Voice,
    plan_utterance,
    synthesize_corpus,
    voice_partition,
    voices,
    word_list,
)
from asrkd.text import CharTokenizer


def _files(corpus: Path) -> dict[str, bytes]:
    """Every output file of a corpus, by relative path (synth.json included)."""
    return {
        str(p.relative_to(corpus)): p.read_bytes() for p in sorted(corpus.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def words_corpus(tmp_path_factory) -> Path:
    """8 ``words`` utterances, seed 5, written by two worker processes."""
    out = tmp_path_factory.mktemp("words") / "corpus"
    synthesize_corpus("words", 8, out, seed=5, workers=2, progress=False)
    return out


def test_same_seed_gives_identical_bytes_whatever_the_number_of_workers(words_corpus, tmp_path):
    synthesize_corpus("words", 8, tmp_path / "one", seed=5, workers=1, progress=False)
    one, two = _files(tmp_path / "one"), _files(words_corpus)
    assert len(one) == 8 + 2  # wavs, manifest.jsonl, synth.json
    assert one.keys() == two.keys()
    assert all(one[name] == two[name] for name in one)


def test_another_seed_gives_other_texts_and_audio(words_corpus, tmp_path):
    synthesize_corpus("words", 8, tmp_path / "other", seed=6, workers=2, progress=False)
    a = read_manifest(words_corpus / "manifest.jsonl")
    b = read_manifest(tmp_path / "other" / "manifest.jsonl")
    assert [u.text for u in a] != [u.text for u in b]
    audio_a = {Path(u.audio_filepath).read_bytes() for u in a}
    audio_b = {Path(u.audio_filepath).read_bytes() for u in b}
    assert not audio_a & audio_b


def test_texts_follow_the_task_grammar(words_corpus):
    vocab = set(word_list())
    for u in read_manifest(words_corpus / "manifest.jsonl"):
        assert 3 <= len(u.text.split()) <= 10 and set(u.text.split()) <= vocab
    # The plan alone (no audio) shows the whole range of lengths and every digit.
    digit_texts = [plan_utterance("digits", 0, i).text.split() for i in range(500)]
    assert {len(t) for t in digit_texts} == set(range(1, 8))
    assert {w for t in digit_texts for w in t} == set(DIGIT_WORDS)
    word_counts = {len(plan_utterance("words", 0, i).text.split()) for i in range(500)}
    assert word_counts == set(range(3, 11))


def test_word_list_is_plain_lowercase_english_the_default_tokenizer_covers():
    words = word_list()
    assert 1000 <= len(words) <= 2000 and len(set(words)) == len(words)
    tok = CharTokenizer.default_english()
    assert tok.unknown_characters(" ".join(words)) == []


def test_manifest_is_complete_and_audio_matches_it(words_corpus):
    manifest = words_corpus / "manifest.jsonl"
    assert check_manifest(manifest, tokenizer=CharTokenizer.default_english()) == []
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for i, (line, u) in enumerate(zip(lines, read_manifest(manifest), strict=True)):
        spec = plan_utterance("words", 5, i)
        assert not Path(line["audio_filepath"]).is_absolute()
        assert (u.utt_id, u.text, u.speaker) == (spec.utt_id, spec.text, spec.voice.id)
        assert u.extra == {
            "voice": spec.voice.accent,
            "variant": spec.voice.variant,
            "rate": spec.rate,
            "pitch": spec.pitch,
            "seed": 5,
        }
        wav, sr = sf.read(u.audio_filepath, dtype="int16")
        assert sr == SAMPLE_RATE and sf.info(u.audio_filepath).subtype == "PCM_16"
        assert u.duration == len(wav) / SAMPLE_RATE
        # Exactly the planned silence around the speech, and speech that is not faint.
        voiced = np.flatnonzero(wav)
        assert voiced[0] >= spec.lead_samples and voiced[-1] < len(wav) - spec.trail_samples
        speech = wav[spec.lead_samples : len(wav) - spec.trail_samples].astype(np.float64)
        assert np.sqrt(np.mean(speech**2)) > 0.01 * 32768


def test_longer_texts_give_longer_speech(words_corpus):
    """Speech time (without the added silences) follows the amount of text, rate aside."""
    text_units, seconds = [], []
    for i, u in enumerate(read_manifest(words_corpus / "manifest.jsonl")):
        spec = plan_utterance("words", 5, i)
        speech = u.duration - (spec.lead_samples + spec.trail_samples) / SAMPLE_RATE
        text_units.append(len(u.text.replace(" ", "")))
        seconds.append(speech * spec.rate)  # words/minute x seconds: removes the drawn rate
    assert np.corrcoef(text_units, seconds)[0, 1] > 0.8


def test_voice_sets_are_disjoint_and_cover_all_voices():
    parts = voice_partition()
    train, dev, test = (set(parts[k]) for k in ("train", "dev", "test"))
    assert not (train & dev or train & test or dev & test)
    assert train | dev | test == set(voices("all"))
    # No family of near-identical variants straddles two splits.
    family_of = {v: f for f, (_, variants) in VARIANT_FAMILIES.items() for v in variants}
    families = {k: {family_of[v.variant] for v in parts[k]} for k in parts}
    assert not (families["train"] & families["dev"] or families["train"] & families["test"])
    assert not families["dev"] & families["test"]
    n = len(voices("all"))
    assert 0.07 * n <= len(dev) <= 0.13 * n and 0.07 * n <= len(test) <= 0.13 * n


def test_a_held_out_corpus_speaks_only_with_its_voices(tmp_path):
    out = synthesize_corpus("digits", 6, tmp_path, seed=1, voice_set="test", progress=False)
    test_ids = {v.id for v in voices("test")}
    utts = read_manifest(out)
    assert {u.speaker for u in utts} <= test_ids
    assert all(u.utt_id.startswith("digits-test-s1-") for u in utts)
    assert all(
        1 <= len(u.text.split()) <= 7 and set(u.text.split()) <= set(DIGIT_WORDS) for u in utts
    )


def test_espeak_output_does_not_depend_on_what_was_synthesised_before():
    """espeak-ng keeps state between utterances; `Espeak` reloads it so that it cannot leak."""
    engine = Espeak()
    try:
        a = engine.synthesize("she sells sea shells", Voice("gmw/en-US", "klatt"), 170, 50, 7)
        engine.synthesize("the quick brown fox", Voice("gmw/en", "whisper"), 140, 30, 8)
        again = engine.synthesize("she sells sea shells", Voice("gmw/en-US", "klatt"), 170, 50, 7)
    finally:
        engine.close()
    assert a.dtype == np.int16 and len(a) > engine.sample_rate // 2
    assert np.array_equal(a, again)


def test_rerun_reuses_files_and_regenerates_only_what_is_missing(words_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(words_corpus, corpus)
    before = _files(corpus)
    lost = corpus / "wavs" / "words-all-s5-000003.wav"
    lost.unlink()
    (corpus / "manifest.jsonl").unlink()
    kept = corpus / "wavs" / "words-all-s5-000004.wav"
    kept_mtime = kept.stat().st_mtime_ns

    synthesize_corpus("words", 8, corpus, seed=5, workers=1, progress=False)
    assert _files(corpus) == before  # the lost file is back, byte for byte
    assert kept.stat().st_mtime_ns == kept_mtime  # and the others were not rewritten

    manifest_mtime = (corpus / "manifest.jsonl").stat().st_mtime_ns
    synthesize_corpus("words", 8, corpus, seed=5, workers=1, progress=False)
    assert (corpus / "manifest.jsonl").stat().st_mtime_ns == manifest_mtime  # nothing to do

    # A different request in the same folder replaces the corpus instead of mixing the two.
    synthesize_corpus("words", 2, corpus, seed=9, workers=1, progress=False)
    assert sorted(p.name for p in (corpus / "wavs").iterdir()) == [
        "words-all-s9-000000.wav",
        "words-all-s9-000001.wav",
    ]
    assert len(read_manifest(corpus / "manifest.jsonl")) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be an integer >= 1"),
        ({"task": "letters"}, "unknown task 'letters'"),
        ({"voice_set": "eval"}, "unknown voice set 'eval'"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"workers": 0}, "workers must be"),
        ({"rate_range": (60, 200)}, "outside espeak-ng's range"),
        ({"pitch_range": (70, 20)}, "low <= high"),
        ({"silence_range": (-0.1, 0.2)}, "must not be negative"),
    ],
)
def test_bad_requests_are_refused_before_any_work(tmp_path, kwargs, message):
    args = {"task": "digits", "n": 4, "out_dir": tmp_path / "out"} | kwargs
    with pytest.raises(ValueError, match=message):
        synthesize_corpus(**args)
    assert not (tmp_path / "out").exists()


def test_a_folder_with_someone_elses_manifest_is_left_alone(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"audio_filepath": "x.wav", "duration": 1.0}\n')
    with pytest.raises(FileExistsError, match="not written by `asrkd synth`"):
        synthesize_corpus("digits", 2, tmp_path, progress=False)
    assert (tmp_path / "manifest.jsonl").read_text().startswith('{"audio_filepath": "x.wav"')


def test_a_missing_espeak_says_what_to_install(monkeypatch, tmp_path):
    import espeakng_loader

    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(tmp_path / "nothing.so"))
    with pytest.raises(SynthError, match="pip install espeakng-loader"):
        synthesize_corpus("digits", 2, tmp_path / "out", progress=False)
    with pytest.raises(SynthError, match="pip install espeakng-loader"):
        Espeak()
