"""`lmstream plot RUN_DIR [--out PNG]`: loss, validation loss, learning rate and throughput curves."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  lmstream plot workspace/runs/demo
  lmstream plot workspace/runs/my-exp --out curves.png
"""


def register(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser(
        "plot",
        help="draw a run's training curves from metrics.jsonl into a PNG",
        description="Draw the loss, validation loss, learning rate, throughput and gradient-norm "
        "curves of a run (from RUN_DIR/metrics.jsonl) into a PNG.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    p.add_argument("run_dir", type=Path, help="the run folder (or its metrics.jsonl)")
    p.add_argument(
        "--out", type=Path, default=None, help="PNG to write (default: RUN_DIR/curves.png)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmstream.plot import plot_run

    out = plot_run(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0
