"""Teachers: the models a student learns from, behind one interface (`asrkd.teachers.base.Teacher`).

One module per kind:

* `asrkd.teachers.ctc`: teachers with CTC posteriors: `CheckpointTeacher` (an asrkd checkpoint),
  `HFCTCTeacher` (a Hugging Face ``*ForCTC`` folder), `CallableTeacher` (any function);
* `asrkd.teachers.pseudo_label`: `PseudoLabelTeacher`, any ``transcribe(audio) -> text`` system;
* `asrkd.teachers.whisper`: `WhisperTeacher`, a pretrained Whisper (CTranslate2 or Hugging Face),
  text + encoder states; `asrkd.normalize` turns its text into the student's spelling and
  `asrkd.teachers.filter` says which utterances to drop;
* `asrkd.teachers.loading`: `load_teacher` from a folder or a ``whisper[:DIR][?options]`` spec.

docs/TEACHERS.md describes each kind and its options.
"""

from asrkd.teachers.base import (
    Hypothesis,
    SequenceBatch,
    SequenceOutput,
    Teacher,
    TeacherOutput,
    is_char_vocabulary,
    sha256_json,
    state_dict_sha256,
)
from asrkd.teachers.ctc import CallableTeacher, CheckpointTeacher, HFCTCTeacher, hf_vocabulary
from asrkd.teachers.filter import Drop, UtteranceFilter
from asrkd.teachers.loading import load_teacher, whisper_from_spec
from asrkd.teachers.pseudo_label import PseudoLabelTeacher
from asrkd.teachers.whisper import WhisperOptions, WhisperTeacher

__all__ = [
    "CallableTeacher",
    "CheckpointTeacher",
    "Drop",
    "HFCTCTeacher",
    "Hypothesis",
    "PseudoLabelTeacher",
    "SequenceBatch",
    "SequenceOutput",
    "Teacher",
    "TeacherOutput",
    "UtteranceFilter",
    "WhisperOptions",
    "WhisperTeacher",
    "hf_vocabulary",
    "is_char_vocabulary",
    "load_teacher",
    "sha256_json",
    "state_dict_sha256",
    "whisper_from_spec",
]
