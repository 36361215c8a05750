"""`lmstream train --config runs/EXP/training.yaml [--resume] [--dry-run]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmstream.config import TrainingConfig, dump_training_config, load_training_config

EXAMPLES = """examples:
  lmstream train --config workspace/runs/my-exp/training.yaml --dry-run
  lmstream train --config workspace/runs/my-exp/training.yaml
  lmstream train --config workspace/runs/my-exp/training.yaml --resume
  torchrun --nproc_per_node 8 -m lmstream train --config workspace/runs/my-exp/training.yaml
"""


def register(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from training.yaml (streams when streaming_config.json is beside it)",
        description="Train a decoder-only transformer driven by training.yaml. When "
        "streaming_config.json sits beside the YAML, data is streamed from its source.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    p.add_argument("--config", required=True, type=Path, help="path to training.yaml")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config and print the plan without training",
    )
    p.set_defaults(func=run)


def describe_plan(cfg: TrainingConfig, world_size: int = 1) -> str:
    """The resolved plan as text: schedule and batch arithmetic."""
    s, d = cfg.scheduler, cfg.data
    lines = [
        f"tokens per optimizer step: {cfg.tokens_per_step(world_size):,} "
        f"(batch_size {d.batch_size} x gradient_accumulation_steps {d.gradient_accumulation_steps} "
        f"x sequence_length {d.sequence_length} x world_size {world_size})",
        f"schedule: {s.strategy}, warmup {s.warmup_steps} steps, "
        + (f"total {s.total_steps:,} steps" if s.total_steps else f"total {s.total_epochs} epochs")
        + f", peak lr {cfg.peak_lr:g}, min lr {cfg.min_lr:g}",
    ]
    if s.total_steps:
        lines.append(f"planned tokens: {cfg.tokens_per_step(world_size) * s.total_steps:,}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg = load_training_config(args.config)
    if args.dry_run:
        print(f"# resolved config: {args.config}")
        print(dump_training_config(cfg), end="")
        print(describe_plan(cfg))
        return 0
    raise SystemExit("lmstream train: training is not available in this build yet; use --dry-run")
