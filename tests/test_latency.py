"""Streaming latency (eval/latency.py): the simulated real-time clock against hand-computed
figures (chunk wait, backlog, lookahead, a token only at the flush), the statistics over a set,
the speech onset, and the PyTorch StreamingTranscriber as a ChunkStepper."""

import json

import numpy as np
import pytest
import torch
from test_streaming import transcriber_parts  # noqa: F401

from asrkd.checkpoint import save_checkpoint
from asrkd.cli import main as cli_main
from asrkd.data.manifest import ManifestError
from asrkd.decoding import greedy_decode
from asrkd.streaming import StreamingError, StreamingTranscriber
from eval.latency import (
    ChunkStepper,
    CtcCollapse,
    TranscriberStepper,
    checkpoint_latency,
    measure_latency,
    measure_utterance,
    speech_onset,
)

RATE = 1000  # samples per second: 100-sample chunks are 0.1 s, 10 ms onset frames are 10 samples


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeStepper:
    """Takes ``compute`` seconds of ``clock`` per step (``finish_compute`` for finish) and emits
    token 7 on step ``emit_at`` (None: at finish; -1: never)."""

    def __init__(self, clock, chunk_samples=100, compute=0.02, finish_compute=0.005, emit_at=3,
                 lookahead_samples=0):
        self.clock, self.chunk_samples, self.compute = clock, chunk_samples, compute
        self.finish_compute, self.emit_at, self.lookahead_samples = finish_compute, emit_at, lookahead_samples
        self.pieces: list[int] = []

    def reset(self):
        self.pieces = []

    def step(self, pcm):
        self.clock.now += self.compute
        self.pieces.append(len(pcm))
        return [7] if len(self.pieces) - 1 == self.emit_at else []

    def finish(self):
        self.clock.now += self.finish_compute
        return [7] if self.emit_at is None else []


def speech_from(start: int, n: int = 1000) -> np.ndarray:
    """Silence, then a steady tone from sample ``start``."""
    wave = np.zeros(n, dtype=np.float32)
    wave[start:] = 0.5 * np.sin(np.arange(n - start) * 0.3)
    return wave


def test_first_partial_waits_for_its_chunk():
    clock = FakeClock()
    stepper = FakeStepper(clock)  # 0.1 s chunks, 20 ms compute, token on chunk 3 = [0.3, 0.4) s
    assert isinstance(stepper, ChunkStepper)
    u = measure_utterance(stepper, speech_from(250), RATE, clock=clock)
    assert u.onset == pytest.approx(0.25)
    # chunk 3 arrives at 0.4 s and is computed by 0.42 s: 0.17 s after the speech started
    # (0.08 - 0.25 < 0 if the chunk wait were ignored and the calls ran back to back from t = 0)
    assert u.first_partial == pytest.approx(0.17)
    # the last chunk arrives at 1.0 s, done at 1.02 s; finish takes 5 ms more
    assert u.final == pytest.approx(0.025)
    assert u.chunk_compute == pytest.approx([0.02] * 10) and u.tokens == [7]
    assert u.rtf == pytest.approx(0.205)


def test_a_backlog_delays_every_later_chunk():
    clock = FakeClock()
    stepper = FakeStepper(clock, compute=0.15)  # slower than real time: 0.15 s per 0.1 s chunk
    u = measure_utterance(stepper, speech_from(250), RATE, clock=clock)
    # chunk k ends at 0.1 + 0.15 (k + 1) s (each waits for the one before): chunk 3 at 0.7 s,
    # 0.45 s after the onset (0.4 + 0.15 - 0.25 = 0.30 if the backlog were ignored)
    assert u.first_partial == pytest.approx(0.45)
    assert u.final == pytest.approx(1.6 + 0.005 - 1.0)
    assert u.rtf == pytest.approx(1.505)


def test_lookahead_shifts_the_pieces_and_their_arrival():
    clock = FakeClock()
    stepper = FakeStepper(clock, lookahead_samples=40)
    u = measure_utterance(stepper, speech_from(250), RATE, clock=clock)
    assert stepper.pieces == [140] + [100] * 8 + [60]  # [0, 140), [140, 240), ..., [940, 1000)
    assert u.first_partial == pytest.approx(0.44 + 0.02 - 0.25)
    assert u.final == pytest.approx(0.025)  # the last piece ends with the audio


def test_a_token_only_at_the_flush_and_no_token_at_all():
    clock = FakeClock()
    u = measure_utterance(FakeStepper(clock, emit_at=None), speech_from(250, n=950), RATE, clock=clock)
    # 10 pieces, the last [900, 950) done at 0.97 s; finish ends at 0.975 s
    assert u.first_partial == pytest.approx(0.975 - 0.25) and u.final == pytest.approx(0.025)

    stats = measure_latency(FakeStepper(clock, emit_at=-1), [speech_from(250)] * 3, RATE, clock=clock)
    assert (stats.utterances, stats.no_token, stats.first_partial) == (3, 3, None)
    assert stats.to_dict()["first_partial"] is None


