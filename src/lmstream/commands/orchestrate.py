"""`lmstream orchestrate`: stream a dataset, train a byte-level BPE tokenizer, write the experiment."""

from __future__ import annotations

import argparse
import json
import time

from lmstream.errors import ConfigError
from lmstream.model.presets import PRESETS

EXAMPLES = """examples:
  # the seed workflow: stream 1M FineWeb samples, 50k vocabulary
  lmstream orchestrate --stream --dataset HuggingFaceFW/fineweb --split train \\
      --max-samples 1000000 --vocab-size 50000 --experiment runpod-1b-streaming
  # a hub dataset's configuration, another text column
  lmstream orchestrate --stream --dataset HuggingFaceFW/fineweb-edu --subset sample-10BT \\
      --text-field text --max-samples 100000 --experiment edu-small
  # local files or URLs, streamed (jsonl, json, parquet, txt, csv; .gz/.zst)
  lmstream orchestrate --stream --data-files 'data/*.jsonl.gz' --vocab-size 8000 --experiment local
  # files mode (no streaming_config.json: training reads data.train_shards)
  lmstream orchestrate --data-files train=corpus/train.txt validation=corpus/valid.txt \\
      --validation-split validation --vocab-size 8000 --model-size tiny --experiment demo

outputs:
  WORKSPACE/artifacts/tokenizer/EXP/{tokenizer.json, vocab.json, merges.txt}
  WORKSPACE/runs/EXP/{streaming_config.json (with --stream), special_tokens.txt, training.yaml}
"""


def register(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser(
        "orchestrate",
        help="stream a dataset, train the tokenizer and write a ready training.yaml",
        description="Stream documents from a Hugging Face dataset, local files or URLs into a "
        "byte-level BPE trainer (nothing is written to disk but the results), then write the "
        "experiment's tokenizer, streaming_config.json, special_tokens.txt and training.yaml.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    src = p.add_argument_group("source")
    src.add_argument(
        "--stream",
        action="store_true",
        help="stream the source while training too (writes streaming_config.json)",
    )
    src.add_argument(
        "--dataset",
        default="HuggingFaceFW/fineweb",
        help="hub dataset id, local file/glob/folder, or http(s) URL",
    )
    src.add_argument(
        "--subset", "--name", dest="subset", default=None, help="the dataset's configuration name"
    )
    src.add_argument("--split", default="train", help="split to read")
    src.add_argument(
        "--validation-split",
        default=None,
        help="split to validate on (default: a holdout of the stream)",
    )
    src.add_argument(
        "--data-files",
        nargs="+",
        default=None,
        metavar="FILE",
        help="local files, globs or URLs (NAME=FILE names the split)",
    )
    src.add_argument("--text-field", default="text", help="record field that holds the text")
    src.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    src.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a dataset's own loading code (datasets < 4 only)",
    )
    src.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="stop after N documents (default: the whole stream)",
    )
    src.add_argument("--batch-size", type=int, default=1000, help="records fetched per batch")
    src.add_argument(
        "--max-chars", type=int, default=1_000_000, help="skip documents longer than this"
    )
    tok = p.add_argument_group("tokenizer")
    tok.add_argument(
        "--vocab-size", type=int, default=50000, help="vocabulary size, special tokens included"
    )
    tok.add_argument(
        "--special-tokens",
        nargs="*",
        default=[],
        metavar="TOKEN",
        help='extra special tokens (besides "<|endoftext|>" and "<|pad|>"), or a JSON list',
    )
    exp = p.add_argument_group("experiment")
    exp.add_argument("--experiment", required=True, help="experiment name (a folder name)")
    exp.add_argument(
        "--workspace",
        default=None,
        help="workspace folder (default: $LMSTREAM_WORKSPACE, else ./workspace)",
    )
    exp.add_argument(
        "--model-size", default="1b", choices=list(PRESETS), help="model section of training.yaml"
    )
    exp.add_argument("--seed", type=int, default=42, help="runtime.seed and the stream's seed")
    exp.add_argument(
        "--overwrite", action="store_true", help="replace an existing experiment's files"
    )
    exp.add_argument(
        "--pretokenize",
        action="store_true",
        help="files mode: also write the data as token shards (memory-mapped by training)",
    )
    exp.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _special_tokens(values: list[str]) -> list[str]:
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            parsed = json.loads(values[0])
        except json.JSONDecodeError as err:
            raise ConfigError(f"--special-tokens: not a JSON list ({err.msg})") from None
        return [str(t) for t in parsed]
    return list(values)


def run(args: argparse.Namespace) -> int:
    from lmstream.orchestrate import OrchestrateOptions, orchestrate, summary

    opts = OrchestrateOptions(
        experiment=args.experiment,
        workspace=args.workspace,
        stream=args.stream,
        dataset=args.dataset,
        subset=args.subset,
        split=args.split,
        validation_split=args.validation_split,
        data_files=args.data_files,
        text_field=args.text_field,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        max_samples=args.max_samples,
        vocab_size=args.vocab_size,
        special_tokens=_special_tokens(args.special_tokens),
        model_size=args.model_size,
        batch_size=args.batch_size,
        max_chars=args.max_chars,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        pretokenize=args.pretokenize,
    )
    started = time.perf_counter()
    result = orchestrate(opts)
    print(summary(result, time.perf_counter() - started))
    return 0
