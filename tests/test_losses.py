"""Distillation losses on hand-made tensors: what each term computes, and when it refuses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from asrkd.cache import TeacherTargets, top_k_posteriors
from asrkd.losses import (
    FrameRateError,
    VocabularyMap,
    VocabularyMismatchError,
    align_to_student,
    delay_frames,
    feature_kd_loss,
    frame_kd_loss,
    frame_ratio,
    frame_weights,
    map_targets,
    nbest_weights,
    pool_frames,
    relation_kd_loss,
    sequence_kd_loss,
)
from asrkd.text import BLANK, WORD_SEP


def random_log_probs(b, t, v, seed=0, sharpness=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharpness * torch.randn(b, t, v, generator=g), dim=-1)


def fp16_round_trip(tg: TeacherTargets) -> TeacherTargets:
    """What the cache stores: values and residual in fp16."""
    return TeacherTargets(tg.topk_logp.half().float(), tg.topk_ids, tg.residual.half().float(), tg.lengths)


# -- frame-level KD ----------------------------------------------------------------------------


def test_frame_kd_is_zero_when_the_student_is_the_teacher_and_positive_otherwise():
    teacher = random_log_probs(2, 30, 12, seed=0)
    lengths = torch.tensor([30, 21])
    targets = top_k_posteriors(teacher, lengths, k=4)
    weights = frame_weights(targets, "all")
    assert frame_kd_loss(teacher, targets, weights).item() == pytest.approx(0.0, abs=1e-6)
    # fp16 cache values: zero up to their rounding
    assert frame_kd_loss(teacher, fp16_round_trip(targets), weights).item() < 1e-3
    other = random_log_probs(2, 30, 12, seed=1)
    assert frame_kd_loss(other, targets, weights).item() > 1.0
    # padded frames do not count: changing the student beyond the lengths changes nothing
    poked = other.clone()
    poked[1, 21:] = torch.log_softmax(torch.randn(9, 12), -1)
    assert frame_kd_loss(poked, targets, weights).item() == pytest.approx(frame_kd_loss(other, targets, weights).item())


def test_frame_kd_with_all_tokens_in_the_top_k_is_the_exact_kl_divergence():
    teacher = random_log_probs(1, 5, 6, seed=2)
    student = random_log_probs(1, 5, 6, seed=3)
    targets = top_k_posteriors(teacher, torch.tensor([5]), k=6)
    exact = F.kl_div(student, teacher, log_target=True, reduction="sum")
    got = frame_kd_loss(student, targets, frame_weights(targets, "all"))
    assert got.item() == pytest.approx(exact.item(), rel=1e-5)


def test_frame_kd_top_k_plus_residual_matches_the_kl_of_the_bucketed_distributions():
    teacher = random_log_probs(1, 1, 5, seed=4)[0, 0]
    student = random_log_probs(1, 1, 5, seed=5)[0, 0]
    targets = top_k_posteriors(teacher[None, None], torch.tensor([1]), k=2)
    top = targets.topk_ids[0, 0]
    rest = [i for i in range(5) if i not in top.tolist()]
    p = torch.cat([teacher[top].exp(), teacher[rest].exp().sum()[None]])
    q = torch.cat([student[top].exp(), student[rest].exp().sum()[None]])
    expected = (p * (p / q).log()).sum()
    got = frame_kd_loss(student[None, None], targets, torch.ones(1, 1))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # temperature: both bucket distributions softened, the KL scaled by tau^2
    tau = 2.0
    pt, qt = torch.softmax(p.log() / tau, 0), torch.softmax(q.log() / tau, 0)
    expected_t = tau**2 * (pt * (pt / qt).log()).sum()
    got_t = frame_kd_loss(student[None, None], targets, torch.ones(1, 1), temperature=tau)
    assert got_t.item() == pytest.approx(expected_t.item(), rel=1e-5)


def make_targets(argmax_ids, vocab=4):
    """One utterance whose teacher argmax per frame is ``argmax_ids`` (p = 0.9 on it)."""
    t = len(argmax_ids)
    logp = torch.full((1, t, 2), -math.inf)
    ids = torch.full((1, t, 2), -1)
    for i, a in enumerate(argmax_ids):
        logp[0, i, 0], ids[0, i, 0] = math.log(0.9), a
        logp[0, i, 1], ids[0, i, 1] = math.log(0.06), (a + 1) % vocab
    residual = torch.full((1, t), math.log(0.04))
    return TeacherTargets(logp, ids, residual, torch.tensor([t]))


def test_each_blank_mode_selects_the_frames_it_should():
    #           0  1  2  3  4  5  6  7  8  9 | 10, 11 are padding
    argmax = [0, 0, 2, 0, 0, 0, 3, 3, 0, 0, 0, 0]
    targets = make_targets(argmax)
    targets.lengths = torch.tensor([10])
    w = {mode: frame_weights(targets, mode, blank_weight=0.25)[0] for mode in
         ("all", "downweight", "nonblank", "symmetric")}
    assert w["all"].tolist() == [1.0] * 10 + [0.0, 0.0]
    assert w["downweight"].tolist() == [0.25, 0.25, 1, 0.25, 0.25, 0.25, 1, 1, 0.25, 0.25, 0, 0]
    assert torch.nonzero(w["nonblank"]).flatten().tolist() == [2, 6, 7]
    # 3 non-blank frames + the 3 blank frames nearest to them: at distance 1 are frames 1, 3, 5
    # and 8; ties go to the earlier frames, so 8 is left out.
    assert torch.nonzero(w["symmetric"]).flatten().tolist() == [1, 2, 3, 5, 6, 7]


def test_symmetric_selection_grows_outwards_and_skips_all_blank_utterances():
    targets = make_targets([0, 0, 0, 1, 0, 0, 0, 0])
    assert torch.nonzero(frame_weights(targets, "symmetric")[0]).flatten().tolist() == [2, 3]
    targets = make_targets([0, 0, 0, 1, 1, 1, 0, 0])  # 3 non-blank: distance 1 (2, 6), then 1
    assert torch.nonzero(frame_weights(targets, "symmetric")[0]).flatten().tolist() == [1, 2, 3, 4, 5, 6]
    assert frame_weights(make_targets([0, 0, 0]), "symmetric").sum() == 0


# -- frame rate ----------------------------------------------------------------------------------


def test_two_teacher_frames_per_student_frame_average_their_probabilities():
    # 3 teacher frames at 20 ms -> 2 student frames at 40 ms; top-2 per frame, vocabulary of 4.
    p = [
        {1: 0.6, 0: 0.3},  # residual 0.1
        {0: 0.5, 2: 0.3},  # residual 0.2
        {3: 0.7, 0: 0.2},  # residual 0.1 (the last student frame has this one teacher frame)
    ]
    logp = torch.tensor([[[math.log(v) for v in f.values()] for f in p]])
    ids = torch.tensor([[list(f.keys()) for f in p]])
    residual = torch.log(torch.tensor([[0.1, 0.2, 0.1]]))
    targets = TeacherTargets(logp, ids, residual, torch.tensor([3]))
    pooled = pool_frames(targets, ratio=2, vocab_size=4)
    assert pooled.lengths.tolist() == [2]
    # frame 0: token 0 (0.3 + 0.5) / 2 = 0.4, token 1 0.3, token 2 0.15 (drops out of the top 2),
    # residual (0.1 + 0.2) / 2 + 0.15 = 0.3
    assert pooled.topk_ids[0, 0].tolist() == [0, 1]
    assert pooled.topk_logp[0, 0].exp().tolist() == pytest.approx([0.4, 0.3])
    assert pooled.residual[0, 0].exp().item() == pytest.approx(0.3)
    # frame 1: only teacher frame 2
    assert pooled.topk_ids[0, 1].tolist() == [3, 0]
    assert pooled.topk_logp[0, 1].exp().tolist() == pytest.approx([0.7, 0.2])
    assert pooled.residual[0, 1].exp().item() == pytest.approx(0.1)


def test_frame_ratio_must_be_a_whole_number():
    assert frame_ratio(0.02, 0.04) == 2
    assert frame_ratio(0.04, 0.04) == 1
    with pytest.raises(FrameRateError, match=r"20 ms .* 30 ms .*ratio 1\.5"):
        frame_ratio(0.02, 0.03)
    with pytest.raises(FrameRateError, match="ratio 0.5"):
        frame_ratio(0.04, 0.02)


def test_lengths_off_by_more_than_the_tolerance_are_refused():
    targets = top_k_posteriors(random_log_probs(2, 50, 6), torch.tensor([50, 40]), k=3)
    aligned = align_to_student(targets, torch.tensor([51, 40]), max_t=51)  # one frame: fine
    assert aligned.topk_ids.shape[1] == 51 and aligned.lengths.tolist() == [50, 40]
    with pytest.raises(FrameRateError, match="speed perturbation"):
        align_to_student(targets, torch.tensor([45, 40]), max_t=45)  # 10 % shorter: other audio


def test_a_frame_delay_of_d_makes_teacher_frame_j_the_target_of_student_frame_j_plus_d():
    d = 3
    teacher = random_log_probs(2, 30, 12, seed=0)
    lengths = torch.tensor([30, 21])
    targets = top_k_posteriors(teacher, lengths, k=4)
    targets.hidden = {1: torch.randn(2, 30, 5)}
    delayed = delay_frames(targets, lengths, d)
    # the teacher's frames 0 .. T-d-1, for the student's frames d .. T-1; lengths min(teacher, student - d)
    assert torch.equal(delayed.topk_ids, targets.topk_ids[:, :27])
    assert torch.equal(delayed.hidden[1], targets.hidden[1][:, :27])
    assert delayed.lengths.tolist() == [27, 18]
    # a student that says what the teacher said, d frames later (its first d frames anything):
    # no frame KD loss with the delay, a large one without it
    late = torch.cat([random_log_probs(2, d, 12, seed=5), teacher[:, :-d]], dim=1)
    assert frame_kd_loss(late[:, d:], delayed, frame_weights(delayed)).item() == pytest.approx(0.0, abs=1e-6)
    assert frame_kd_loss(late, targets, frame_weights(targets)).item() > 1.0
    assert delay_frames(targets, lengths, 0) is targets
    assert delay_frames(targets, lengths, 40).lengths.tolist() == [0, 0]  # longer than the batch: no pairs


# -- vocabulary ----------------------------------------------------------------------------------


def test_character_vocabularies_are_matched_symbol_by_symbol_and_unmapped_mass_goes_to_the_residual():
    teacher = [BLANK, WORD_SEP, "a", "b", "<s>", "é"]
    student = [BLANK, WORD_SEP, "b", "a", "c"]
    vmap = VocabularyMap.build(teacher, student)
    assert vmap.ids.tolist() == [0, 1, 3, 2, -1, -1]
    assert vmap.unmapped_teacher == ["<s>", "é"] and vmap.uncovered_student == ["c"]
    logp = torch.log(torch.tensor([[[0.5, 0.3, 0.1]]]))
    ids = torch.tensor([[[2, 5, 4]]])  # "a", "é", "<s>"
    targets = TeacherTargets(logp, ids, torch.log(torch.tensor([[0.1]])), torch.tensor([1]))
    mapped = map_targets(targets, vmap)
    assert mapped.topk_ids.tolist() == [[[3, -1, -1]]]
    assert mapped.residual.exp().item() == pytest.approx(0.1 + 0.3 + 0.1)


def test_word_piece_and_character_vocabularies_refuse_frame_kd_and_point_to_sequence_kd():
    bpe = [BLANK, "▁the", "▁a", "ing", "s"]
    chars = [BLANK, WORD_SEP, "a", "e", "t"]
    with pytest.raises(VocabularyMismatchError, match=r"5 word pieces .*'▁the'.*5 characters.*sequence-level KD"):
        VocabularyMap.build(bpe, chars)
    assert VocabularyMap.build(bpe, bpe).identity  # the same BPE vocabulary is fine


# -- sequence-level KD ---------------------------------------------------------------------------


def test_nbest_weights_are_a_softmax_of_the_scores_and_sum_to_one():
    scores = torch.tensor([-3.0, -4.0, -10.0])
    for temperature in (0.5, 1.0, 4.0):
        w = nbest_weights(scores, temperature)
        assert w.sum().item() == pytest.approx(1.0)
        assert w.tolist() == pytest.approx(torch.softmax(scores / temperature, 0).tolist())
    assert nbest_weights(scores, 1e4).tolist() == pytest.approx([1 / 3] * 3, abs=1e-3)  # flat


def test_sequence_kd_is_the_weighted_ctc_over_the_nbest():
    lp = random_log_probs(2, 12, 5, seed=6, sharpness=1.0)
    lens = torch.tensor([12, 9])
    nbest = [[([1, 2], -1.0), ([1, 2, 3], -2.0)], [([4], -0.5)]]
    got = sequence_kd_loss(lp, lens, nbest, temperature=1.0)
    w = nbest_weights(torch.tensor([-1.0, -2.0]))

    def ctc(b, hyp):
        return F.ctc_loss(lp[b, : lens[b]], torch.tensor(hyp), torch.tensor([int(lens[b])]),
                          torch.tensor([len(hyp)]), reduction="sum")

    expected = (w[0] * ctc(0, [1, 2]) + w[1] * ctc(0, [1, 2, 3]) + ctc(1, [4])) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert sequence_kd_loss(lp, lens, [[], []]).item() == 0.0


# -- hidden-state KD -----------------------------------------------------------------------------


def test_feature_kd_is_zero_for_a_perfect_projection_and_ignores_padding():
    torch.manual_seed(0)
    proj = torch.nn.Linear(4, 6)
    student = torch.randn(2, 7, 4)
    teacher = proj(student).detach()
    lengths = torch.tensor([7, 5])
    assert feature_kd_loss(student, teacher, lengths, proj).item() == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(2, 7, 6)
    loss = feature_kd_loss(student, other, lengths, proj)
    assert loss.item() > 1.0
    other[1, 5:] = 100.0  # padding
    assert feature_kd_loss(student, other, lengths, proj).item() == pytest.approx(loss.item())
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_relation_kd_compares_similarity_structure_not_hidden_sizes():
    torch.manual_seed(1)
    teacher = torch.randn(2, 6, 8)
    rotation = torch.linalg.qr(torch.randn(8, 8))[0]
    lengths = torch.tensor([6, 4])
    # a rotated (and scaled) copy has the same cosine similarities
    assert relation_kd_loss(3 * teacher @ rotation, teacher, lengths).item() == pytest.approx(0.0, abs=1e-5)
    student = torch.randn(2, 6, 3)
    loss = relation_kd_loss(student, teacher, lengths)
    assert loss.item() > 0.1
    student[1, 4:] = torch.randn(2, 3)  # padding
    assert relation_kd_loss(student, teacher, lengths).item() == pytest.approx(loss.item())
