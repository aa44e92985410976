"""Conformer-CTC: padding invariance, lengths, presets, FLOPs, hidden states, export, a training
sanity check, and the non-streaming presets unchanged by streaming support (tests/test_streaming.py)."""

import dataclasses
import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from asrkd.decoding import greedy_decode
from asrkd.models.conformer import (
    PRESETS,
    ConformerConfig,
    ConformerCTC,
    build_preset,
    count_parameters,
    flops_per_second,
    subsampled_lengths,
)


def tiny_config(**overrides) -> ConformerConfig:
    shape = dict(vocab_size=12, n_mels=80, d_model=32, n_heads=2, n_layers=2, ff_mult=2,
                 conv_kernel=7, subsampling_channels=8, dropout=0.0)
    return ConformerConfig(**{**shape, **overrides})


@pytest.mark.parametrize("subsampling", [4, 8])
def test_utterance_alone_equals_utterance_in_padded_batch(subsampling):
    torch.manual_seed(0)
    model = ConformerCTC(tiny_config(subsampling=subsampling)).eval()
    lens = torch.tensor([37, 120, 9, 64, 121])
    feats = torch.randn(len(lens), int(lens.max()), 80)
    batch = feats.clone()
    for i, n in enumerate(lens.tolist()):  # loud junk in the padding: masks must hide it
        batch[i, n:] = 100.0 * torch.randn(batch.size(1) - n, 80)

    with torch.no_grad():
        log_probs, out_lens, _ = model(batch, lens)
        for i, n in enumerate(lens.tolist()):
            alone, alone_len, _ = model(feats[i : i + 1, :n], lens[i : i + 1])
            assert alone_len.item() == out_lens[i].item() == alone.size(1)
            delta = (alone[0] - log_probs[i, : alone.size(1)]).abs().max().item()
            assert delta <= 1e-4, f"utterance {i} (length {n}): max |delta log-prob| = {delta}"


@pytest.mark.parametrize("subsampling", [4, 8])
def test_output_lengths_follow_the_formula(subsampling):
    model = ConformerCTC(tiny_config(subsampling=subsampling, n_layers=1)).eval()
    lengths = list(range(1, 40)) + [99, 100, 101, 257, 1000, 1001]
    with torch.no_grad():
        for n in lengths:
            log_probs, out_lens, _ = model(torch.randn(1, n, 80), torch.tensor([n]))
            expected = subsampled_lengths(n, subsampling)
            assert expected == math.ceil(n / subsampling)
            assert log_probs.size(1) == out_lens.item() == expected == model.output_lengths(n), n
    as_tensor = subsampled_lengths(torch.tensor(lengths), subsampling)
    assert as_tensor.tolist() == [subsampled_lengths(n, subsampling) for n in lengths]
    assert subsampled_lengths(0, subsampling) == 0


def test_presets_teacher_is_at_least_8x_the_default_student():
    params = {name: count_parameters(ConformerCTC(build_preset(name, vocab_size=32))) for name in PRESETS}
    assert params["teacher"] >= 8 * params["student"]
    assert params["student"] > params["student-xs"]
    assert 500_000 <= params["student"] <= 1_000_000
    # The default student is the dataclass default.
    assert build_preset("student", vocab_size=32) == ConformerConfig(vocab_size=32)


def test_student_stream_is_the_student_with_a_causal_convolution():
    student = ConformerCTC(build_preset("student", vocab_size=32))
    stream = ConformerCTC(build_preset("student-stream", vocab_size=32))
    assert stream.config.causal and stream.config.chunk_size > 0
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    assert {k: v.shape for k, v in stream.state_dict().items()} == shapes
    # Its weights load into the full-context student and back (and so into a streaming one).
    stream.load_state_dict(student.state_dict())


# Measured with the code before streaming support (af0fbb5, /tmp/base): state_dict keys and shapes
# (count, sha256 prefix), output lengths, the log-probs' sum and a linearly weighted sum.
BEFORE_STREAMING = {
    "teacher": (248, "d94113f263c48478", [51, 38], -11701.77062368393, -0.5696018752678143),
    "student": (128, "38ffcdd6d7a0ff5a", [51, 38], -11771.404016852379, 5.605485869849581),
    "student-xs": (98, "b1d93cf83ca3a6c8", [51, 38], -11858.099016189575, 27.243753542682192),
}


