"""The posterior cache: a teacher's outputs on a set of manifests, computed once, read every step.

Per frame: the top-k log-posteriors (fp16), their token ids (uint16) and the log of the residual
mass ``log(1 - sum of the top-k probabilities)`` (fp16): ``4k + 2`` bytes against ``4V`` for
dense fp32 posteriors. Per utterance: the teacher's N-best hypotheses (CTC prefix beam search,
text + token ids + log-probability) and its confidence (``asrkd.decoding.utterance_confidence``).
Optionally, teacher hidden states of chosen layers (fp16, ``2D`` bytes per frame and layer) for
feature- and relation-based KD.

A sequence teacher (no posteriors: `asrkd.teachers.PseudoLabelTeacher`, `asrkd.teachers.WhisperTeacher`)
gives text: the cache keeps its N-best (text, score; no token ids), its confidence and, when it
has them, the no-speech probability, word timings and its own unnormalised text (``sequence`` in
meta.json); hidden states, if asked for, are its encoder's (Whisper: layer 0, 20 ms frames,
``2D`` = 768 bytes per frame, 38.4 kB per second of audio). Its `asrkd.teachers.UtteranceFilter`
(``utterance_filter``) decides which utterances a student can learn from: a dropped one keeps an
empty N-best, and ``drops.jsonl`` records each drop (utt_id, reason, detail, the teacher's text),
``cache.json`` the counts per reason.

Layout of a cache folder::

    request.json        what is being built: teacher (weights, config, front end, vocabulary),
                        settings (top-k, N-best, beam, hidden layers, shard size), sha256 of entries
    entries.jsonl       one line per utterance: utt_id, audio path, duration, offset, text
    shards/00000/       one folder per shard (``shard_size`` utterances in manifest order), written
                        under a temporary name and renamed into place (atomic):
        topk_logp.npy  [F, K] float16   topk_ids.npy [F, K] uint16   residual.npy [F] float16
        hidden_<L>.npy [F, D] float16   (teacher layer L, 0-based; only if asked for)
        meta.json      shard key, utt_ids, frame offsets and lengths, N-best, confidences
                       (+ sequence teachers: ``sequence`` extras, ``drops``)
    drops.jsonl         sequence teachers with a filter: one line per dropped utterance
    cache.json          written last: the index utt_id -> (shard, offset, length) + a summary.
                        A folder without it is an unfinished build.

Reading (`PosteriorCache`) memory-maps the shard arrays: a batch touches only its own frames.

Staleness: `PosteriorCache.check` compares the cache with the utterances (and optionally the
teacher) about to be used, and `build_cache` compares an existing folder with its request; both
raise `StaleCacheError` listing what changed ("manifest entry fsdd_x_12: duration 1.23 → 1.31",
"teacher weights changed").

Resuming and ranks: a killed build rerun with the same arguments skips every finished shard.
Under ``torchrun`` shard i is built by rank ``i % world_size``; rank 0 writes ``cache.json``
after a barrier.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from asrkd.contract import NBEST, NBEST_BEAM, TOP_K
from asrkd.data import AudioDataset, BucketingBatchSampler, Utterance, collate, read_manifest
from asrkd.decoding import prefix_beam_search, utterance_confidence
from asrkd.errors import AsrkdError
from asrkd.fileio import atomic_write_text
from asrkd.progress import progress as progress_bar
from asrkd.text import vocabulary_sha256

FORMAT = "asrkd-posterior-cache"
VERSION = 1
INDEX_FILE = "cache.json"
REQUEST_FILE = "request.json"
ENTRIES_FILE = "entries.jsonl"
DROPS_FILE = "drops.jsonl"
_ARRAYS = ("topk_logp", "topk_ids", "residual")


class CacheError(AsrkdError, ValueError):
    """A cache folder that is missing, unfinished, or cannot serve the request."""


class StaleCacheError(CacheError):
    """The cache was built from other data or another teacher; ``changes`` lists what differs."""

    def __init__(self, folder: str | os.PathLike, changes: Sequence[str], hint: str):
        self.changes = list(changes)
        shown = self.changes[:12]
        more = f"\n  ... and {len(self.changes) - 12} more" if len(self.changes) > 12 else ""
        super().__init__(
            f"{folder}: the cache does not match ({len(self.changes)} change(s)):\n  "
            + "\n  ".join(shown) + more + f"\n{hint}"
        )


# ---------------------------------------------------------------------------------------------
# Targets: the in-memory form the losses read
# ---------------------------------------------------------------------------------------------


@dataclass
class TeacherTargets:
    """Compressed teacher posteriors of a padded batch.

    topk_logp [B, T, K] float32 (descending; -inf = empty entry), topk_ids [B, T, K] int64
    (-1 = empty), residual [B, T] float32 (log of the mass outside the top-k; -inf = none),
    lengths [B] int64, hidden {teacher layer: [B, T, D] float32}.
    """

    topk_logp: Tensor
    topk_ids: Tensor
    residual: Tensor
    lengths: Tensor
    hidden: dict[int, Tensor] = field(default_factory=dict)


def top_k_posteriors(log_probs: Tensor, lengths: Tensor, k: int) -> TeacherTargets:
    """log_probs [B, T, V] -> TeacherTargets with the k most probable tokens per frame.

    The residual ``log(1 - sum_k p)`` is computed in float64 (``log1p``) so that it stays accurate
    when the top-k hold nearly all the mass; a non-positive remainder is -inf (no residual).
    """
    k = min(k, log_probs.shape[-1])
    top_logp, top_ids = log_probs.float().topk(k, dim=-1)
    remainder = -torch.expm1(torch.logsumexp(top_logp.double(), dim=-1))  # 1 - sum, exact-ish
    residual = torch.where(remainder > 0, torch.log(remainder.clamp(min=1e-300)), -math.inf).float()
    return TeacherTargets(top_logp, top_ids, residual, lengths.long())


# ---------------------------------------------------------------------------------------------
# Fingerprints and what changed
# ---------------------------------------------------------------------------------------------


def entry_of(u: Utterance) -> dict[str, Any]:
    """What the cache remembers of a manifest line: the teacher's output depends on all of it."""
    return {"path": u.audio_filepath, "duration": u.duration, "offset": u.offset, "text": u.text}


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else repr(v) if isinstance(v, str) or v is None else str(v)


