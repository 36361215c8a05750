"""`lmstream orchestrate`: stream a dataset, train a byte-level BPE tokenizer, write the experiment."""

from __future__ import annotations

import argparse
import time

from lmstream.flags import add_flags, from_args
from lmstream.orchestrate_options import OrchestrateOptions

EXAMPLES = """examples:
  # the seed workflow: stream 1M FineWeb samples, 50k vocabulary
  lmstream orchestrate --stream --dataset HuggingFaceFW/fineweb --split train \\
      --max-samples 1000000 --vocab-size 50000 --experiment runpod-1b-streaming
  # a hub dataset's configuration, another text column
  lmstream orchestrate --stream --dataset HuggingFaceFW/fineweb-edu --subset sample-10BT \\
      --text-field text --max-samples 100000 --experiment edu-small
  # local files or URLs, streamed (jsonl, json, parquet, txt, csv; .gz/.zst)
  lmstream orchestrate --stream --data-files 'data/*.jsonl.gz' --vocab-size 8000 --experiment local
  # a mixture: 80% / 20% of the training tokens (or --sources FILE for per-source settings)
  lmstream orchestrate --stream --dataset HuggingFaceFW/fineweb-edu --dataset code.jsonl \\
      --weights 0.8 0.2 --max-samples 200000 --experiment edu-code
  # object storage (credentials from the environment; pip install 'lmstream[s3]')
  lmstream orchestrate --stream --dataset 's3://bucket/corpus/*.jsonl.gz' --experiment s3
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
    add_flags(p, OrchestrateOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lmstream.orchestrate import orchestrate
    from lmstream.orchestrate_report import summary

    opts = from_args(OrchestrateOptions, args)
    started = time.perf_counter()
    result = orchestrate(opts)
    print(summary(result, time.perf_counter() - started))
    return 0
