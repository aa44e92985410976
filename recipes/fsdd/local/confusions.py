"""The most frequent word errors of an `asrkd eval --json OUT` run (docs/TRAINING.md's counts).

    python recipes/fsdd/local/confusions.py OUT.utterances.jsonl [--top 8]

Substitutions print as `ref -> hyp`, deletions as `ref -> <del>`, insertions as `<ins> -> hyp`.
"""

from __future__ import annotations

import argparse
import json

from eval.wer import word_confusions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("utterances", help="the per-utterance JSONL that `asrkd eval --json OUT` writes")
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    with open(args.utterances, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    confusions = word_confusions([r["ref"] for r in rows], [r["hyp"] for r in rows])
    print(f"{sum(confusions.values())} word errors in {len(rows)} utterances")
    for (ref, hyp), n in confusions.most_common(args.top):
        print(f"{n:4d}  {ref or '<ins>'} -> {hyp or '<del>'}")


if __name__ == "__main__":
    main()
