"""Teacher adapters: asrkd checkpoints, Hugging Face *ForCTC folders, callables, text-only systems."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from asrkd.checkpoint import save_checkpoint
from asrkd.contract import SAMPLE_RATE
from asrkd.features import FrontendConfig
from asrkd.losses import VocabularyMap
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.teacher import (
    CallableTeacher,
    CheckpointTeacher,
    HFCTCTeacher,
    PseudoLabelTeacher,
    is_char_vocabulary,
    load_teacher,
)
from asrkd.text import BLANK, WORD_SEP, CharTokenizer


def random_wavs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wavs[i, :n] = 0.1 * torch.randn(n, generator=g)
    return wavs, torch.tensor(lengths)


@pytest.fixture
def checkpoint(tmp_path):
    tok = CharTokenizer.default_english()
    torch.manual_seed(0)
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size))
    return save_checkpoint(tmp_path / "teacher", model, FrontendConfig(), tok), model


def test_checkpoint_teacher_runs_its_own_front_end_and_model(checkpoint):
    path, model = checkpoint
    teacher = load_teacher(path)
    assert isinstance(teacher, CheckpointTeacher)
    assert teacher.frame_shift == pytest.approx(0.04)  # 10 ms hop x 4 subsampling
    assert teacher.vocabulary == CharTokenizer.default_english().tokens and teacher.blank_id == 0
    wavs, lens = random_wavs([16000, 8000])
    out = teacher(wavs, lens, return_hidden=True)
    assert out.log_probs.shape == (2, 26, 29) and out.lengths.tolist() == [26, 13]
    assert torch.allclose(out.log_probs.exp().sum(-1), torch.ones(2, 26), atol=1e-5)
    assert len(out.hidden) == 3 and out.hidden[0].shape == (2, 26, 64) and teacher.hidden_size() == 64
    assert teacher.decode([7, 1, 8]) == "e f"  # ids of "e", "▁", "f"


def test_checkpoint_teacher_takes_rate_and_frame_shift_from_its_checkpoint(tmp_path):
    # An 8 kHz teacher with a 10 ms hop and x8 subsampling: 80-sample hop, 80 ms output frames.
    tok = CharTokenizer.default_english()
    frontend = FrontendConfig(sample_rate=8000, n_fft=200, win_length=200, hop_length=80, n_mels=40)
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size, n_mels=40, subsampling=8))
    teacher = CheckpointTeacher(save_checkpoint(tmp_path / "t8k", model, frontend, tok))
    assert teacher.sample_rate == 8000
    assert teacher.frame_shift == 0.08
    wavs, lens = random_wavs([8000])  # one second at 8 kHz: 101 feature frames -> 13 output frames
    assert teacher(wavs, lens).lengths.tolist() == [13]


def test_fingerprint_follows_the_weights(checkpoint, tmp_path):
    path, model = checkpoint
    a = CheckpointTeacher(path)
    assert CheckpointTeacher(path).fingerprint() == a.fingerprint()
    with torch.no_grad():
        model.ctc_head.bias[3] += 1e-3
    changed = save_checkpoint(tmp_path / "changed", model, FrontendConfig(), CharTokenizer.default_english())
    b = CheckpointTeacher(changed)
    assert b.fingerprint() != a.fingerprint()
    assert b.describe()["weights"] != a.describe()["weights"]
    assert b.describe()["frontend"] == a.describe()["frontend"]


def tiny_wav2vec2(folder, return_attention_mask: bool):
    """A randomly initialised Wav2Vec2ForCTC with an upper-case character vocabulary (as the
    English wav2vec2 checkpoints have), its feature extractor and tokenizer, saved to ``folder``."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    folder.mkdir()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate("EOTANIHSR'")}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=return_attention_mask)
    norm = dict(feat_extract_norm="layer", do_stable_layer_norm=True) if return_attention_mask else {}
    config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, pad_token_id=0, **norm)
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config).eval()
    model.save_pretrained(folder)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return model, extractor


