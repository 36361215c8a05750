"""`lmstream eval --checkpoint PATH [--data FILE ...] [--max-sequences N] [--precision P]`, or
benchmarks with `--tasks hellaswag,arc_easy [--limit N] [--num-fewshot K] [--include-path DIR]`."""

from __future__ import annotations

import argparse
import json

from lmstream.commands import add_no_verify, verify_notice
from lmstream.errors import LmstreamError

EXAMPLES = """examples:
  lmstream eval --checkpoint workspace/runs/demo/checkpoints              # the run's held-out data
  lmstream eval --checkpoint workspace/runs/demo/best --max-sequences 512 --batch-size 32
  lmstream eval --checkpoint workspace/runs/demo/best --precision fp32
  lmstream eval --checkpoint workspace/runs/demo/checkpoints/step-00000200 --data held_out/*.jsonl
  lmstream eval --checkpoint workspace/runs/demo/best --tasks hellaswag,arc_easy --limit 500
  lmstream eval --checkpoint workspace/runs/demo/best --tasks my_task --include-path my_tasks/
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
        "on the experiment's fixed held-out data (the set training evaluates on) or on files, "
        "in the precision the checkpoint was trained in.",
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
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--max-sequences",
        type=_positive,
        default=None,
        help="sequences to evaluate (default: the run's evaluation.max_sequences, else "
        "max_batches x evaluation.batch_size)",
    )
    size.add_argument(
        "--max-batches",
        type=_positive,
        default=None,
        help="the same, in batches of the run's evaluation.batch_size",
    )
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help="sequences per forward pass (speed and memory only; the set stays the same)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="compute precision (default: the checkpoint's runtime.precision, as training used)",
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
    harness = p.add_argument_group(
        "benchmarks (lm-evaluation-harness, the `eval` extra); results also go to "
        "eval_results.json beside the checkpoint"
    )
    harness.add_argument(
        "--tasks", default=None, help="comma-separated harness tasks, e.g. hellaswag,arc_easy"
    )
    harness.add_argument("--limit", type=_positive, default=None, help="examples per task")
    harness.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples")
    harness.add_argument(
        "--include-path", default=None, help="a folder of your own task YAMLs (local benchmarks)"
    )
    add_no_verify(p)
    p.set_defaults(func=run)


def run_tasks(args: argparse.Namespace) -> int:
    """`--tasks`: the harness on the checkpoint's model, a table, eval_results.json beside it."""
    from lmstream import harness
    from lmstream.distributed import pick_device
    from lmstream.train.checkpoint import load_checkpoint_model, load_checkpoint_tokenizer

    harness.require_harness("--tasks")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    harness.resolve_tasks(tasks, args.include_path)  # a typo fails before the model loads
    model, cfg, folder = load_checkpoint_model(
        args.checkpoint, pick_device(args.device), verify=args.verify
    )
    results = harness.run_tasks(
        model, load_checkpoint_tokenizer(folder, cfg), tasks, limit=args.limit,
        num_fewshot=args.num_fewshot, include_path=args.include_path,
        batch_size=args.batch_size or 16,
    )  # fmt: skip
    settings = {"checkpoint": str(folder), "limit": args.limit, "num_fewshot": args.num_fewshot}
    try:
        path, unwritten = harness.write_results(folder, results, settings), None
    except OSError as exc:  # a shared or mounted checkpoint: the results are printed anyway
        path, unwritten = folder / "eval_results.json", exc.strerror or type(exc).__name__
    if args.json:
        print(json.dumps({"tasks": results, **settings}))
    else:
        print(f"checkpoint: {folder}")
        print(harness.format_table(results))
        if unwritten is None:
            print(f"wrote {path}")
    if unwritten is not None:
        raise LmstreamError(
            f"--tasks: could not write {path} ({unwritten}); the results are printed above, "
            "and an export of this checkpoint will not list them in its model card"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    from lmstream.checkpoint_eval import evaluate_checkpoint

    verify_notice(args)
    if args.tasks is not None:
        return run_tasks(args)

    result = evaluate_checkpoint(
        args.checkpoint, data=args.data, max_batches=args.max_batches,
        max_sequences=args.max_sequences, batch_size=args.batch_size, documents=args.documents,
        run_dir=args.run_dir, device=args.device, verify=args.verify, precision=args.precision,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        source = "--precision" if args.precision else "the checkpoint's runtime.precision"
        print(f"checkpoint: {result['checkpoint']}")
        print(f"precision: {result['precision']} ({source})")
        print(f"val_loss {result['val_loss']:.4f} | val_ppl {result['val_ppl']:.2f} | "
              f"{result['tokens']:,} tokens in {result['sequences']} sequences")  # fmt: skip
        for key in sorted(k for k in result if k.startswith("val_loss/")):  # a mixture's
            print(f"{key} {result[key]:.4f}")
    return 0
