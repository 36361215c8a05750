"""`lmstream demo [--workspace DIR] [--minutes M]`: the whole workflow on this machine, end to end."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  lmstream demo                               # ./workspace, about 4 minutes on a 2-core CPU
  lmstream demo --workspace /tmp/ws --minutes 2
"""


def register(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser(
        "demo",
        help="stream a built-in corpus, train a tokenizer and a tiny model on this machine, sample from it",
        description="Run the real workflow on the built-in corpus (the King James Bible, installed "
        "with lmstream): orchestrate, train a tiny model with evaluation, checkpoints and "
        "TensorBoard logs, generate a sample and plot the curves, within a time budget.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    p.add_argument(
        "--workspace",
        default=None,
        help="workspace folder (default: $LMSTREAM_WORKSPACE or ./workspace)",
    )
    p.add_argument(
        "--minutes", type=float, default=4.0, help="wall-clock budget for the whole demo"
    )
    p.add_argument("--prompt", default="And God said", help="prompt for the sample at the end")
    p.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed for the tokenizer sample, init, data order and sampling",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmstream.demo import run_demo
    from lmstream.errors import ConfigError

    if not 0.5 <= args.minutes <= 600:
        raise ConfigError(f"--minutes: {args.minutes:g} is out of range; give 0.5 to 600")
    run_demo(args.workspace, args.minutes, args.prompt, args.seed)
    return 0
