"""Untranscribed audio of the dev speaker that no dev utterance contains (run_whisper.sh stage 9).

    python recipes/fsdd/local/untranscribed_dev_speaker.py FSDD_DIR OUT_DIR [--speaker S]
        [--connected N] [--seed SEED]

The real use case of label-free distillation is untranscribed audio from where the app will run:
its users' voices. Here that is the dev speaker (yweweler), with one rule that keeps the dev
figures honest: FSDD's connected utterances are made of its isolated takes (the manifest's
``components``), so every isolated take of the speaker that a dev utterance contains is left out.
What is written, all without text (``text`` null):

- the speaker's isolated takes that no connected utterance of his uses (190 of his 500);
- ``--connected`` new connected utterances made of those takes only, as FSDD's own are made
  (3-7 takes, 50-300 ms of silence between them, 100 ms at each end; 8 kHz like the takes),
  written to OUT_DIR/audio/.

OUT_DIR/manifest.jsonl lists both; each line keeps the speaker and the takes it is made of
(``components``), never their digits. OUT_DIR/transcribed.jsonl is the same audio with the text
its takes were recorded with: for the reference student trained on the same audio with the true
labels, and to score the teacher's pseudo-labels (local/pseudo_label_quality.py); the label-free
student never reads it. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from asrkd.audio import load_audio, write_wav
from asrkd.data import Utterance, read_manifest, write_manifest

RATE = 8000  # FSDD's own rate: the new utterances are written as the takes were recorded
GAP_MS = (50.0, 300.0)
EDGE_MS = 100.0
TAKES = (3, 7)


def _take(u: Utterance) -> str:
    """The take's name as ``components`` spells it: ``recordings/1_yweweler_30.wav`` -> ``1_yweweler_30``."""
    return Path(u.extra.get("orig_path", u.audio_filepath)).stem


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("fsdd", type=Path, help="the FSDD folder (manifests/fsdd_isolated.jsonl, fsdd_connected.jsonl)")
    p.add_argument("out", type=Path)
    p.add_argument("--speaker", default="fsdd_yweweler")
    p.add_argument("--connected", type=int, default=100, help="new connected utterances (default 100)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    manifests = args.fsdd / "manifests"
    isolated = [u for u in read_manifest(manifests / "fsdd_isolated.jsonl") if u.speaker == args.speaker]
    connected = [u for u in read_manifest(manifests / "fsdd_connected.jsonl") if u.speaker == args.speaker]
    if not isolated or not connected:
        print(f"untranscribed_dev_speaker.py: no utterances of speaker {args.speaker} in {manifests}", file=sys.stderr)
        return 2
    in_dev = {c for u in connected for c in u.extra["components"]}
    unused = [u for u in isolated if _take(u) not in in_dev]

    rng = np.random.default_rng(args.seed)
    audio = {_take(u): load_audio(u.audio_filepath, sample_rate=RATE) for u in unused}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "audio").mkdir(exist_ok=True)
    words = {_take(u): u.text for u in unused}
    lines = [Utterance(utt_id=f"untranscribed_{u.utt_id}", audio_filepath=u.audio_filepath, text=None,
                       duration=u.duration, speaker=u.speaker, extra={"components": [_take(u)]})
             for u in unused]
    names = sorted(audio)
    for i in range(args.connected):
        takes = [names[j] for j in rng.choice(len(names), size=rng.integers(TAKES[0], TAKES[1] + 1), replace=False)]
        gaps = rng.uniform(*GAP_MS, size=len(takes) - 1)
        edge = np.zeros(int(RATE * EDGE_MS / 1000), dtype=np.float32)
        pieces = [edge]
        for k, take in enumerate(takes):
            pieces.append(audio[take])
            if k < len(gaps):
                pieces.append(np.zeros(int(RATE * gaps[k] / 1000), dtype=np.float32))
        pieces.append(edge)
        wav = np.concatenate(pieces)
        path = args.out / "audio" / f"connected_{i:03d}.wav"
        write_wav(path, wav, sample_rate=RATE)
        lines.append(Utterance(utt_id=f"untranscribed_{args.speaker}_connected_{i:03d}",
                               audio_filepath=str(path.resolve()), text=None, duration=len(wav) / RATE,
                               speaker=args.speaker, extra={"components": takes}))
    write_manifest(args.out / "manifest.jsonl", lines)
    truth = [replace(u, text=" ".join(words[t] for t in u.extra["components"])) for u in lines]
    write_manifest(args.out / "transcribed.jsonl", truth)
    seconds = sum(u.duration for u in lines)
    print(f"{args.out / 'manifest.jsonl'}: {len(unused)} isolated takes of {args.speaker} that no dev utterance "
          f"contains ({len(in_dev)} do) + {args.connected} connected utterances made of them; "
          f"{seconds:.0f} s, no text")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
