"""CTC decoding: greedy, prefix beam search against brute force, confidence."""

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from asrkd.decoding import (
    batch_confidence,
    batch_prefix_beam_search,
    greedy_decode,
    prefix_beam_search,
    utterance_confidence,
)


def random_log_probs(*shape, sharpness=1.0, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharpness * torch.randn(*shape, generator=gen), dim=-1)


def collapse(path, blank=0):
    return [token for token, _ in itertools.groupby(path) if token != blank]


def brute_force(log_probs: torch.Tensor) -> list[tuple[list[int], float]]:
    """Every one of the V^T alignments, collapsed; probabilities summed per label sequence."""
    lp = log_probs.double()
    total = defaultdict(lambda: -math.inf)
    for path in itertools.product(range(lp.size(1)), repeat=lp.size(0)):
        score = sum(lp[t, c].item() for t, c in enumerate(path))
        key = tuple(collapse(path))
        total[key] = float(np.logaddexp(total[key], score))
    return sorted(((list(k), v) for k, v in total.items()), key=lambda h: -h[1])


@pytest.mark.parametrize("vocab,frames,seed", [(3, 4, 0), (3, 4, 1), (3, 4, 2), (4, 5, 3)])
def test_prefix_beam_search_equals_brute_force(vocab, frames, seed):
    log_probs = random_log_probs(frames, vocab, sharpness=2.0, seed=seed)
    exact = brute_force(log_probs)
    # A beam wider than the number of distinct prefixes, no pruning: the search is exact.
    found = prefix_beam_search(log_probs, beam=len(exact), nbest=4, prune_logp=-math.inf)
    assert [seq for seq, _ in found] == [seq for seq, _ in exact[:4]]
    for (_, got), (_, want) in zip(found, exact[:4], strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    # Everything together is the whole probability mass.
    all_hyps = prefix_beam_search(log_probs, beam=len(exact), nbest=len(exact), prune_logp=-math.inf)
    assert np.logaddexp.reduce([s for _, s in all_hyps]) == pytest.approx(0.0, abs=1e-5)


def test_narrow_beam_scores_are_lower_bounds_and_sorted():
    log_probs = random_log_probs(6, 4, sharpness=3.0, seed=7)
    exact = dict((tuple(seq), score) for seq, score in brute_force(log_probs))
    found = prefix_beam_search(log_probs, beam=3, nbest=3, prune_logp=-5.0)
    assert len(found) == 3
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    for seq, score in found:  # pruning can only lose alignments, never invent them
        assert score <= exact[tuple(seq)] + 1e-6


def test_beam_search_finds_the_sequence_greedy_misses():
    # Blank wins every frame, yet "a" is the likelier transcript once its alignments are summed.
    lp = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]]).log()  # columns: blank, a, b
    assert greedy_decode(lp[None], torch.tensor([2])) == [[]]
    # P([a]) = .3*.3 + .3*.6 + .6*.3 = 0.45 > P([]) = 0.36 > P([b]) = .01 + .06 + .06 = 0.13
    best = prefix_beam_search(lp, beam=8, nbest=3)
    assert [seq for seq, _ in best] == [[1], [], [2]]
    for (_, score), p in zip(best, [0.45, 0.36, 0.13], strict=True):
        assert score == pytest.approx(math.log(p), abs=1e-6)


def test_batch_prefix_beam_search_decodes_each_utterance_up_to_its_length():
    log_probs = random_log_probs(3, 20, 6, sharpness=3.0, seed=1)
    lens = torch.tensor([20, 7, 13])
    batched = batch_prefix_beam_search(log_probs, lens, beam=4, nbest=2)
    for b, n in enumerate(lens.tolist()):
        assert batched[b] == prefix_beam_search(log_probs[b, :n], beam=4, nbest=2)
    # numpy input (what ONNX Runtime / LiteRT return) decodes the same
    assert batch_prefix_beam_search(log_probs.numpy(), lens.numpy(), beam=4, nbest=2) == batched


def test_greedy_decode_is_argmax_then_collapse():
    log_probs = random_log_probs(4, 30, 5, sharpness=2.0, seed=3)
    lens = torch.tensor([30, 1, 17, 0])
    expected = [collapse(log_probs[b, :n].argmax(-1).tolist()) for b, n in enumerate(lens.tolist())]
    assert greedy_decode(log_probs, lens) == expected
    # hand-made path: a a _ a b b _ -> a a b
    frames = torch.tensor([1, 1, 0, 1, 2, 2, 0])
    one_hot = torch.nn.functional.one_hot(frames, 3).float().log()
    assert greedy_decode(one_hot[None], torch.tensor([7])) == [[1, 1, 2]]


def test_confidence_is_in_unit_range_and_higher_for_peaky_posteriors():
    lens = torch.tensor([40, 40, 40])
    flat = random_log_probs(1, 40, 10, sharpness=0.3, seed=0)
    medium = random_log_probs(1, 40, 10, sharpness=3.0, seed=0)
    peaky = random_log_probs(1, 40, 10, sharpness=30.0, seed=0)
    conf = batch_confidence(torch.cat([flat, medium, peaky]), lens)
    assert ((conf >= 0) & (conf <= 1)).all()
    assert conf[0] < conf[1] < conf[2]
    assert conf[2] > 0.9 and conf[0] < 0.1
    # one-hot is certain, uniform is not
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 3, 3, 0, 5]), 10).float().log()
    assert utterance_confidence(one_hot) == pytest.approx(1.0)
    assert utterance_confidence(torch.full((5, 10), -math.log(10))) == pytest.approx(0.0, abs=1e-6)


