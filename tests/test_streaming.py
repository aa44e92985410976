"""Streaming: the chunked Conformer (offline chunk mask = chunk-by-chunk with caches), causality,
full-context and streaming modes of one set of weights, dynamic chunk sizes, and
StreamingTranscriber's split invariance against chunked offline decoding."""

import numpy as np
import pytest
import torch

from asrkd.checkpoint import save_checkpoint
from asrkd.decoding import greedy_decode
from asrkd.features import FrontendConfig, LogMel
from asrkd.models.conformer import ConformerConfig, ConformerCTC, build_preset
from asrkd.models.streaming import FULL_CONTEXT, ChunkChoice, chunk_attention_mask, draw_chunk_size
from asrkd.streaming import (
    StreamingError,
    StreamingFrontend,
    StreamingTranscriber,
    streamable_frontend,
)
from asrkd.text import CharTokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A stream runs on one thread, as on a phone; small chunks on several threads mostly wait for
    each other (on a busy 2-core box, ~50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_stream(**overrides) -> ConformerCTC:
    shape = dict(vocab_size=12, n_mels=80, d_model=32, n_heads=2, n_layers=2, ff_mult=2, conv_kernel=7,
                 subsampling_channels=8, dropout=0.0, causal=True, chunk_size=4, left_chunks=2)
    torch.manual_seed(0)
    return ConformerCTC(ConformerConfig(**{**shape, **overrides})).eval()


def stream_chunks(model: ConformerCTC, feats: torch.Tensor, chunk_size: int, left_chunks: int) -> torch.Tensor:
    """feats [1, T, n_mels] through forward_chunk, one chunk at a time -> log-probs [1, T', V]."""
    state, outputs = model.initial_state(), []
    step = chunk_size * model.config.subsampling
    for start in range(0, feats.size(1), step):
        log_probs, state = model.forward_chunk(feats[:, start : start + step], state, chunk_size, left_chunks)
        outputs.append(log_probs)
    return torch.cat(outputs, dim=1)


def test_chunk_mask_reads_own_chunk_and_left_chunks_only():
    mask = chunk_attention_mask(7, chunk_size=2, left_chunks=1)
    assert mask[4].tolist() == [False, False, True, True, True, True, False]  # chunks 1 and 2
    assert mask[6].tolist() == [False] * 4 + [True] * 3  # chunk 3 (one frame) and chunk 2
    assert chunk_attention_mask(7, 2)[6].all()  # unlimited left context


@pytest.mark.parametrize("subsampling", [4, 8])
@pytest.mark.parametrize("chunk_size, left_chunks", [(4, 2), (3, 0), (5, FULL_CONTEXT)])
def test_chunk_by_chunk_equals_chunked_forward_over_the_utterance(subsampling, chunk_size, left_chunks):
    model = tiny_stream(subsampling=subsampling)
    for frames in (203, 3, 4 * subsampling * chunk_size):  # ragged last chunk, one frame, whole chunks
        feats = torch.randn(1, frames, 80)
        with torch.no_grad():
            offline, out_lens, _ = model(feats, torch.tensor([frames]), chunk_size=chunk_size,
                                         left_chunks=left_chunks)
            streamed = stream_chunks(model, feats, chunk_size, left_chunks)
        assert streamed.shape == offline.shape and out_lens.item() == offline.size(1)
        torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)


def test_a_chunk_does_not_depend_on_later_audio():
    model = tiny_stream()
    chunk_frames = model.config.chunk_size * model.config.subsampling  # 16 feature frames
    feats = torch.randn(1, 5 * chunk_frames, 80)
    changed = feats.clone()
    changed[:, 3 * chunk_frames :] = torch.randn(1, 2 * chunk_frames, 80)  # chunks 3 and 4
    lens = torch.tensor([feats.size(1)])
    with torch.no_grad():
        before, after = model(feats, lens)[0], model(changed, lens)[0]
        full_before = model(feats, lens, chunk_size=FULL_CONTEXT)[0]
        full_after = model(changed, lens, chunk_size=FULL_CONTEXT)[0]
    c = model.config.chunk_size
    assert torch.equal(before[:, : 3 * c], after[:, : 3 * c])  # chunks 0-2: bit for bit
    assert not torch.allclose(before[:, 3 * c :], after[:, 3 * c :])
    # Full context reads the future: the same change moves the first frames too.
    assert not torch.allclose(full_before[:, :c], full_after[:, :c])


