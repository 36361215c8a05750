"""`lmstream eval --checkpoint PATH [--data FILE ...] [--max-batches N]`."""

from __future__ import annotations

import argparse
import json

EXAMPLES = """examples:
  lmstream eval --checkpoint workspace/runs/demo/checkpoints              # the run's held-out data
  lmstream eval --checkpoint workspace/runs/demo/best --max-batches 64
  lmstream eval --checkpoint workspace/runs/demo/checkpoints/step-00000200 --data held_out/*.jsonl
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (given: {value})")
    return value


def register(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser(
        "eval",
        help="validation loss and perplexity of a checkpoint",
        description="Validation loss (mean cross-entropy per token) and perplexity of a checkpoint, "
        "on the experiment's fixed held-out data (the batches training evaluates on) or on files.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a step folder, or a checkpoints/best/run folder (newest complete one)",
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=None,
        metavar="FILE",
        help="evaluate on these files or globs (txt, jsonl, parquet, csv, .gz/.zst, URLs) instead",
    )
    p.add_argument(
        "--max-batches",
        type=_positive,
        default=None,
        help="batches to evaluate (default: the run's evaluation.max_batches)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help="sequences per batch (default: the run's data.batch_size)",
    )
    p.add_argument(
        "--documents",
        type=_positive,
        default=None,
        help="with --data: documents to read (default: the run's data.validation_documents)",
    )
    p.add_argument(
        "--run-dir", default=None, help="the run folder, when the checkpoint was moved out of it"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmstream.checkpoint_eval import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint, data=args.data, max_batches=args.max_batches, batch_size=args.batch_size,
        documents=args.documents, run_dir=args.run_dir, device=args.device,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        print(f"checkpoint: {result['checkpoint']}")
        print(f"val_loss {result['val_loss']:.4f} | val_ppl {result['val_ppl']:.2f} | "
              f"{result['tokens']:,} tokens in {result['batches']} batches")  # fmt: skip
    return 0