def test_confidence_ignores_blank_frames_and_padding():
    # Confident blanks around one uncertain token frame: the token frame decides.
    lp = torch.full((9, 4), -30.0)
    lp[:, 0] = 0.0
    lp[4] = torch.tensor([0.05, 0.5, 0.45, 0.0]).clamp(min=1e-9).log()
    lp = torch.log_softmax(lp, -1)
    token_frame_only = utterance_confidence(lp[4:5])
    assert utterance_confidence(lp) == pytest.approx(token_frame_only, abs=1e-6)
    assert utterance_confidence(lp) < 0.5
    # Frames past the length do not count; the batched and single versions agree.
    padded = torch.cat([lp, random_log_probs(5, 4, seed=2)])
    assert utterance_confidence(padded, length=9) == pytest.approx(utterance_confidence(lp), abs=1e-6)
    batch = torch.stack([padded, padded])
    assert batch_confidence(batch, torch.tensor([9, 14]))[0].item() == pytest.approx(
        utterance_confidence(lp), abs=1e-6)
    assert batch_confidence(batch, torch.tensor([0, 14]))[0].item() == 0.0


# --------------------------------------------------------------------------- lexicon decoding
# A character vocabulary for the lexicon tests: <blk>, ▁ and four letters.
LEX_TOKENS = ["<blk>", "\u2581", "a", "b", "n", "o"]


def _char_tokenizer():
    from asrkd.text import CharTokenizer

    return CharTokenizer(LEX_TOKENS)


@pytest.mark.parametrize("seed", range(4))
def test_lexicon_search_is_the_best_lexicon_hypothesis_of_brute_force(seed):
    from asrkd.decoding import Lexicon

    tok = _char_tokenizer()
    lexicon = Lexicon(["ab", "no", "a"])
    log_probs = random_log_probs(6, len(LEX_TOKENS), sharpness=1.0, seed=seed)
    exact = [(seq, s) for seq, s in brute_force(log_probs)
             if lexicon.allows(tok.decode(seq), final=True) and not (seq and seq[0] == tok.word_sep_id)
             and all(not (x == y == tok.word_sep_id) for x, y in zip(seq, seq[1:]))]
    found = prefix_beam_search(log_probs, beam=400, nbest=3, prune_logp=-math.inf,
                               constraint=lexicon.constraint(tok))
    assert [seq for seq, _ in found] == [seq for seq, _ in exact[:3]]
    for (_, got), (_, want) in zip(found, exact[:3], strict=True):
        assert got == pytest.approx(want, abs=1e-5)


def test_lexicon_turns_a_misspelling_into_the_likeliest_word():
    from asrkd.decoding import Lexicon

    tok = _char_tokenizer()
    ids = {t: i for i, t in enumerate(LEX_TOKENS)}

    def frames(*dists):
        lp = torch.full((len(dists), len(LEX_TOKENS)), 1e-3)
        for t, dist in enumerate(dists):
            for token, p in dist.items():
                lp[t, ids[token]] = p
        return (lp / lp.sum(dim=1, keepdim=True)).log()

    # Greedy reads "nb": "n" then a "b" that is nearly an "o".
    lp = frames({"n": 0.9}, {"b": 0.5, "o": 0.4}, {"<blk>": 0.9})
    assert tok.decode(greedy_decode(lp[None], torch.tensor([3]))[0]) == "nb"
    best = prefix_beam_search(lp, beam=4, nbest=1, constraint=Lexicon(["no", "ab"]).constraint(tok))[0][0]
    assert tok.decode(best) == "no"


def test_lexicon_works_with_a_bpe_tokenizer():
    from asrkd.decoding import Lexicon
    from asrkd.text import BPETokenizer

    tok = BPETokenizer.train(["one two three", "two one", "three three one"] * 20, vocab_size=20)
    lexicon = Lexicon(["one", "two", "three"])
    constraint = lexicon.constraint(tok)
    assert constraint.allows(tuple(tok.encode("two thr")))
    assert constraint.allows(tuple(tok.encode("two three")), final=True)
    assert not constraint.allows(tuple(tok.encode("two thr")), final=True)
    assert not constraint.allows(tuple(tok.encode("tw one")))


def test_lexicon_file_errors_name_the_file_and_line(tmp_path):
    from asrkd.decoding import Lexicon, LexiconError

    good = tmp_path / "words.txt"
    good.write_text("# digits\nZero\n\none  # a comment\n")
    assert Lexicon.from_file(good).words == {"zero", "one"}
    bad = tmp_path / "bad.txt"
    bad.write_text("zero\ntwenty one\n")
    with pytest.raises(LexiconError, match=rf"{bad}:2: 'twenty one' is more than one word"):
        Lexicon.from_file(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(LexiconError, match=rf"{empty}: no words"):
        Lexicon.from_file(empty)
    with pytest.raises(LexiconError, match="cannot read the lexicon"):
        Lexicon.from_file(tmp_path / "missing.txt")