def test_full_context_and_streaming_modes_of_one_set_of_weights():
    model = tiny_stream()
    feats, lens = torch.randn(2, 120, 80), torch.tensor([120, 77])
    with torch.no_grad():
        default = model(feats, lens)[0]  # the config's chunking
        chunked = model(feats, lens, chunk_size=4, left_chunks=2)[0]
        full = model(feats, lens, chunk_size=FULL_CONTEXT)[0]
        # One stream at full context is one chunk holding the whole utterance.
        streamed_full = stream_chunks(model, feats[:1], chunk_size=feats.size(1), left_chunks=FULL_CONTEXT)
    assert torch.equal(default, chunked)
    assert not torch.allclose(full, chunked)
    torch.testing.assert_close(streamed_full, full[:1], atol=1e-5, rtol=0)
    # Padding still hides itself under a chunk mask: the shorter row alone gives the same frames.
    with torch.no_grad():
        alone = model(feats[1:, :77], lens[1:])[0]
    torch.testing.assert_close(alone[0], chunked[1, : alone.size(1)], atol=1e-5, rtol=0)


def test_dynamic_chunk_training_draws_reproducible_chunkings_and_trains():
    draws = [draw_chunk_size(torch.Generator().manual_seed(7), max_left_chunks=3) for _ in range(2)]
    assert draws[0] == draws[1]
    generator = torch.Generator().manual_seed(0)
    many = [draw_chunk_size(generator, max_chunk_size=6, max_left_chunks=3) for _ in range(200)]
    assert ChunkChoice(FULL_CONTEXT, FULL_CONTEXT) in many
    chunked = [c for c in many if c.chunk_size != FULL_CONTEXT]
    assert {c.chunk_size for c in chunked} == set(range(1, 7))
    assert {c.left_chunks for c in chunked} == set(range(4))
    with pytest.raises(ValueError, match="max_chunk_size=0"):
        draw_chunk_size(generator, max_chunk_size=0)

    model = tiny_stream().train()
    feats, lens = torch.randn(2, 64, 80), torch.tensor([64, 50])
    for choice in many[:3]:
        log_probs, out_lens, _ = model(feats, lens, chunk_size=choice.chunk_size, left_chunks=choice.left_chunks)
        torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), torch.tensor([1, 2, 3, 1]), out_lens,
                                     torch.tensor([2, 2])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_streaming_needs_a_causal_model_and_one_chunk_at_a_time():
    full_context = ConformerCTC(build_preset("student-xs", vocab_size=12)).eval()
    with pytest.raises(ValueError, match="causal"):
        full_context.forward_chunk(torch.randn(1, 16, 80), full_context.initial_state())
    model = tiny_stream()
    with pytest.raises(ValueError, match="more than one chunk"):
        model.forward_chunk(torch.randn(1, 17, 80), model.initial_state())
    with pytest.raises(ValueError, match="chunk_size=0"):
        model(torch.randn(1, 16, 80), torch.tensor([16]), chunk_size=0)


# -- StreamingTranscriber ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transcriber_parts():
    tokenizer = CharTokenizer.default_english()
    torch.manual_seed(0)
    model = ConformerCTC(build_preset("student-stream", vocab_size=tokenizer.vocab_size)).eval()
    frontend = LogMel(streamable_frontend(FrontendConfig())).eval()
    wav = 0.1 * torch.randn(16000 + 2123, generator=torch.Generator().manual_seed(3))
    return model, frontend, tokenizer, wav


def chunked_offline(model, frontend, wav, **chunking):
    """Chunked offline decoding of the whole utterance: log-probs [T', V] and greedy token ids."""
    with torch.no_grad():
        feats, feat_lens = frontend(wav[None], torch.tensor([wav.numel()]))
        log_probs, out_lens, _ = model(feats, feat_lens, **chunking)
    return log_probs[0], greedy_decode(log_probs, out_lens)[0]


