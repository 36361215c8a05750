"""`lmstream export --checkpoint PATH --out DIR`: a Hugging Face transformers model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmstream.commands import add_no_verify, verify_notice

EXAMPLES = """examples:
  lmstream export --checkpoint workspace/runs/demo --out exported/demo
  lmstream export --checkpoint workspace/runs/my-exp/best --out hf/my-exp --force
  lmstream export --checkpoint workspace/runs/my-exp/best --out hf/my-exp --push-to-hub me/my-exp

then, in Python (no custom code needed):
  from transformers import AutoModelForCausalLM, AutoTokenizer
  model = AutoModelForCausalLM.from_pretrained("hf/my-exp")
  tokenizer = AutoTokenizer.from_pretrained("hf/my-exp")
"""


def register(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint as a Hugging Face transformers folder (checked by logits)",
        description="Write config.json, model.safetensors and tokenizer files that "
        "AutoModelForCausalLM / AutoTokenizer load with no custom code. The architecture is the "
        "exact counterpart of the model config (Llama for swiglu+rmsnorm, Arcee for "
        "gelu+rmsnorm, StarCoder2 for gelu+layernorm, StableLM for swiglu+layernorm). The "
        "export is loaded back and its fp32 logits compared with the checkpoint's before the "
        "folder is moved into place.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="checkpoint, checkpoints or run folder"
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--force", action="store_true", help="replace --out if it is not empty")
    p.add_argument(
        "--license", default=None, help="license id for the model card's metadata, e.g. apache-2.0"
    )
    p.add_argument(
        "--push-to-hub",
        default=None,
        metavar="OWNER/NAME",
        help="then upload the folder to this Hub model repo (created if missing; token from "
        "HF_TOKEN or `hf auth login`)",
    )
    p.add_argument("--private", action="store_true", help="with --push-to-hub: a private repo")
    p.add_argument(
        "--revision", default=None, help="with --push-to-hub: the branch to commit to (created)"
    )
    add_no_verify(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmstream.errors import ConfigError

    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ConfigError(
            "export needs the transformers package: pip install 'transformers>=4.45'"
        ) from None
    from lmstream.export import TOLERANCE, export_checkpoint
    from lmstream.hub import check_repo_id, push_folder

    if args.push_to_hub is not None:
        check_repo_id(args.push_to_hub)  # before minutes of export
    elif args.private or args.revision is not None:
        raise ConfigError("--private and --revision go with --push-to-hub OWNER/NAME")
    verify_notice(args)
    result = export_checkpoint(
        args.checkpoint, args.out, force=args.force, card_name=args.push_to_hub,
        license=args.license, verify=args.verify,
    )  # fmt: skip
    print(
        f"wrote {result.directory} as {result.architecture}; logits match within "
        f"{result.max_abs_diff:.2g} (limit {TOLERANCE:g}); model card README.md"
    )
    if args.push_to_hub is not None:
        url = push_folder(
            result.directory, args.push_to_hub, private=args.private, revision=args.revision
        )
        print(f"uploaded {result.directory} to {args.push_to_hub}: {url}")
    return 0