def test_median_and_p95_over_a_set():
    clock = FakeClock()
    waves = [speech_from(onset) for onset in (0, 100, 200, 300, 400)]
    stats = measure_latency(FakeStepper(clock, emit_at=5), waves, RATE, clock=clock, warmup=2)
    firsts = [0.62 - onset / RATE for onset in (0, 100, 200, 300, 400)]
    assert stats.first_partial.median == pytest.approx(np.median(firsts))
    assert stats.first_partial.p95 == pytest.approx(np.percentile(firsts, 95))
    assert stats.utterances == 5 and stats.no_token == 0 and len(stats.per_utterance) == 5
    assert stats.chunk_compute.median == pytest.approx(0.02) and stats.final.p95 == pytest.approx(0.025)
    d = stats.to_dict()
    assert d["chunk_seconds"] == pytest.approx(0.1) and "per_utterance" not in d
    assert "first partial 420 ms (p95 600)" in stats.summary_line()


def test_speech_onset_is_the_first_frame_near_the_peak():
    rng = np.random.default_rng(0)
    wave = np.concatenate([1e-3 * rng.standard_normal(4000), 0.3 * rng.standard_normal(8000)])
    assert speech_onset(wave, 16000) == pytest.approx(0.25)  # noise 50 dB below: not speech
    assert speech_onset(wave, 16000, onset_db=60) == 0.0  # ... unless within onset_db
    assert speech_onset(np.zeros(500), 16000) == 0.0


def test_ctc_collapse_across_chunks_equals_greedy_decoding_of_all_frames():
    rng = np.random.default_rng(1)
    log_probs = rng.standard_normal((60, 5))
    log_probs[:, 0] += 0.5  # blanks common, but repeats across chunk boundaries too
    collapse, tokens = CtcCollapse(), []
    for piece in np.split(log_probs, [1, 7, 7, 20, 33, 34]):
        tokens += collapse.push(piece)
    assert tokens == greedy_decode(torch.from_numpy(log_probs)[None], torch.tensor([60]))[0]


@pytest.fixture(scope="module")
def stream_parts(transcriber_parts):  # noqa: F811
    """test_streaming's random student-stream, front end and tokenizer, the wave as numpy."""
    model, frontend, tokenizer, wav = transcriber_parts
    return model, frontend, tokenizer, wav.numpy()


def test_transcriber_stepper_emits_each_chunk_on_its_own_call(stream_parts):
    model, frontend, tokenizer, wav = stream_parts
    transcriber = StreamingTranscriber(model, frontend, tokenizer)
    stepper = TranscriberStepper(transcriber)
    assert isinstance(stepper, ChunkStepper) and stepper.lookahead_samples == 40
    stepper.reset()
    chunk, lookahead = stepper.chunk_samples, stepper.lookahead_samples
    # one sample short of the lookahead: chunk 0 is not complete yet; with it, it is
    stepper.step(wav[: chunk + lookahead - 1])
    assert transcriber.log_probs.size(0) == 0
    stepper.step(wav[chunk + lookahead - 1 : chunk + lookahead])
    assert transcriber.log_probs.size(0) == model.config.chunk_size

    stats = measure_latency(stepper, [wav], transcriber.sample_rate, warmup=0)
    expected = StreamingTranscriber(model, frontend, tokenizer)
    expected.accept_waveform(wav)
    assert stats.per_utterance[0].tokens == expected.finalize().tokens
    assert len(stats.per_utterance[0].chunk_compute) == len(wav) // chunk + 1
    with pytest.raises(StreamingError, match="full-context"):
        TranscriberStepper(StreamingTranscriber(model, frontend, tokenizer, chunk_size=-1))


def test_checkpoint_latency_and_asrkd_eval_on_a_manifest(stream_parts, tmp_path, capsys):
    from asrkd.audio import write_wav

    model, frontend, tokenizer, wav = stream_parts
    path = save_checkpoint(tmp_path / "stream", model, frontend.config, tokenizer)
    write_wav(tmp_path / "a.wav", wav)
    (tmp_path / "m.jsonl").write_text(
        '{"audio_filepath": "a.wav", "text": "one", "duration": %.4f}\n'
        '{"audio_filepath": "missing.wav", "text": "two", "duration": 1.0}\n' % (len(wav) / 16000))
    stats = checkpoint_latency(path, tmp_path / "m.jsonl", chunk_size=16)
    assert stats.utterances == 1 and stats.chunk_samples == 16 * 4 * 160
    assert stats.final.median > 0 and stats.rtf.median > 0
    (tmp_path / "none.jsonl").write_text('{"audio_filepath": "missing.wav", "text": "two", "duration": 1.0}\n')
    with pytest.raises(ManifestError, match="none.jsonl: no utterance's audio can be read"):
        checkpoint_latency(path, tmp_path / "none.jsonl", chunk_size=16)

    # asrkd eval of a streaming checkpoint reports the latency at the chunking it scored
    out = tmp_path / "eval.json"
    assert cli_main(["eval", str(path), "--manifest", str(tmp_path / "m.jsonl"), "--json", str(out)]) == 2
    latency = json.loads(out.read_text())["latency"]
    assert latency["chunk_samples"] == model.config.chunk_size * 4 * 160 and latency["utterances"] == 1
    assert set(latency["first_partial"] or {"median": 0, "p95": 0}) == {"median", "p95"}
    assert "latency: first partial" in capsys.readouterr().out
    assert cli_main(["eval", str(path), "--manifest", str(tmp_path / "m.jsonl"), "--json", str(out),
                     "--chunk-size", "-1"]) == 2
    assert "latency" not in json.loads(out.read_text())  # full context: nothing streams
