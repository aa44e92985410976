"""WER and one-thread RTF of a Whisper teacher on a manifest, as `asrkd eval` gives them for a
student: the teacher's best hypothesis per utterance, in the student's spelling.

    python recipes/fsdd/local/whisper_eval.py TEACHER_SPEC MANIFEST [--json OUT.json]

TEACHER_SPEC as for ``asrkd cache build --teacher`` (its ``threads`` is set to 1). The RTF is
`eval.rtf.measure` over the manifest, one utterance per call (Whisper encodes each as a 30 s
window), one timed pass after the WER pass.
"""

from __future__ import annotations

import argparse
import json

import torch

from asrkd.audio import load_audio
from asrkd.contract import SAMPLE_RATE
from asrkd.data import read_manifest
from asrkd.metrics import score
from asrkd.teachers import load_teacher
from asrkd.teachers.loading import with_threads
from eval.rtf import measure
from eval.runners import SequenceTeacherRunner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("teacher")
    p.add_argument("manifest")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    torch.set_num_threads(1)
    spec = with_threads(args.teacher, 1)
    utts = read_manifest(args.manifest)
    pcms = [load_audio(u.audio_filepath, SAMPLE_RATE, offset=u.offset, duration=u.duration) for u in utts]
    runner = SequenceTeacherRunner(load_teacher(spec))
    hyps = [runner.run(pcm) for pcm in pcms]
    result = score([u.text for u in utts], hyps, [u.speaker for u in utts])
    timing = measure(lambda: runner, pcms, SAMPLE_RATE, repeats=1, warmup=0)
    result.update({"teacher": spec, "describe": runner.teacher.describe(), "rtf_1thread": timing.rtf,
                   "audio_seconds": timing.audio_seconds})
    print(f"{spec}: WER {100 * result['wer']:.2f} %, RTF {timing.rtf:.3f} (1 thread) on {len(utts)} utterances")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
