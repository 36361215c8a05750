"""`lmstream consolidate --checkpoint PATH [--out DIR]`: a sharded (FSDP) checkpoint as one
model.safetensors in the plain checkpoint format.

generate and export read sharded checkpoints directly (consolidating in memory); this writes the
plain form once, for sharing or for tools that expect one safetensors file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmstream.commands import add_no_verify, verify_notice

EXAMPLES = """examples:
  lmstream consolidate --checkpoint workspace/runs/my-exp/checkpoints/step-00001500
  lmstream consolidate --checkpoint workspace/runs/my-exp --out workspace/runs/my-exp/consolidated
  lmstream generate --checkpoint workspace/runs/my-exp/consolidated --prompt "The"
"""


def register(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser(
        "consolidate",
        help="turn a sharded (FSDP) checkpoint into one model.safetensors (plain format)",
        description="Gather the model shards of a checkpoint written under FSDP "
        "(torch.distributed.checkpoint) into a weights-only checkpoint in the plain format: "
        "model.safetensors, config.yaml, tokenizer.json, special_tokens.txt, manifest.json. "
        "Runs in one process, no GPU needed. PATH may be a step folder, a checkpoints folder "
        "or a run folder (its newest complete checkpoint is used).",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="checkpoint, checkpoints or run folder"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to write step-NNNNNNNN into (default: 'consolidated' beside the "
        "checkpoint's folder, e.g. RUN/consolidated)",
    )
    add_no_verify(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmstream.train import checkpoint as ckpt
    from lmstream.train.sharded import consolidate

    source = ckpt.resolve_checkpoint(args.checkpoint)
    if not ckpt.is_sharded(source):
        print(f"{source} is already in the plain format (model.safetensors); nothing to do")
        return 0
    out = args.out if args.out is not None else source.parent.parent / "consolidated"
    verify_notice(args)
    final = consolidate(source, out, verify=args.verify)
    print(f"wrote {final}")
    return 0
