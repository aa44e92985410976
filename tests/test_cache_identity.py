"""Where distillation targets come from is said, and a teacher the student cannot learn from is
refused (issue 18, finding 3): a cache names the teacher that built it (and says when no teacher
checked it), and frame KD between vocabularies that share too few symbols, such as a foreign one
of the same size, is a `VocabularyMismatchError` naming both, from a cache or an online teacher."""

from __future__ import annotations

import pytest
import torch
from test_bad_items import random_model_and_noise

from asrkd.cache import PosteriorCache, build_cache
from asrkd.contract import Contract
from asrkd.data import Utterance, write_manifest
from asrkd.features import FrontendConfig
from asrkd.kd import KDLoss
from asrkd.losses import FrameRateError, VocabularyMismatchError
from asrkd.models.conformer import ConformerCTC, build_preset
from asrkd.teacher import CallableTeacher, CheckpointTeacher
from asrkd.teacher_targets import CachedTargets, InMemoryTargets, OnlineTargets
from asrkd.text import BLANK, WORD_SEP, CharTokenizer, vocabulary_sha256

FRAME_KD = {"ctc": 1.0, "frame": 1.0}


def _student(tokenizer) -> ConformerCTC:
    torch.manual_seed(0)
    return ConformerCTC(build_preset("student-xs", vocab_size=tokenizer.vocab_size))


def _foreign(tokens: list[str]) -> list[str]:
    """A vocabulary of the same size whose symbols are other letters (Cyrillic), but for the blank
    and the word separator."""
    return [t if t in (BLANK, WORD_SEP) else chr(0x430 + i) for i, t in enumerate(tokens)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> tuple[PosteriorCache, list[Utterance], CheckpointTeacher]:
    """A cache built by a random checkpoint on four noise clips."""
    root = tmp_path_factory.mktemp("identity")
    ckpt, wavs = random_model_and_noise(root, 4)
    utts = [Utterance(str(w), "one", 0.5, utt_id=f"u{i}") for i, w in enumerate(wavs)]
    write_manifest(root / "m.jsonl", utts)
    teacher = CheckpointTeacher(ckpt)
    build_cache(teacher, [root / "m.jsonl"], root / "cache", progress=False)
    return PosteriorCache(root / "cache"), utts, teacher


def test_a_cache_names_its_teacher_and_says_when_none_checked_it(cache):
    posteriors, utts, teacher = cache
    source = CachedTargets(posteriors)
    posteriors.check(utts)  # kd.teacher unset: nothing to compare the cache's teacher with
    words = str(source)
    assert words.startswith(f"cache {posteriors.folder} (built by a asrkd-checkpoint teacher (weights sha256 "
                            f"{teacher.describe()['weights'][:12]}, {len(teacher.vocabulary)} tokens, vocabulary sha256 "
                            f"{vocabulary_sha256(teacher.vocabulary)[:12]})")
    assert words.endswith("; not checked against a teacher (kd.teacher unset))")
    posteriors.check(utts, teacher=teacher)
    assert "not checked" not in str(source)


def test_frame_kd_refuses_a_cache_with_a_foreign_vocabulary_of_the_same_size(cache):
    posteriors, _, teacher = cache
    student_tokens = CharTokenizer(_foreign(list(teacher.vocabulary)))
    assert student_tokens.vocab_size == len(teacher.vocabulary)
    with pytest.raises(VocabularyMismatchError) as e:
        KDLoss(CachedTargets(posteriors), _student(student_tokens), student_tokens, weights=FRAME_KD)
    message = str(e.value)
    assert message.startswith(f"cache {posteriors.folder} (built by ")
    assert f"sha256 {vocabulary_sha256(teacher.vocabulary)[:12]}" in message
    assert f"sha256 {student_tokens.fingerprint()[:12]}" in message
    assert "share only 1 of the student's" in message and "kd.weights.frame: 0" in message
    # sequence KD goes through text and is not refused; neither is the teacher's own vocabulary
    KDLoss(CachedTargets(posteriors), _student(student_tokens), student_tokens, weights={"ctc": 1.0, "sequence": 1.0})
    own = CharTokenizer(list(teacher.vocabulary))
    KDLoss(CachedTargets(posteriors), _student(own), own, weights=FRAME_KD)


def test_frame_kd_refuses_an_online_teacher_with_a_foreign_vocabulary():
    student_tokens = CharTokenizer.default_english()
    shift = Contract.from_parts(FrontendConfig(), build_preset("student-xs", vocab_size=2)).output_frame_shift
    foreign = CallableTeacher(lambda wavs, lens: None, _foreign(student_tokens.tokens), shift, fingerprint="ru")
    with pytest.raises(VocabularyMismatchError, match=r"^online teacher .*share only 1 of the student's"):
        KDLoss(OnlineTargets(foreign), _student(student_tokens), student_tokens, weights=FRAME_KD)


def test_a_character_teacher_with_a_few_extra_symbols_still_maps():
    student_tokens = CharTokenizer.default_english()
    shift = Contract.from_parts(FrontendConfig(), build_preset("student-xs", vocab_size=2)).output_frame_shift
    extra = InMemoryTargets({}, [*student_tokens.tokens, "<s>", "é"], shift)
    kd = KDLoss(extra, _student(student_tokens), student_tokens, weights=FRAME_KD)
    assert kd.vmap.unmapped_teacher == ["<s>", "é"]


def test_frame_rates_that_do_not_line_up_name_the_teacher():
    student_tokens = CharTokenizer.default_english()
    with pytest.raises(FrameRateError, match=r"^in-memory targets: teacher frames of 30 ms and student frames of"):
        KDLoss(InMemoryTargets({}, student_tokens.tokens, 0.03), _student(student_tokens), student_tokens,
               weights=FRAME_KD)
