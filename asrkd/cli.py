"""The `asrkd` command. Only parses arguments and calls library functions; no logic of its own."""

from __future__ import annotations

import argparse
import sys


def _cmd_synth(args: argparse.Namespace) -> int:
    from asrkd.synth import synthesize_corpus

    manifest = synthesize_corpus(
        task=args.task,
        n=args.n,
        out_dir=args.out,
        seed=args.seed,
        voice_set=args.voice_set,
        workers=args.workers,
    )
    print(f"wrote {manifest}")
    return 0


def _cmd_manifest_check(args: argparse.Namespace) -> int:
    from asrkd.data import check_manifest
    from asrkd.text import CharTokenizer, load_tokenizer

    tokenizer = load_tokenizer(args.tokens) if args.tokens else CharTokenizer.default_english()
    total = 0
    for path in args.manifest:
        problems = check_manifest(path, tokenizer=tokenizer, duration_tolerance=args.duration_tolerance)
        for p in problems:
            print(f"{path}:{p.line}: {p.kind}: {p.message}")
        total += len(problems)
        print(f"{path}: {len(problems)} problem(s)")
    if len(args.manifest) > 1:
        print(f"total: {total} problem(s)")
    return 0 if total == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrkd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="synthesize a speech corpus with espeak-ng (16 kHz WAV + manifest)")
    p.add_argument("--task", choices=["digits", "words"], default="digits")
    p.add_argument("--n", type=int, required=True, help="number of utterances")
    p.add_argument("--out", required=True, help="output folder; writes OUT/manifest.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--voice-set",
        choices=["all", "train", "dev", "test"],
        default="all",
        help="draw voices from a disjoint subset so that splits never share a voice",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("manifest", help="manifest tools")
    msub = p.add_subparsers(dest="manifest_command", required=True)
    p = msub.add_parser("check", help="validate every line of one or more JSONL manifests")
    p.add_argument("manifest", nargs="+")
    p.add_argument("--tokens", help="tokens.txt (or a SentencePiece .model) defining the vocabulary")
    p.add_argument("--duration-tolerance", type=float, default=0.1, help="seconds (default 0.1)")
    p.set_defaults(func=_cmd_manifest_check)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