@pytest.mark.parametrize("chunk_size, left_chunks", [(None, None), (4, 2)])
def test_any_split_of_the_samples_gives_the_chunked_offline_result(transcriber_parts, chunk_size, left_chunks):
    model, frontend, tokenizer, wav = transcriber_parts
    offline, tokens = chunked_offline(model, frontend, wav, chunk_size=chunk_size, left_chunks=left_chunks)
    assert tokens, "a random model that emits nothing would make the text comparison vacuous"
    transcriber = StreamingTranscriber(model, frontend, tokenizer, chunk_size, left_chunks)
    rng = np.random.default_rng(0)
    ragged = np.cumsum(rng.integers(1, 3000, size=20))
    splits = {
        "10 ms": np.arange(160, wav.numel(), 160),
        "1 s": np.arange(16000, wav.numel(), 16000),
        "all at once": np.array([], dtype=int),
        "ragged": ragged[ragged < wav.numel()],
    }
    for name, cuts in splits.items():
        transcriber.reset()
        partials = [transcriber.accept_waveform(piece.numpy()) for piece in np.split(wav, cuts)]
        hyp = transcriber.finalize()
        torch.testing.assert_close(transcriber.log_probs, offline, atol=1e-5, rtol=0, msg=name)
        assert hyp.tokens == tokens and hyp.text == tokenizer.decode(tokens), name
        assert 0.0 <= hyp.confidence <= 1.0
        # Partial texts only grow: each is the greedy text of the chunks decoded so far.
        for earlier, later in zip(partials, partials[1:] + [hyp.text]):
            assert later.startswith(earlier), name


def test_partial_text_arrives_chunk_by_chunk(transcriber_parts):
    model, frontend, tokenizer, wav = transcriber_parts
    transcriber = StreamingTranscriber(model, frontend, tokenizer)
    chunk = transcriber.chunk_samples
    assert chunk == model.config.chunk_size * model.config.subsampling * frontend.config.hop_length
    # A chunk's last frame reads n_fft // 2 - hop samples past the chunk (the centred window).
    lookahead = frontend.config.n_fft // 2 - frontend.config.hop_length
    transcriber.accept_waveform(wav[: chunk + lookahead - 1].numpy())
    assert transcriber.log_probs.size(0) == 0
    transcriber.accept_waveform(wav[chunk + lookahead - 1 : chunk + lookahead].numpy())
    assert transcriber.log_probs.size(0) == model.config.chunk_size
    transcriber.finalize()
    with pytest.raises(StreamingError, match="reset"):
        transcriber.accept_waveform(wav[:160].numpy())
    transcriber.reset()
    assert transcriber.accept_waveform(np.zeros(0, dtype=np.float32)) == ""
    transcriber.finalize()
    assert transcriber.log_probs.size(0) == 1  # no audio is one (silent) frame, as offline


def test_front_end_streams_exactly_and_refuses_what_needs_the_whole_utterance(transcriber_parts):
    _, frontend, _, wav = transcriber_parts
    with torch.no_grad():
        offline, _ = frontend(wav[None], torch.tensor([wav.numel()]))
    streaming = StreamingFrontend(frontend)
    state, frames = streaming.initial_state(), []
    for piece in torch.split(wav, 1000):
        feats, state = streaming.accept(state, piece[None])
        frames.append(feats)
    feats, state = streaming.flush(state)
    # float32: the DFT convolution rounds differently over a 1000-sample buffer than over the whole
    # signal, by up to ~1e-5 in the log of the weakest bands (see LogMel's docstring).
    torch.testing.assert_close(torch.cat(frames + [feats], dim=1), offline, atol=5e-5, rtol=0)

    with pytest.raises(ValueError, match="frontend.normalize='per_feature'.*normalize: none"):
        StreamingFrontend(LogMel(FrontendConfig()))
    with pytest.raises(ValueError, match="frontend.framing='kaldi'"):
        StreamingFrontend(LogMel(FrontendConfig.preset("sherpa", normalize="none")))
    model, _, tokenizer, _ = transcriber_parts
    with pytest.raises(ValueError, match="streaming model"):
        StreamingTranscriber(ConformerCTC(build_preset("student", vocab_size=tokenizer.vocab_size)),
                             frontend, tokenizer)


def test_a_streaming_checkpoint_states_its_chunking_and_front_end(transcriber_parts, tmp_path):
    model, frontend, tokenizer, wav = transcriber_parts
    path = save_checkpoint(tmp_path / "stream", model, frontend.config, tokenizer)
    transcriber = StreamingTranscriber.from_checkpoint(path, chunk_size=4, left_chunks=2)
    assert transcriber.chunking == ChunkChoice(4, 2)
    assert transcriber.frontend.config.normalize == "none"
    transcriber.accept_waveform(wav.numpy())
    _, tokens = chunked_offline(model, frontend, wav, chunk_size=4, left_chunks=2)
    assert transcriber.finalize().tokens == tokens
