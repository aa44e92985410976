"""Data: manifests in, padded waveform batches out, with augmentation on the way.

One module per job:

* `asrkd.data.manifest` — `Utterance`, `read_manifest`, `write_manifest` (NeMo-style JSONL)
* `asrkd.data.check` — `check_manifest`: every problem of every line (`asrkd manifest check`)
* `asrkd.data.sources` — `read_source`, `check_source`: a manifest, a Lhotse corpus
  (`asrkd.data.from_lhotse`) or a Hugging Face dataset (`asrkd.data.from_hf`), from local disk
* `asrkd.data.dataset` — `AudioDataset` (utterances -> waveforms, tokens) and `collate`
* `asrkd.data.sampler` — `BucketingBatchSampler` (similar lengths, seeded, resumable, DDP-aware)
* `asrkd.data.augment` — waveform transforms and `SpecAugment`

One batch, start to finish::

    utts = read_manifest("train.jsonl")
    ds = AudioDataset(utts, tokenizer=tok, transform=Compose([SpeedPerturb(), AddNoise()]))
    sampler = BucketingBatchSampler([u.duration for u in utts], max_batch_seconds=200, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    for epoch in range(n):
        sampler.set_epoch(epoch); ds.set_epoch(epoch)  # same seed + epoch -> same batches, same augmentation
        for batch in loader: ...
"""

from asrkd.data.augment import (
    AddNoise,
    BandLimit,
    BreathNoise,
    Compose,
    Gain,
    SpecAugment,
    SpeedPerturb,
    Transform,
)
from asrkd.data.check import Problem, check_manifest
from asrkd.data.dataset import AudioDataset, collate
from asrkd.data.manifest import (
    EncodedAudio,
    ManifestError,
    Utterance,
    is_source_spec,
    read_manifest,
    write_manifest,
)
from asrkd.data.sampler import BucketingBatchSampler, ResumeError
from asrkd.data.sources import (
    DataSource,
    SourceError,
    SourceItem,
    check_source,
    iter_source,
    read_source,
)

__all__ = [
    "AddNoise",
    "AudioDataset",
    "BandLimit",
    "BreathNoise",
    "BucketingBatchSampler",
    "Compose",
    "DataSource",
    "EncodedAudio",
    "Gain",
    "ManifestError",
    "Problem",
    "ResumeError",
    "SourceError",
    "SourceItem",
    "SpecAugment",
    "SpeedPerturb",
    "Transform",
    "Utterance",
    "check_manifest",
    "check_source",
    "collate",
    "is_source_spec",
    "iter_source",
    "read_manifest",
    "read_source",
    "write_manifest",
]
