"""First-partial latency, final latency and RTF of a full-context checkpoint on one thread, on the
clock `asrkd eval --chunk-size` uses for a streaming one (eval.latency), so that the two sit in
one table (run_streaming.sh stage 7).

    python recipes/fsdd/local/offline_latency.py CKPT --manifest M [--json OUT]

A full-context model decodes when the utterance has ended: `OfflineStepper` keeps the audio as it
arrives and runs the front end and the model on all of it in ``finish``, so its first partial is
its final text (first-partial latency = the speech from its onset to the end + the compute;
final latency = the compute).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from asrkd.checkpoint import LoadedModel, load_checkpoint, resolve_checkpoint
from asrkd.contract import Contract
from asrkd.decoding import greedy_decode
from asrkd.fileio import atomic_write_text
from asrkd.inference import log_posteriors
from eval.latency import manifest_waves, measure_latency

# Samples per step() call: the audio's delivery size only (steps keep it; the compute is in finish).
DELIVERY_FRAMES = 8  # output frames: 320 ms, the streaming student's chunk


class OfflineStepper:
    """A full-context checkpoint as an `eval.latency.ChunkStepper`: ``step`` keeps the samples,
    ``finish`` decodes the whole utterance (greedy CTC) and returns all its token ids."""

    def __init__(self, loaded: LoadedModel):
        self.model, self.frontend = loaded.model.eval(), loaded.frontend
        self.contract = Contract.from_loaded(loaded)
        self.chunk_samples = DELIVERY_FRAMES * self.contract.output_frame_shift_samples
        self.reset()

    def reset(self) -> None:
        self.pieces: list[np.ndarray] = []

    def step(self, pcm: np.ndarray) -> list[int]:
        self.pieces.append(np.asarray(pcm, dtype=np.float32))
        return []

    @torch.no_grad()
    def finish(self) -> list[int]:
        wav = torch.from_numpy(np.concatenate(self.pieces))[None]  # [1, N]
        log_probs, out_lens = log_posteriors(self.model, self.frontend, wav, torch.tensor([wav.size(1)]))
        return greedy_decode(log_probs, out_lens, blank=self.contract.blank_id)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder or run folder (its best checkpoint)")
    parser.add_argument("--manifest", required=True, help="the utterances to measure on")
    parser.add_argument("--json", help="write LatencyStats.to_dict() here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stepper = OfflineStepper(load_checkpoint(resolve_checkpoint(args.checkpoint)))
    stats = measure_latency(stepper, manifest_waves(args.manifest, stepper.contract.sample_rate),
                            stepper.contract.sample_rate)
    print(f"latency (full context): {stats.summary_line()}")
    if args.json:
        atomic_write_text(args.json, json.dumps(stats.to_dict(), indent=2) + "\n")


if __name__ == "__main__":
    main()