@pytest.mark.parametrize("name", sorted(BEFORE_STREAMING))
def test_non_streaming_presets_are_unchanged_by_streaming_support(name):
    count, keys_sha, lens, total, weighted = BEFORE_STREAMING[name]
    torch.manual_seed(0)
    model = ConformerCTC(build_preset(name, vocab_size=32)).eval()
    state = model.state_dict()
    assert len(state) == count
    described = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    assert hashlib.sha256(described.encode()).hexdigest()[:16] == keys_sha
    feats = torch.randn(2, 203, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        log_probs, out_lens, _ = model(feats, torch.tensor([203, 150]))
    weights = torch.linspace(-1, 1, log_probs.numel(), dtype=torch.float64).reshape(log_probs.shape)
    assert out_lens.tolist() == lens
    # Equal to the digit on the machine that measured it; the tolerance allows other CPUs' kernels.
    assert log_probs.double().sum().item() == pytest.approx(total, rel=1e-6, abs=1e-3)
    assert (log_probs.double() * weights).sum().item() == pytest.approx(weighted, abs=1e-3)


def test_flops_are_positive_and_grow_with_size():
    flops = {name: flops_per_second(build_preset(name, vocab_size=32)) for name in PRESETS}
    assert 0 < flops["student-xs"] < flops["student"] < flops["teacher"]
    base = build_preset("student", vocab_size=32)
    for field, bigger in [("d_model", 96), ("n_layers", 6), ("ff_mult", 6), ("conv_kernel", 31),
                          ("subsampling_channels", 96), ("vocab_size", 500)]:
        grown = dataclasses.replace(base, **{field: bigger})
        assert flops_per_second(grown) > flops_per_second(base), field
    assert flops_per_second(build_preset("student", 32, subsampling=8)) < flops_per_second(base)
    # Attention is quadratic in length: longer utterances cost more per second.
    assert flops_per_second(base, utterance_seconds=20) > flops_per_second(base, utterance_seconds=5)


@pytest.mark.parametrize("subsampling", [4, 8])
def test_flops_match_torch_flop_counter(subsampling):
    config = tiny_config(subsampling=subsampling)
    model = ConformerCTC(config).eval()
    seconds = 3.0
    # The math SDPA backend runs attention as matmuls, which the counter sees.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 300, 80), torch.tensor([300]))
    assert flops_per_second(config, utterance_seconds=seconds) == counter.get_total_flops() / seconds


def test_return_hidden_gives_one_state_per_block():
    config = tiny_config(n_layers=3)
    model = ConformerCTC(config).eval()
    feats, lens = torch.randn(2, 50, 80), torch.tensor([50, 31])
    with torch.no_grad():
        log_probs, out_lens, hidden = model(feats, lens, return_hidden=True)
        assert model(feats, lens)[2] is None
    assert len(hidden) == config.n_layers
    for h in hidden:
        assert h.shape == (2, log_probs.size(1), config.d_model)
    # The last hidden state is what the CTC head reads.
    torch.testing.assert_close(F.log_softmax(model.ctc_head(hidden[-1]), -1), log_probs)


class LogProbsOnly(torch.nn.Module):
    """What an exporter traces: a jit trace may only return tensors, not the hidden-state None."""

    def __init__(self, model: ConformerCTC):
        super().__init__()
        self.model = model

    def forward(self, feats, feat_lens):
        log_probs, out_lens, _ = self.model(feats, feat_lens)
        return log_probs, out_lens


def test_torch_export_with_dynamic_time_matches_eager():
    torch.manual_seed(0)
    model = ConformerCTC(tiny_config()).eval()
    example = (torch.randn(1, 200, 80), torch.tensor([200]))
    exported = torch.export.export(model, example, dynamic_shapes=({1: torch.export.Dim.DYNAMIC}, None))
    traced = torch.jit.trace(LogProbsOnly(model), example, check_trace=False)  # the Core ML route
    for n in (57, 333):
        feats, lens = torch.randn(1, n, 80), torch.tensor([n])
        with torch.no_grad():
            eager, eager_lens, _ = model(feats, lens)
            for runner in (exported.module(), traced):
                log_probs, out_lens = runner(feats, lens)[:2]
                assert log_probs.shape == eager.shape
                assert out_lens.tolist() == eager_lens.tolist()
                torch.testing.assert_close(log_probs, eager, atol=1e-5, rtol=0)


def test_config_round_trip_and_validation():
    config = build_preset("teacher", vocab_size=40, subsampling=8)
    assert ConformerConfig.from_dict(config.to_dict()) == config
    assert config.subsampling == 8 and config.d_model == PRESETS["teacher"]["d_model"]
    with pytest.raises(ValueError, match="unknown key.*'dmodel'"):
        ConformerConfig.from_dict({**config.to_dict(), "dmodel": 3})
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build_preset("huge", vocab_size=40)
    for bad in [dict(subsampling=6), dict(conv_kernel=8), dict(n_heads=3), dict(d_model=36, n_heads=4),
                dict(chunk_size=8), dict(causal=True, chunk_size=0), dict(left_chunks=-2)]:
        with pytest.raises(ValueError, match="invalid ConformerConfig"):
            tiny_config(**bad)


def test_tiny_model_overfits_four_utterances():
    torch.manual_seed(0)
    model = ConformerCTC(tiny_config(vocab_size=6, n_layers=1))
    lens = torch.tensor([64, 56, 48, 40])
    feats = torch.randn(4, 64, 80)
    targets = [[1, 2, 3, 4], [5, 5, 1], [2, 4, 2], [3, 1]]  # includes a repeat (needs a blank)
    flat = torch.tensor([t for seq in targets for t in seq])
    target_lens = torch.tensor([len(seq) for seq in targets])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        model.train()
        log_probs, out_lens, _ = model(feats, lens)
        loss = F.ctc_loss(log_probs.transpose(0, 1), flat, out_lens, target_lens, zero_infinity=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                log_probs, out_lens, _ = model(feats, lens)
            if greedy_decode(log_probs, out_lens) == targets:
                break
    assert greedy_decode(log_probs, out_lens) == targets, f"loss {loss.item():.3f} after {step + 1} steps"
