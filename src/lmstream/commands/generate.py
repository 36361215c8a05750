"""`lmstream generate --checkpoint PATH --prompt TEXT`: sample text, streamed as it is produced."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmstream.commands import add_no_verify, verify_notice

EXAMPLES = """examples:
  lmstream generate --checkpoint workspace/runs/demo --prompt "In the beginning"
  lmstream generate --checkpoint workspace/runs/my-exp/checkpoints/step-00001500 \\
      --prompt "The" --max-new-tokens 200 --temperature 0.8 --top-k 50 --top-p 0.95 --seed 1
  lmstream generate --checkpoint workspace/runs/my-exp/best --prompt "The" --temperature 0
"""


def register(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser(
        "generate",
        help="sample text from a checkpoint (streams tokens as they are produced)",
        description="Continue a prompt with a trained model, printing text as it is produced. "
        "PATH may be a step folder, a checkpoints folder or a run folder (its newest complete "
        "checkpoint is used).",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="checkpoint, checkpoints or run folder"
    )
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate at most")
    p.add_argument(
        "--min-new-tokens", type=int, default=0, help="never stop at <|endoftext|> before this many"
    )
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    p.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling: smallest set with this mass"
    )
    p.add_argument(
        "--truncate-prompt",
        action="store_true",
        help="keep only the prompt's last tokens so --max-new-tokens fit in the context "
        "(default: a prompt longer than the context is refused)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_no_verify(p)
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    from lmstream.errors import ConfigError

    problems = []
    if args.max_new_tokens < 1:
        problems.append(f"--max-new-tokens: must be at least 1 (given: {args.max_new_tokens})")
    if not 0 <= args.min_new_tokens <= args.max_new_tokens:
        problems.append(
            f"--min-new-tokens: must be in [0, --max-new-tokens] (given: {args.min_new_tokens})"
        )
    if args.temperature < 0:
        problems.append(f"--temperature: must be >= 0 (given: {args.temperature})")
    if args.top_k is not None and args.top_k < 1:
        problems.append(f"--top-k: must be at least 1 (given: {args.top_k})")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        problems.append(f"--top-p: must be in (0, 1] (given: {args.top_p})")
    if problems:
        raise ConfigError(problems)


def run(args: argparse.Namespace) -> int:
    from lmstream.config import EOT_TOKEN
    from lmstream.distributed import pick_device
    from lmstream.generate import (
        context_room,
        generate_tokens,
        prompt_tail,
        stop_token_ids,
        stream_text,
    )
    from lmstream.train.checkpoint import load_checkpoint_model, load_checkpoint_tokenizer

    _check(args)
    device = pick_device(args.device)
    verify_notice(args)
    model, cfg, folder = load_checkpoint_model(args.checkpoint, device, verify=args.verify)
    tokenizer = load_checkpoint_tokenizer(folder, cfg)
    print(f"# {folder} on {device}", file=sys.stderr)
    # Every training document follows an <|endoftext|>: starting the context with one tells the
    # model a document begins here (GPT-2 does the same), instead of dropping it mid-stream.
    eot = tokenizer.token_to_id(EOT_TOKEN)
    context = ([eot] if eot is not None else []) + tokenizer.encode(args.prompt).ids
    echo = args.prompt
    limit = model.config.max_position_embeddings
    if args.truncate_prompt and len(context) + args.max_new_tokens > limit:
        context = prompt_tail(context, limit, args.max_new_tokens)
        echo = tokenizer.decode(context, skip_special_tokens=True)
        print(f"# prompt cut to its last {len(context)} tokens (--truncate-prompt; "
              f"max_position_embeddings {limit})", file=sys.stderr)  # fmt: skip
    room = context_room(model, context)  # refuses a prompt that does not fit, before any output
    stop_ids = stop_token_ids(tokenizer)
    produced: list[int] = []

    def counted(ids):
        for token in ids:
            produced.append(token)
            yield token

    tokens = generate_tokens(
        model,
        context,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_ids=stop_ids,
        min_new_tokens=args.min_new_tokens,
    )
    sys.stdout.write(echo)
    for piece in stream_text(tokenizer, counted(tokens)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if room < args.max_new_tokens and len(produced) == room and produced[-1] not in stop_ids:
        print(f"# stopped after {room} of {args.max_new_tokens} new tokens: the context is full "
              f"(max_position_embeddings {limit}); shorten the prompt or pass --truncate-prompt",
              file=sys.stderr)  # fmt: skip
    return 0