def diff_entries(old: dict[str, dict], new: dict[str, dict], missing_ok: bool = False,
                 unlabelled_ok: bool = False) -> list[str]:
    """Lines naming every manifest entry that differs ("manifest entry X: duration 1.23 → 1.31").

    ``missing_ok``: entries of ``old`` absent from ``new`` are fine (a cache may cover more data
    than one training run uses). ``unlabelled_ok``: an entry without text on either side matches
    the other's text (no teacher reads the transcript, so a cache built from the labelled manifest
    serves a label-free run on the same audio, and a cache of untranscribed audio serves a run
    that has since got its transcripts).
    """
    out = []
    for utt_id, entry in new.items():
        if utt_id not in old:
            out.append(f"manifest entry {utt_id}: not in the cache")
            continue
        for key in ("path", "duration", "offset", "text"):
            if key == "text" and unlabelled_ok and None in (entry.get("text"), old[utt_id].get("text")):
                continue
            if old[utt_id].get(key) != entry.get(key):
                out.append(f"manifest entry {utt_id}: {key} {_fmt(old[utt_id].get(key))} → {_fmt(entry.get(key))}")
    if not missing_ok:
        out += [f"manifest entry {utt_id}: in the cache, no longer in the manifests" for utt_id in old
                if utt_id not in new]
    return out


