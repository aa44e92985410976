"""Lhotse corpora as utterances: a CutSet, or recordings with supervisions (extra ``lhotse``).

Each item maps onto an `Utterance` over its recording's audio file, which is read in place
(nothing is copied or decoded here; `AudioDataset` reads the segment when it needs it):

==============  ===================================================================
Lhotse          Utterance
==============  ===================================================================
cut             audio_filepath = the recording's file, offset = cut.start,
                duration = cut.duration, text = its supervisions' texts in time
                order (None without supervisions or texts), speaker = theirs when
                they agree, utt_id = cut.id
supervision     the same over its recording: offset = start, utt_id = supervision id
recording       the whole file, unlabelled (for distillation), utt_id = recording id
==============  ===================================================================

JSONL manifests (``.jsonl``, ``.jsonl.gz``) are read lazily, one item at a time; a supervision
manifest needs its recordings indexed by id, so those are held in memory. Relative audio paths
start from the current folder, as in Lhotse.

Items asrkd cannot read in place are reported (kind `unsupported`) rather than silently
changed: audio that is not a local file (URL, command, in-memory or Shar sources), recordings
with transforms (speed or volume perturbation, resampling: asrkd augments and resamples itself,
see ``augment.*``), a channel subset of a multi-channel recording (asrkd averages every channel
of a file), and mixed or padding cuts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from asrkd.data.manifest import ManifestError, Utterance
from asrkd.data.sources import SourceItem

__all__ = ["lhotse_items"]


class _Unsupported(Exception):
    """An item asrkd cannot read in place; the message says why and what to do."""


def lhotse_items(location: Any, supervisions: str | os.PathLike | None = None) -> Iterator[SourceItem]:
    """The items of a Lhotse manifest path (cuts, recordings) or a `CutSet` / `RecordingSet` object;
    with ``supervisions`` (a path), one item per supervision over ``location``'s recordings.

    Raises:
        ManifestError: lhotse is not installed, a manifest is missing, empty or of another kind.
    """
    lhotse = _lhotse()
    manifest = _load(lhotse, location)
    if supervisions is not None:
        if not isinstance(manifest, lhotse.RecordingSet):
            raise ManifestError(f"{location}: supervisions go with a recordings manifest, "
                                f"this is a {type(manifest).__name__}")
        recordings = {r.id: r for r in _each(manifest, location)}
        return _supervision_items(recordings, _each(_load(lhotse, supervisions), supervisions))
    if isinstance(manifest, lhotse.CutSet):
        return (_cut_item(n, cut) for n, cut in enumerate(_each(manifest, location), 1))
    if isinstance(manifest, lhotse.RecordingSet):
        return (_recording_item(n, rec) for n, rec in enumerate(_each(manifest, location), 1))
    raise ManifestError(f"{location}: a {type(manifest).__name__} alone has no audio; give cuts, or "
                        "{lhotse: RECORDINGS, supervisions: SUPERVISIONS}")


def _lhotse():
    try:
        import lhotse
    except ImportError:
        raise ManifestError("reading Lhotse manifests needs lhotse: pip install 'asrkd[lhotse]'") from None
    return lhotse


def _load(lhotse, location: Any):
    """A manifest path -> a lazy manifest (JSONL) or a loaded one; an object as it is."""
    if not isinstance(location, str | os.PathLike):
        return location
    path = Path(location)
    if not path.is_file():
        raise ManifestError(f"{path}: no such Lhotse manifest")
    try:
        if ".jsonl" in path.suffixes:
            manifest = lhotse.load_manifest_lazy(path)
        else:
            manifest = lhotse.load_manifest(path)
    except Exception as e:  # lhotse raises whatever its parsers raise
        raise ManifestError(f"{path}: not a Lhotse manifest ({type(e).__name__}: {e})") from None
    if manifest is None:
        raise ManifestError(f"{path}: empty Lhotse manifest")
    return manifest


def _each(manifest, location: Any) -> Iterator:
    """Iterate a (lazy) manifest; a line its parser rejects stops with the file's name."""
    iterator = iter(manifest)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except Exception as e:  # a lazy manifest parses each line as it comes
            raise ManifestError(f"{location}: unreadable Lhotse manifest ({type(e).__name__}: {e})") from None


