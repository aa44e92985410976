"""How good a sequence teacher's pseudo-labels are: its cache's best hypotheses against the
transcripts that the student never sees, per manifest, and what its filter dropped.

    python recipes/fsdd/local/pseudo_label_quality.py CACHE MANIFEST [MANIFEST ...]

MANIFEST: the labelled twins of the manifests the cache was built from (matched by utt_id).
Per manifest: utterances, drops per reason and, over the kept ones, the pseudo-labels' WER and
wrong utterances; then the WER of all kept pseudo-labels at a few ``kd.pseudo_label.min_confidence`` thresholds.
"""

from __future__ import annotations

import argparse
from collections import Counter

from asrkd.cache import PosteriorCache
from asrkd.data import read_manifest
from asrkd.metrics import word_error_rate

THRESHOLDS = (0.0, 0.3, 0.5, 0.7)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("cache")
    p.add_argument("manifests", nargs="+")
    args = p.parse_args()
    cache = PosteriorCache(args.cache)
    kept_all = []  # (confidence, reference, pseudo-label)
    for path in args.manifests:
        utts = [u for u in read_manifest(path) if u.utt_id in cache]
        drops, kept = Counter(), []
        for u in utts:
            drop = cache.drop(u.utt_id)
            if drop is not None:
                drops[drop["reason"]] += 1
                continue
            best = cache.nbest(u.utt_id)
            kept.append((cache.confidence(u.utt_id) or 0.0, u.text, best[0].text if best else ""))
        wer = word_error_rate([r for _, r, _ in kept], [h for _, _, h in kept])
        wrong = sum(r != h for _, r, h in kept)
        print(f"{path}: {len(utts)} utterances; dropped {sum(drops.values())} {dict(drops)}; kept {len(kept)}: WER {100 * (wer.rate or 0):.2f} % "
              f"(S {wer.substitutions}, D {wer.deletions}, I {wer.insertions}), {wrong} utterances wrong")
        kept_all += kept
    for threshold in THRESHOLDS:
        k = [(r, h) for c, r, h in kept_all if c >= threshold]
        wer = word_error_rate([r for r, _ in k], [h for _, h in k])
        print(f"min_confidence {threshold}: {len(k)} of {len(kept_all)} kept, WER {100 * (wer.rate or 0):.2f} %")


if __name__ == "__main__":
    main()
