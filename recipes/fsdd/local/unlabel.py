"""Copies of manifests without their text: audio for label-free distillation (run_whisper.sh).

    python recipes/fsdd/local/unlabel.py IN.jsonl OUT.jsonl [IN.jsonl OUT.jsonl ...]

Every line keeps its audio, duration, offset, speaker and utt_id; ``text`` becomes null, so
`asrkd distill` labels it from the teacher's cache (``kd.pseudo_label``) and no transcript reaches
the student.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from asrkd.data import read_manifest, write_manifest


def main(argv: list[str]) -> int:
    if not argv or len(argv) % 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for src, dst in zip(argv[::2], argv[1::2], strict=True):
        utts = read_manifest(src)
        write_manifest(dst, [replace(u, text=None) for u in utts])
        print(f"{dst}: {len(utts)} utterances without text (from {src})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
