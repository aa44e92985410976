"""A copy of a streaming checkpoint whose config states another chunking, for `asrkd export`, which
makes the streaming artifacts at the checkpoint's own chunk size and left context.

    python recipes/fsdd/local/rechunk.py CKPT OUT --chunk-size 3 --left-chunks 21

The weights are the same (a dynamic-chunk student serves any chunk size); only the model config's
``chunk_size`` / ``left_chunks`` change, which `asrkd eval` and `StreamingTranscriber` also take
as their default. run_streaming.sh stage 8 uses it for the 120 ms artifact.
"""

from __future__ import annotations

import argparse
import dataclasses

from asrkd.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from asrkd.models.conformer import ConformerCTC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="streaming checkpoint folder or run folder (its best checkpoint)")
    parser.add_argument("out", help="checkpoint folder to write")
    parser.add_argument("--chunk-size", type=int, required=True, help="encoder frames per chunk")
    parser.add_argument("--left-chunks", type=int, required=True, help="chunks of left context")
    args = parser.parse_args()
    loaded = load_checkpoint(resolve_checkpoint(args.checkpoint))
    # ConformerConfig checks the chunking (a non-causal model refuses one) as it is built.
    config = dataclasses.replace(loaded.model.config, chunk_size=args.chunk_size, left_chunks=args.left_chunks)
    model = ConformerCTC(config)
    model.load_state_dict(loaded.model.state_dict())
    c = loaded.config
    save_checkpoint(args.out, model, loaded.frontend.config, loaded.tokenizer, step=c.get("step", 0),
                    epoch=c.get("epoch", 0), metrics=c.get("metrics"), train_config=c.get("train_config"))
    print(f"wrote {args.out}: {resolve_checkpoint(args.checkpoint)} at chunk_size {args.chunk_size}, "
          f"left_chunks {args.left_chunks}")


if __name__ == "__main__":
    main()