def _cut_item(number: int, cut) -> SourceItem:
    name = f"cut {cut.id!r}"
    recording = getattr(cut, "recording", None)
    if recording is None:
        return _unsupported(number, name, f"a {type(cut).__name__} has no single recording to read in "
                            "place; mix or pad the audio into recordings first (CutSet.save_audios)")
    try:
        audio = _file_of(recording, cut.channel)
    except _Unsupported as e:
        return _unsupported(number, name, str(e))
    sups = sorted(cut.supervisions, key=lambda s: s.start)
    texts = [s.text for s in sups if s.text is not None]
    speakers = {s.speaker for s in sups}
    speaker = speakers.pop() if len(speakers) == 1 else None
    return _item(number, name, audio, " ".join(texts) if texts else None, cut.duration, speaker,
                 cut.start, cut.id)


def _supervision_items(recordings: dict, supervisions: Iterable) -> Iterator[SourceItem]:
    for number, sup in enumerate(supervisions, 1):
        name = f"supervision {sup.id!r}"
        recording = recordings.get(sup.recording_id)
        if recording is None:
            yield SourceItem(number, name, problem=(
                "missing_audio", f"recording {sup.recording_id!r} is not in the recordings manifest"))
            continue
        try:
            audio = _file_of(recording, sup.channel)
        except _Unsupported as e:
            yield _unsupported(number, name, str(e))
            continue
        yield _item(number, name, audio, sup.text, sup.duration, sup.speaker, sup.start, sup.id)


def _recording_item(number: int, recording) -> SourceItem:
    name = f"recording {recording.id!r}"
    try:
        audio = _file_of(recording, recording.channel_ids)
    except _Unsupported as e:
        return _unsupported(number, name, str(e))
    return _item(number, name, audio, None, recording.duration, None, 0.0, recording.id)


def _item(number: int, name: str, audio: str, text, duration: float, speaker, offset: float,
          utt_id: str) -> SourceItem:
    if not duration > 0:
        return SourceItem(number, name, problem=("bad_field", f"duration is {duration}; expected > 0 seconds"))
    if offset < 0:
        return SourceItem(number, name, problem=("bad_field", f"start is {offset}; expected >= 0 seconds"))
    speaker = None if speaker is None else str(speaker)
    return SourceItem(number, name, Utterance(audio, text, float(duration), speaker, float(offset), str(utt_id)))


def _unsupported(number: int, name: str, why: str) -> SourceItem:
    return SourceItem(number, name, problem=("unsupported", why))


def _file_of(recording, channel) -> str:
    """The local file holding ``recording`` when asrkd can read ``channel`` of it in place."""
    if recording.transforms:
        kinds = [t.get("name", "?") if isinstance(t, dict) else type(t).__name__ for t in recording.transforms]
        raise _Unsupported(f"recording {recording.id!r} has transforms {kinds}; asrkd reads audio as stored "
                           "(augment.* perturbs it, the front end's sample rate resamples it): drop them")
    if len(recording.sources) != 1:
        raise _Unsupported(f"recording {recording.id!r} has {len(recording.sources)} audio sources (one file "
                           "per channel); asrkd reads one file per utterance")
    source = recording.sources[0]
    if source.type != "file":
        raise _Unsupported(f"recording {recording.id!r} is a {source.type!r} source; asrkd reads local "
                           "audio files only: save the audio to files (CutSet.save_audios)")
    wanted = {channel} if isinstance(channel, int) else set(channel)
    if wanted != set(recording.channel_ids):
        raise _Unsupported(f"reads channel(s) {sorted(wanted)} of a recording with channels "
                           f"{recording.channel_ids}; asrkd averages every channel of a file: save "
                           "the channel to a file of its own")
    return os.path.abspath(source.source)