def test_hf_ctc_teacher_loads_offline_and_gives_20ms_log_posteriors(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, extractor = tiny_wav2vec2(tmp_path / "w2v", return_attention_mask=False)
    teacher = load_teacher(tmp_path / "w2v")
    assert isinstance(teacher, HFCTCTeacher)
    assert teacher.frame_shift == pytest.approx(0.02)  # conv strides 5*2^6 = 320 samples
    # "<pad>" is the blank, "|" the word separator, letters lower case, "<s>" stays unmapped
    assert teacher.vocabulary[:6] == [BLANK, "<s>", "</s>", "<unk>", WORD_SEP, "e"]
    assert is_char_vocabulary(teacher.vocabulary)
    wavs, lens = random_wavs([16000, 12000, 4000])
    out = teacher(wavs, lens, return_hidden=True)
    assert out.lengths.tolist() == [49, 37, 12]  # ~ one frame per 20 ms
    assert out.log_probs.shape == (3, 49, 15) and len(out.hidden) == 2
    assert torch.allclose(out.log_probs[0].exp().sum(-1), torch.ones(49), atol=1e-5)
    # each utterance as the feature extractor + model give it alone (no mask: one at a time)
    for b, n in enumerate(lens.tolist()):
        x = extractor(wavs[b, :n].numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
        with torch.no_grad():
            ref = torch.log_softmax(model(x).logits, -1)[0]
        assert torch.allclose(out.log_probs[b, :n // 320], ref[: n // 320], atol=1e-4)
    # its vocabulary maps onto an asrkd character student symbol by symbol
    student = CharTokenizer.default_english()
    vmap = VocabularyMap.build(teacher.vocabulary, student.tokens)
    assert vmap.ids[teacher.vocabulary.index("e")] == student.tokens.index("e")
    assert vmap.unmapped_teacher == ["<s>", "</s>", "<unk>"]
    assert teacher.decode([7, 6, 4, 5]) == "to e"


def test_hf_ctc_teacher_with_attention_mask_batches_padded_utterances(tmp_path):
    pytest.importorskip("transformers")
    tiny_wav2vec2(tmp_path / "w2v", return_attention_mask=True)
    teacher = HFCTCTeacher(tmp_path / "w2v")
    assert teacher.batched
    wavs, lens = random_wavs([16000, 9000])
    batch = teacher(wavs, lens)
    alone = teacher(wavs[1:, :9000], lens[1:])
    n = int(alone.lengths[0])
    assert batch.lengths.tolist() == [49, n]
    assert torch.allclose(batch.log_probs[1, :n], alone.log_probs[0, :n], atol=1e-4)


def test_hf_ctc_teacher_never_downloads(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        HFCTCTeacher(tmp_path / "facebook" / "wav2vec2-base-960h")


def test_callable_teacher_needs_a_fingerprint_unless_it_is_a_module(checkpoint):
    path, model = checkpoint
    loaded = CheckpointTeacher(path)

    def fn(wavs, wav_lens):
        out = loaded(wavs, wav_lens)
        return out.log_probs, out.lengths

    with pytest.raises(ValueError, match="fingerprint"):
        CallableTeacher(fn, loaded.vocabulary, frame_shift=0.04)
    teacher = CallableTeacher(fn, loaded.vocabulary, frame_shift=0.04, fingerprint="my-teacher-v1")
    wavs, lens = random_wavs([8000])
    assert torch.equal(teacher(wavs, lens).log_probs, loaded(wavs, lens).log_probs)
    assert CallableTeacher(model, loaded.vocabulary, 0.04).describe()["weights"] == loaded.describe()["weights"]
    assert teacher.sample_rate == SAMPLE_RATE
    assert CallableTeacher(fn, loaded.vocabulary, 0.04, fingerprint="v1", sample_rate=8000).sample_rate == 8000


def test_pseudo_label_teacher_transcribes_but_has_no_posteriors():
    seen = []

    def transcribe(audio: np.ndarray):
        seen.append(len(audio))
        return ("one two", 0.8) if len(audio) > 5000 else "three"

    teacher = PseudoLabelTeacher(transcribe, fingerprint="system-x-2025")
    wavs, lens = random_wavs([8000, 4000])
    assert teacher.transcribe_batch(wavs, lens) == [("one two", 0.8), ("three", None)]
    assert seen == [8000, 4000]  # each utterance without its padding
    with pytest.raises(TypeError, match="no posteriors"):
        teacher(wavs, lens)