def diff_teacher(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Lines naming what differs between two ``Teacher.describe()`` dicts."""
    out = []
    if old.get("kind") != new.get("kind"):
        out.append(f"teacher kind changed: {old.get('kind')} → {new.get('kind')}")
    if old.get("weights") != new.get("weights"):
        out.append("teacher weights changed")
    if old.get("config") != new.get("config"):
        out.append("teacher model config changed")
    if old.get("frontend") != new.get("frontend"):
        a, b = old.get("frontend") or {}, new.get("frontend") or {}
        fields = [f"{k} {_fmt(a.get(k))} → {_fmt(b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        out.append("teacher front end changed: " + ", ".join(fields))
    if old.get("vocabulary") != new.get("vocabulary"):
        out.append("teacher vocabulary changed")
    return out


def _diff_settings(old: dict, new: dict) -> list[str]:
    return [f"setting {k}: {_fmt(old.get(k))} → {_fmt(new.get(k))}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What a `build_cache` call did (on this rank) and what the cache holds (from rank 0)."""

    folder: Path
    shards: int
    built: list[int]  # shard numbers computed by this call on this rank
    skipped: list[int]  # shard numbers found finished and reused
    utterances: int = 0
    frames: int = 0
    bytes_per_frame: float = 0.0  # top-k values + ids + residual
    dense_fp32_bytes_per_frame: float = 0.0  # 4 * V
    hidden_bytes_per_frame: float = 0.0
    hidden_bytes_per_second: float = 0.0  # of audio
    drops: dict[str, int] = field(default_factory=dict)  # utterances dropped by the filter, per reason
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the CLI: utterances, frames, shards built/reused, bytes per frame."""
        ratio = self.dense_fp32_bytes_per_frame / self.bytes_per_frame if self.bytes_per_frame else 0.0
        hidden = ""
        if self.hidden_bytes_per_frame:
            hidden = (f"; hidden states {self.hidden_bytes_per_frame:g} B/frame "
                      f"({self.hidden_bytes_per_second / 1000:.1f} kB per second of audio)")
        if self.drops:
            hidden += "; dropped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.drops.items()))
        posteriors = (f"{self.bytes_per_frame:g} bytes/frame vs {self.dense_fp32_bytes_per_frame:g} for dense "
                      f"fp32 posteriors ({ratio:.1f}x smaller)" if self.bytes_per_frame
                      else "no posteriors (a text-only teacher: N-best)")
        return (f"{self.folder}: {self.utterances} utterances, {self.frames} frames in {self.shards} shards "
                f"({len(self.built)} built, {len(self.skipped)} reused) in {self.seconds:.1f} s; "
                f"{posteriors}{hidden}")


def _dist_env(rank: int | None, world_size: int | None) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo")
    return rank, world


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _read_entries(folder: Path) -> tuple[list[str], dict[str, dict]]:
    ids, entries = [], {}
    with open(folder / ENTRIES_FILE, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            ids.append(d.pop("utt_id"))
            entries[ids[-1]] = d
    return ids, entries


def build_cache(
    teacher,
    manifests: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    top_k: int = TOP_K,
    nbest: int = NBEST,
    beam: int = NBEST_BEAM,
    hidden_layers: Sequence[int] = (),
    shard_size: int = 256,
    max_batch_seconds: float = 60.0,
    force: bool = False,
    utterance_filter=None,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
) -> BuildReport:
    """Run ``teacher`` (an ``asrkd.teacher.Teacher``) over every utterance of ``manifests`` and
    write a cache to ``out_dir``. Audio is loaded at the teacher's ``sample_rate`` (recorded in
    the request's settings).

    An existing folder built with the same request is resumed (finished shards are kept); one
    built from another teacher, other settings or other manifest entries is refused with
    `StaleCacheError` unless ``force`` (then it is emptied and rebuilt).

    ``utterance_filter`` (sequence teachers only; default: the teacher's own
    ``utterance_filter``, if it has one): an `asrkd.teachers.UtteranceFilter`; its settings are
    part of the request.
    """
    t0 = time.perf_counter()
    rank, world = _dist_env(rank, world_size)
    out = Path(out_dir)
    utts = [u for m in manifests for u in read_manifest(m)]
    seen: dict[str, int] = {}
    for i, u in enumerate(utts):
        if u.utt_id in seen:
            raise CacheError(f"utt_id {u.utt_id!r} occurs twice (entries {seen[u.utt_id]} and {i}); "
                             "the cache is indexed by utt_id, so ids must be unique across manifests")
        seen[u.utt_id] = i
    if not teacher.has_posteriors and top_k != TOP_K:
        raise CacheError(f"{type(teacher).__name__} has no posteriors: only its N-best text (and encoder states) "
                         "are cached; leave top_k at its default")
    if not teacher.has_posteriors and hidden_layers and not teacher.hidden_size():
        raise CacheError(f"{type(teacher).__name__} has no posteriors or hidden states: only N-best text is cached")
    hidden_layers = sorted(set(int(x) for x in hidden_layers))
    entries = {u.utt_id: entry_of(u) for u in utts}
    settings = {"top_k": top_k if teacher.has_posteriors else 0, "nbest": nbest, "beam": beam,
                "hidden_layers": hidden_layers, "shard_size": shard_size, "sample_rate": teacher.sample_rate}
    if utterance_filter is None and not teacher.has_posteriors:
        utterance_filter = getattr(teacher, "utterance_filter", None)
    if utterance_filter is not None:  # only then, so that caches built without one keep their request
        if teacher.has_posteriors:
            raise CacheError("utterance_filter applies to sequence teachers (text out); a CTC teacher's "
                             "pseudo-labels are filtered at training time (kd.pseudo_label)")
        settings["utterance_filter"] = utterance_filter.describe()
    request = {"format": FORMAT, "version": VERSION, "teacher": teacher.describe(), "settings": settings,
               "entries_sha256": _sha256([[u.utt_id, entries[u.utt_id]] for u in utts])}

    if rank == 0:
        _prepare_folder(out, request, entries, force)
        if not (out / REQUEST_FILE).exists():
            out.mkdir(parents=True, exist_ok=True)
            (out / "shards").mkdir(exist_ok=True)
            atomic_write_text(out / ENTRIES_FILE, "".join(
                json.dumps({"utt_id": u.utt_id, **entries[u.utt_id]}, ensure_ascii=False) + "\n" for u in utts))
            atomic_write_text(out / REQUEST_FILE, json.dumps(request, indent=1) + "\n")
    _barrier(world)
    if rank != 0 and json.loads((out / REQUEST_FILE).read_text()) != request:
        raise CacheError(f"{out}: rank {rank} sees another request than rank 0 (different manifests?)")

    n_shards = max(1, math.ceil(len(utts) / shard_size))
    report = BuildReport(out, n_shards, [], [])
    teacher_sha = _sha256(request["teacher"])
    names = _array_names(teacher.has_posteriors, hidden_layers)
    mine = [i for i in range(n_shards) if i % world == rank]
    bar = progress_bar(len(mine), unit="shard", desc="cache build", enabled=progress and rank == 0)
    for i in mine:
        shard_utts = utts[i * shard_size : (i + 1) * shard_size]
        key = _sha256([teacher_sha, settings, [[u.utt_id, entries[u.utt_id]] for u in shard_utts]])
        folder = out / "shards" / f"{i:05d}"
        if _finished_shard(folder, key, names):
            report.skipped.append(i)
        else:
            _build_shard(teacher, shard_utts, folder, key, settings, max_batch_seconds, utterance_filter)
            report.built.append(i)
        bar.update(1)
    bar.close()
    _barrier(world)
    if rank == 0:
        _write_index(out, request, utts, n_shards, teacher, report)
    report.seconds = time.perf_counter() - t0
    return report


# What a build writes at the top of its folder (atomic_write_text's temporaries start with ".").
_CACHE_NAMES = {REQUEST_FILE, ENTRIES_FILE, INDEX_FILE, DROPS_FILE, "shards"}


def _is_unfinished_start(out: Path) -> bool:
    """True for the folder of a build killed before it wrote its request: nothing but the names a
    build writes first (``shards/`` still empty, ``entries.jsonl``, temporaries)."""
    names = [p.name for p in out.iterdir()]
    shards = out / "shards"
    return (all(n in _CACHE_NAMES or (n.startswith(".") and n.endswith(".tmp")) for n in names)
            and not (shards.is_dir() and any(shards.iterdir())))


def _array_names(has_posteriors: bool, hidden_layers: Sequence[int]) -> list[str]:
    """The arrays every shard holds: top-k posteriors (CTC teachers) and asked-for hidden states."""
    return [*(_ARRAYS if has_posteriors else ()), *(f"hidden_{layer}" for layer in hidden_layers)]


def shard_problem(folder: Path, frames: int, names: Sequence[str]) -> str | None:
    """Why the shard ``folder`` cannot be read (meta.json or an array missing, an array truncated
    or holding another number of frames than ``frames``), naming the file; None if it can."""
    if not (folder / "meta.json").is_file():
        return f"{folder / 'meta.json'}: missing"
    for name in names:
        path = folder / f"{name}.npy"
        try:
            n = np.load(path, mmap_mode="r").shape[0]  # reads the header; mapping fails when truncated
        except (OSError, ValueError) as e:
            return f"{path}: missing or truncated ({e})"
        if n != frames:
            return f"{path}: {n} frames, the shard has {frames}"
    return None


def _finished_shard(folder: Path, key: str, names: Sequence[str]) -> bool:
    """A shard a resumed build can keep: built for ``key``, and every array whole."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or cut short by a kill or a full disk
        return False
    return meta.get("key") == key and shard_problem(folder, sum(meta["lengths"]), names) is None


def _prepare_folder(out: Path, request: dict, entries: dict, force: bool) -> None:
    """Refuse (or with ``force`` clear) a cache folder that holds another build; keep a matching
    one. ``force`` replaces only an asrkd cache (its ``request.json`` says so): any other
    non-empty folder, e.g. one holding the user's audio and manifests, is refused untouched."""
    if out.exists() and not out.is_dir():
        raise CacheError(f"{out}: exists and is not a folder; choose a new or empty folder for the cache")
    req = out / REQUEST_FILE
    if not req.exists():
        if out.exists() and any(out.iterdir()) and not _is_unfinished_start(out):
            raise CacheError(f"{out}: exists, is not empty and is not a posterior cache (no {REQUEST_FILE}); "
                             "--force replaces only a cache folder: choose a new or empty folder")
        return
    try:
        old = json.loads(req.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheError(f"{req}: not a posterior cache's request ({e}); choose a new or empty folder") from None
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise CacheError(f"{req}: not a posterior cache's request (no \"format\": \"{FORMAT}\"); --force "
                         "replaces only a cache folder: choose a new or empty folder")
    changes = []
    if (old.get("format"), old.get("version")) != (FORMAT, VERSION):
        changes.append(f"cache format {old.get('format')} v{old.get('version')} → {FORMAT} v{VERSION}")
    changes += diff_teacher(old.get("teacher", {}), request["teacher"])
    changes += _diff_settings(old.get("settings", {}), request["settings"])
    if old.get("entries_sha256") != request["entries_sha256"]:
        _, old_entries = _read_entries(out)
        changes += diff_entries(old_entries, entries) or ["manifest order changed"]
    if not changes:
        return
    if not force:
        raise StaleCacheError(out, changes, "pass --force (build_cache(force=True)) to rebuild it from scratch, "
                                            "or choose another folder")
    shutil.rmtree(out)


def _sequence_results(teacher, batch: dict, layers: list[int], utterance_filter) -> list[dict[str, Any]]:
    """A sequence teacher's record of each utterance of ``batch``: N-best, confidence, extras, its
    encoder states and, with ``utterance_filter``, why it was dropped (N-best emptied)."""
    out = teacher.sequence_outputs(batch["wavs"], batch["wav_lens"], return_hidden=bool(layers))
    if layers and max(layers) >= len(out.hidden):
        raise CacheError(f"hidden layer {max(layers)} asked for, the teacher has {len(out.hidden)} layers (0-based)")
    records = []
    for b, seq in enumerate(out.outputs):
        drop = None if utterance_filter is None else utterance_filter(seq, int(batch["wav_lens"][b]))
        n = int(out.lengths[b]) if layers else 0
        record = {
            "nbest": [] if drop else [{"text": h.text, "ids": [], "score": h.score} for h in seq.nbest],
            "confidence": seq.confidence, "length": n, "sequence": seq.extras(),
            **{f"hidden_{layer}": out.hidden[layer][b, :n].float().numpy().astype(np.float16) for layer in layers},
        }
        if drop is not None:
            record["drop"] = {"reason": drop.reason, "detail": drop.detail}
        records.append(record)
    return records


@torch.no_grad()
def _build_shard(teacher, utts: list[Utterance], folder: Path, key: str, settings: dict,
                 max_batch_seconds: float, utterance_filter=None) -> None:
    """Compute one shard and move it into place atomically."""
    dataset = AudioDataset(utts, sample_rate=settings["sample_rate"])
    sampler = BucketingBatchSampler([u.duration for u in utts], max_batch_seconds=max_batch_seconds,
                                    shuffle=False)
    per_utt: dict[int, dict[str, Any]] = {}
    layers = settings["hidden_layers"]
    for indices in sampler:
        batch = collate([dataset[i] for i in indices])
        if not teacher.has_posteriors:
            per_utt.update(zip(indices, _sequence_results(teacher, batch, layers, utterance_filter), strict=True))
            continue
        out = teacher(batch["wavs"], batch["wav_lens"], return_hidden=bool(layers))
        if layers and (out.hidden is None or max(layers) >= len(out.hidden)):
            have = 0 if out.hidden is None else len(out.hidden)
            raise CacheError(f"hidden layer {max(layers)} asked for, the teacher has {have} layers (0-based)")
        targets = top_k_posteriors(out.log_probs, out.lengths, settings["top_k"])
        for b, i in enumerate(indices):
            n = int(out.lengths[b])
            lp = out.log_probs[b, :n]
            hyps = prefix_beam_search(lp, beam=settings["beam"], nbest=settings["nbest"], blank=teacher.blank_id)
            per_utt[i] = {
                "topk_logp": targets.topk_logp[b, :n].numpy().astype(np.float16),
                "topk_ids": targets.topk_ids[b, :n].numpy().astype(np.uint16),
                "residual": targets.residual[b, :n].numpy().astype(np.float16),
                **{f"hidden_{layer}": out.hidden[layer][b, :n].float().numpy().astype(np.float16)
                   for layer in layers},
                "nbest": [{"text": teacher.decode(ids), "ids": ids, "score": score} for ids, score in hyps],
                "confidence": utterance_confidence(lp, n, blank=teacher.blank_id),
                "length": n,
            }
    order = range(len(utts))
    lengths = [per_utt[i]["length"] for i in order]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist() if lengths else []
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    names = _array_names(teacher.has_posteriors, layers)
    for name in names:
        np.save(tmp / f"{name}.npy", np.concatenate([per_utt[i][name] for i in order]))
    meta = {"key": key, "utt_ids": [u.utt_id for u in utts], "offsets": offsets, "lengths": lengths,
            "nbest": [per_utt[i]["nbest"] for i in order], "confidence": [per_utt[i]["confidence"] for i in order]}
    # Added only when present, so that caches of teachers without them stay byte-identical.
    if any(per_utt[i].get("sequence") for i in order):
        meta["sequence"] = [per_utt[i]["sequence"] for i in order]
    if "utterance_filter" in settings:
        meta["drops"] = {utts[i].utt_id: per_utt[i]["drop"] for i in order if "drop" in per_utt[i]}
    (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _teacher_text(meta: dict, utt_id: str) -> str | None:
    """The teacher's own (unnormalised) text of ``utt_id`` in a shard's meta, if recorded."""
    if "sequence" not in meta:
        return None
    return meta["sequence"][meta["utt_ids"].index(utt_id)].get("teacher_text")


def _write_index(out: Path, request: dict, utts: list[Utterance], n_shards: int, teacher,
                 report: BuildReport) -> None:
    index: dict[str, list[int]] = {}
    frames = 0
    array_bytes = hidden_bytes = 0
    drops: list[dict] = []
    for i in range(n_shards):
        folder = out / "shards" / f"{i:05d}"
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise CacheError(f"{folder}: shard missing after the build; rerun the same command to finish it")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        for utt_id, off, n in zip(meta["utt_ids"], meta["offsets"], meta["lengths"], strict=True):
            index[utt_id] = [i, off, n]
        frames += sum(meta["lengths"])
        drops += [{"utt_id": u, **d, "teacher_text": _teacher_text(meta, u)} for u, d in meta.get("drops", {}).items()]
        for f in folder.glob("*.npy"):
            size = np.load(f, mmap_mode="r").nbytes
            if f.name.startswith("hidden_"):
                hidden_bytes += size
            else:
                array_bytes += size
    missing = [u.utt_id for u in utts if u.utt_id not in index]
    if missing:
        raise CacheError(f"{out}: {len(missing)} utterance(s) missing from the shards, e.g. {missing[:3]}")
    vocab = list(teacher.vocabulary) if teacher.has_posteriors else []
    report.utterances = len(utts)
    report.frames = frames
    report.bytes_per_frame = array_bytes / frames if frames else 0.0
    report.dense_fp32_bytes_per_frame = 4.0 * len(vocab)
    report.hidden_bytes_per_frame = hidden_bytes / frames if frames else 0.0
    seconds = sum(u.duration for u in utts)
    report.hidden_bytes_per_second = hidden_bytes / seconds if seconds else 0.0
    report.drops = {}
    for d in drops:
        report.drops[d["reason"]] = report.drops.get(d["reason"], 0) + 1
    summary = {
        "format": FORMAT, "version": VERSION, "request": request,
        "vocabulary": vocab, "blank_id": int(teacher.blank_id), "frame_shift": float(teacher.frame_shift),
        "has_posteriors": bool(teacher.has_posteriors),
        "hidden_sizes": {str(layer): int(teacher.hidden_size() or 0) for layer in request["settings"]["hidden_layers"]},
        "shards": n_shards, "frames": frames, "bytes_per_frame": report.bytes_per_frame,
        "dense_fp32_bytes_per_frame": report.dense_fp32_bytes_per_frame,
        "hidden_bytes_per_frame": report.hidden_bytes_per_frame,
        "index": index,
    }
    if "utterance_filter" in request["settings"]:
        summary["drops"] = dict(sorted(report.drops.items()))
        atomic_write_text(out / DROPS_FILE, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in drops))
    atomic_write_text(out / INDEX_FILE, json.dumps(summary, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass
class CachedHypothesis:
    """One of the teacher's N-best hypotheses of an utterance, as the cache stores it."""

    text: str
    ids: list[int]  # teacher token ids
    score: float  # total log-probability (prefix beam search)


class PosteriorCache:
    """A finished cache folder, memory-mapped.

    ``vocabulary``, ``blank_id``, ``frame_shift`` and ``sample_rate`` are the teacher's, as built;
    ``targets`` gives a padded batch ``[B, T, top_k]`` of them.

    >>> cache = PosteriorCache("runs/fsdd/kd_cache")              # doctest: +SKIP
    >>> cache.check(read_manifest("train.jsonl"))                # raises StaleCacheError if stale
    >>> targets = cache.targets(["utt1", "utt2"])                # TeacherTargets, padded
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        path = self.folder / INDEX_FILE
        if not path.is_file():
            if (self.folder / REQUEST_FILE).is_file():
                raise CacheError(f"{self.folder}: unfinished cache build (no {INDEX_FILE}); rerun the same "
                                 "`asrkd cache build` command to finish it")
            raise CacheError(f"{self.folder}: not a posterior cache (no {INDEX_FILE}); build one with `asrkd cache build`")
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("format") != FORMAT or info.get("version", 0) > VERSION:
            raise CacheError(f"{path}: format {info.get('format')} v{info.get('version')} is not {FORMAT} v{VERSION}")
        self.info = info
        self.vocabulary: list[str] = info["vocabulary"]
        self.blank_id: int = info["blank_id"]
        self.frame_shift: float = info["frame_shift"]
        self.sample_rate: int = info["request"]["settings"]["sample_rate"]
        self.has_posteriors: bool = info["has_posteriors"]
        self.top_k: int = info["request"]["settings"]["top_k"]
        self.hidden_layers: list[int] = info["request"]["settings"]["hidden_layers"]
        self.hidden_sizes = {int(k): v for k, v in info["hidden_sizes"].items()}
        self.teacher: dict = info["request"]["teacher"]
        self.teacher_checked = False  # set by `check` when it compared the cache with a teacher
        self._index: dict[str, list[int]] = info["index"]
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._meta: dict[int, dict] = {}
        self._check_shards()

    def _check_shards(self) -> None:
        """Raise `CacheError` naming the first shard file that is missing or truncated, now
        rather than at the training step that would read it."""
        frames = [0] * self.info["shards"]
        for shard, _, n in self._index.values():
            frames[shard] += n
        names = _array_names(self.has_posteriors, self.hidden_layers)
        for shard, n in enumerate(frames):
            problem = shard_problem(self.folder / "shards" / f"{shard:05d}", n, names)
            if problem:
                raise CacheError(f"{problem}; rerun the `asrkd cache build` command that made {self.folder} "
                                 "to rebuild the damaged shard")

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._index

    def check(self, utts: Sequence[Utterance], teacher=None) -> None:
        """Raise `StaleCacheError` unless every utterance is in the cache with the same path,
        duration, offset and text (a line without text, in the run or in the cache, matches any:
        `diff_entries`) and,
        given ``teacher``, the teacher is the one it was built with."""
        changes = diff_teacher(self.teacher, teacher.describe()) if teacher is not None else []
        self.teacher_checked = teacher is not None
        new = {u.utt_id: entry_of(u) for u in utts}
        _, old = _read_entries(self.folder)
        changes += diff_entries(old, new, missing_ok=True, unlabelled_ok=True)
        if changes:
            raise StaleCacheError(self.folder, changes, "rebuild it: asrkd cache build --teacher ... --manifest ... "
                                                        f"--out {self.folder} --force")

    def teacher_identity(self) -> str:
        """Which teacher built the cache, in words: its kind, weights and vocabulary hashes (the
        parts of ``request.json``'s teacher that a person can compare)."""
        t = self.teacher
        parts = [f"weights sha256 {str(t['weights'])[:12]}"] if t.get("weights") else []
        if self.has_posteriors:
            parts.append(f"{len(self.vocabulary)} tokens, vocabulary sha256 {vocabulary_sha256(self.vocabulary)[:12]}")
        return f"a {t.get('kind', 'unknown')} teacher" + (f" ({', '.join(parts)})" if parts else "")

    def _shard(self, shard: int) -> dict[str, np.ndarray]:
        if shard not in self._arrays:
            folder = self.folder / "shards" / f"{shard:05d}"
            self._arrays[shard] = {f.stem: np.load(f, mmap_mode="r") for f in folder.glob("*.npy")}
        return self._arrays[shard]

    def _shard_meta(self, shard: int) -> dict:
        if shard not in self._meta:
            path = self.folder / "shards" / f"{shard:05d}" / "meta.json"
            meta = json.loads(path.read_text(encoding="utf-8"))
            meta["position"] = {u: j for j, u in enumerate(meta["utt_ids"])}
            self._meta[shard] = meta
        return self._meta[shard]

    def _locate(self, utt_id: str) -> list[int]:
        try:
            return self._index[utt_id]
        except KeyError:
            raise CacheError(f"{self.folder}: utterance {utt_id!r} is not in the cache") from None

    def nbest(self, utt_id: str) -> list[CachedHypothesis]:
        """The teacher's N-best hypotheses of ``utt_id``, best first."""
        shard = self._locate(utt_id)[0]
        meta = self._shard_meta(shard)
        return [CachedHypothesis(**h) for h in meta["nbest"][meta["position"][utt_id]]]

    def confidence(self, utt_id: str) -> float | None:
        """The teacher's confidence in ``utt_id`` (`asrkd.decoding.utterance_confidence`; a
        text-only teacher's own score or None)."""
        shard = self._locate(utt_id)[0]
        meta = self._shard_meta(shard)
        return meta["confidence"][meta["position"][utt_id]]

    def sequence(self, utt_id: str) -> dict[str, Any]:
        """A sequence teacher's extras for ``utt_id``: ``no_speech_prob``, ``words``,
        ``teacher_text``, ``reason`` (those it gave; `asrkd.teachers.SequenceOutput`)."""
        shard = self._locate(utt_id)[0]
        meta = self._shard_meta(shard)
        return meta["sequence"][meta["position"][utt_id]] if "sequence" in meta else {}

    def drop(self, utt_id: str) -> dict[str, str] | None:
        """``{"reason", "detail"}`` when the build's utterance filter dropped ``utt_id``, else None."""
        shard = self._locate(utt_id)[0]
        return self._shard_meta(shard).get("drops", {}).get(utt_id)

    def drops(self) -> dict[str, int]:
        """How many utterances the build's utterance filter dropped, per reason (``cache.json``)."""
        return dict(self.info.get("drops", {}))

    def utterance(self, utt_id: str, name: str = "topk_logp") -> np.ndarray:
        """One array of one utterance, memory-mapped: topk_logp / topk_ids / residual / hidden_<L>."""
        shard, off, n = self._locate(utt_id)
        arrays = self._shard(shard)
        if name not in arrays:
            raise CacheError(f"{self.folder}: no {name!r} in the cache (have {sorted(arrays)})")
        return arrays[name][off : off + n]

    def targets(self, utt_ids: Sequence[str], hidden_layers: Sequence[int] = (),
                device: torch.device | str = "cpu") -> TeacherTargets:
        """Padded `TeacherTargets` (float32, teacher token ids) for a batch of utterances. A
        sequence teacher's cache gives only ``hidden`` (and ``lengths``); its top-k arrays have K = 0."""
        if not self.has_posteriors and not hidden_layers:
            raise CacheError(f"{self.folder}: built from a text-only teacher; it holds no posteriors")
        missing = [layer for layer in hidden_layers if layer not in self.hidden_layers]
        if missing:
            raise CacheError(f"{self.folder}: teacher hidden layer(s) {missing} not cached (cached: "
                             f"{self.hidden_layers}); rebuild with --hidden-layers, or use kd.teacher_mode: online")
        locs = [self._locate(u) for u in utt_ids]
        b, t, k = len(locs), max(n for _, _, n in locs), self.top_k
        logp = torch.full((b, t, k), -math.inf)
        ids = torch.full((b, t, k), -1, dtype=torch.long)
        residual = torch.full((b, t), -math.inf)
        hidden = {layer: torch.zeros(b, t, self.hidden_sizes[layer]) for layer in hidden_layers}
        for row, (shard, off, n) in enumerate(locs):
            a = self._shard(shard)
            for layer in hidden_layers:
                hidden[layer][row, :n] = torch.from_numpy(
                    np.asarray(a[f"hidden_{layer}"][off : off + n], dtype=np.float32))
            if not self.has_posteriors:
                continue
            logp[row, :n] = torch.from_numpy(np.asarray(a["topk_logp"][off : off + n], dtype=np.float32))
            ids[row, :n] = torch.from_numpy(np.asarray(a["topk_ids"][off : off + n], dtype=np.int64))
            residual[row, :n] = torch.from_numpy(np.asarray(a["residual"][off : off + n], dtype=np.float32))
        lengths = torch.tensor([n for _, _, n in locs], dtype=torch.long)
        out = TeacherTargets(logp, ids, residual, lengths, hidden)
        if str(device) != "cpu":
            out = TeacherTargets(logp.to(device), ids.to(device), residual.to(device), lengths.to(device),
                                 {k_: v.to(device) for k_, v in hidden.items()})
        return out


class CacheSet(PosteriorCache):
    """Several caches of one teacher read as one (``kd.cache: [A, B]``): one cache per corpus,
    built when its audio arrived, instead of one rebuilt from scratch for every new corpus.

    The caches must have been built by the same teacher with the same settings (top-k, N-best,
    hidden layers, utterance filter), and no utterance id may be in two of them. Every reading
    method of `PosteriorCache` works across them: a batch may mix utterances of several caches.

    >>> caches = CacheSet(["runs/whisper_cache", "runs/whisper_cache_new_audio"])  # doctest: +SKIP
    """

    def __init__(self, folders: Sequence[str | os.PathLike]):
        if not folders:
            raise CacheError("kd.cache: an empty list; give one posterior cache folder or several")
        self.parts = [PosteriorCache(f) for f in folders]
        first = self.parts[0]
        for part in self.parts[1:]:
            changes = diff_teacher(first.teacher, part.teacher) + _diff_settings(
                first.info["request"]["settings"], part.info["request"]["settings"])
            if changes:
                raise CacheError(f"{part.folder}: built by another teacher or with other settings than {first.folder} "
                                 f"({'; '.join(changes)}); the caches of one run must come from one teacher")
        self.folder = " + ".join(str(p.folder) for p in self.parts)  # for messages
        self.info = first.info
        for name in ("vocabulary", "blank_id", "frame_shift", "sample_rate", "has_posteriors", "top_k",
                     "hidden_layers", "hidden_sizes", "teacher"):
            setattr(self, name, getattr(first, name))
        self.teacher_checked = False
        # Shards are numbered across the caches: shard g is shard `_owner[g][1]` of `_owner[g][0]`.
        self._owner: list[tuple[PosteriorCache, int]] = []
        self._index = {}
        for part in self.parts:
            base = len(self._owner)
            self._owner += [(part, s) for s in range(part.info["shards"])]
            for utt_id, (shard, offset, frames) in part._index.items():
                if utt_id in self._index:
                    other = self._owner[self._index[utt_id][0]][0]
                    raise CacheError(f"utterance id {utt_id!r} is in both {other.folder} and {part.folder}; "
                                     "give each utterance to one cache (kd.cache)")
                self._index[utt_id] = [base + shard, offset, frames]

    def _shard(self, shard: int) -> dict[str, np.ndarray]:
        part, local = self._owner[shard]
        return part._shard(local)

    def _shard_meta(self, shard: int) -> dict:
        part, local = self._owner[shard]
        return part._shard_meta(local)

    def check(self, utts: Sequence[Utterance], teacher=None) -> None:
        """`PosteriorCache.check` of each cache on the utterances it holds; the error names the
        cache that is stale. Utterances in none of them are left to the read that needs them, as
        for one cache."""
        for part in self.parts:
            part.check([u for u in utts if u.utt_id in part], teacher=teacher)
        self.teacher_checked = teacher is not None

    def drops(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for part in self.parts:
            for reason, n in part.drops().items():
                total[reason] = total.get(reason, 0) + n
        return total


def open_cache(folders: str | os.PathLike | Sequence[str | os.PathLike]) -> PosteriorCache:
    """``kd.cache``'s value read: one cache folder, or a list of them (`CacheSet`)."""
    if isinstance(folders, str | os.PathLike):
        return PosteriorCache(folders)
    return CacheSet(folders) if len(folders) != 1 else PosteriorCache(folders[0])
