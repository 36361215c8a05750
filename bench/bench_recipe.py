"""What each training-recipe option buys on a small CPU run: validation loss of the seed recipe
(AdamW, cosine) vs WSD vs Muon vs document masking vs QK-norm vs QK-norm + z-loss, same model,
steps and tokens.

Every variant is the real `lmstream train` (in this process, one torch thread) on the demo corpus
(the KJV) with the same seed, so all see the same batches in the same order and start from the
same weights; only the option under test differs. The model is 4 layers of width 128, context 64,
12 sequences per step. The comparison is within one run of this script; absolute losses move
with the step count (`--steps`). With ``--record`` the table in BENCHMARKS.md is rewritten after
every variant, so a run stopped early (a shared machine) leaves the rows it finished, said so.

    OMP_NUM_THREADS=1 python bench/bench_recipe.py --record     # 2,000 steps per variant

    python bench/bench_recipe.py --steps 600 --record
    python bench/bench_recipe.py --quick         # 30 steps: a smoke test, never recorded
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from lmstream.cli import main as cli_main  # noqa: E402
from lmstream.corpus import kjv_documents, write_demo_corpus  # noqa: E402
from lmstream.tokenizer import save_tokenizer, train_bpe  # noqa: E402

NAME = "recipe"
NOTE = (
    "One run per row (one seed): differences of a few hundredths are within what another seed "
    "could move. The default 2,000 steps are 2.1 passes over the training documents, so every "
    "row whose "
    "learning rate is already low by step 1,500 ends a little above its 1,500-step validation "
    "loss while its train loss keeps falling; WSD, which decays last, is still falling at the "
    "end. What each buys here: Muon the most (lower at every evaluation); WSD a better end point "
    "than cosine for the same steps, and a run that can be extended; QK-norm and z-loss are "
    "stabilisers for high learning rates and large models, not gains at this size; document "
    "masking changes nothing measurable at context 64 (a row holds one or two of these "
    "documents), its use is keeping unrelated documents in long packed rows from attending to "
    "each other. Document masking is evaluated masked too: a validation row that spans two "
    "documents is scored with each token seeing only its own document, as in training. The wall "
    "column follows the shared machine's load, not the recipe's cost (the losses do not depend on"
    " it)."
)
VOCAB = 4096

VARIANTS: dict[str, dict] = {
    "seed (AdamW, cosine)": {},
    "WSD (decay 20%, 1-sqrt)": {
        "scheduler": {
            "strategy": "warmup_stable_decay",
            "decay_fraction": 0.2,
            "decay_shape": "1-sqrt",
        }
    },
    "Muon (+ AdamW for the rest)": {"optimizer": {"algorithm": "muon"}},
    "document masking": {"model": {"document_masking": True}},
    "QK-norm": {"model": {"qk_norm": True}},
    "QK-norm + z-loss 1e-4": {"model": {"qk_norm": True}, "optimizer": {"z_loss": 1e-4}},
}


def base_config(root: Path, steps: int) -> dict:
    return {
        "model": {
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_layers": 4,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
        },
        "tokenizer": {"tokenizer_json": str(root / "tok" / "tokenizer.json")},
        "data": {
            "train_shards": [str(root / "kjv.jsonl")],
            "batch_size": 12,
            "sequence_length": 64,
            "validation_documents": 200,
            "shuffle_buffer_size": 4096,
            "num_workers": 1,
        },
        "optimizer": {"learning_rate": 2e-3, "weight_decay": 0.1, "beta2": 0.99},
        "scheduler": {"warmup_steps": max(1, steps // 20), "total_steps": steps, "min_lr": 2e-4},
        "runtime": {
            "seed": 42,
            "device": "cpu",
            "log_every_n_steps": max(1, steps // 20),
            "checkpoint": {"every_n_steps": None, "async_save": False},
            "evaluation": {"every_n_steps": max(1, steps // 4), "max_batches": 40},
            "logging": {"enable_stdout": False},
        },
    }


def merged(base: dict, change: dict) -> dict:
    out = json.loads(json.dumps(base))
    for section, fields in change.items():
        out[section].update(fields)
    return out


def run_variant(run_dir: Path, name: str, cfg: dict) -> dict:
    run_dir.mkdir()
    (run_dir / "training.yaml").write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    code = cli_main(["train", "--config", str(run_dir / "training.yaml")])
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(f"{name}: lmstream train exited with {code}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    train = [r["loss"] for r in records if "loss" in r]
    return {
        "val_loss": val,
        "final_val_loss": val[-1][1],
        "last_train_loss": train[-1],
        "seconds": seconds,
    }


def render(results: dict, steps: int, n_docs: int) -> str:
    """The BENCHMARKS.md section for the variants finished so far."""
    seed = results["seed (AdamW, cosine)"]["final_val_loss"]
    rows = [
        [
            name,
            f"{r['final_val_loss']:.4f}",
            f"{r['final_val_loss'] - seed:+.4f}",
            " -> ".join(f"{v:.3f}" for _, v in r["val_loss"]),
            f"{r['last_train_loss']:.4f}",
            f"{r['seconds']:.0f} s",
        ]
        for name, r in results.items()
    ]
    table = harness.markdown_table(
        [
            "recipe",
            "final val_loss",
            "vs seed",
            f"val_loss every {max(1, steps // 4)} steps",
            "last train loss",
            "wall",
        ],
        rows,
    )
    missing = [name for name in VARIANTS if name not in results]
    left = f"\n\nNot run yet (the run was stopped): {', '.join(missing)}." if missing else ""
    tokens = steps * 12 * 64
    return (
        f"## Training recipes: validation loss for the same steps and tokens (CPU, fp32)\n\n"
        f"On {harness.today()}, {harness.machine_description()}; `OMP_NUM_THREADS=1 python "
        f"bench/bench_recipe.py --steps {steps} --record`: 4 layers x 128 wide, context 64, "
        f"{steps:,} steps of 12 sequences ({tokens:,} tokens) on the demo corpus (KJV, "
        f"{n_docs:,} documents, vocabulary {VOCAB}), AdamW lr 2e-3 (Muon: 0.02 for the block "
        f"matrices), same seed, batches and initial weights for every row, one after another in "
        f"one process; validation on 200 held-out documents (40 batches). ln({VOCAB}) = "
        f"{math.log(VOCAB):.2f} is a model that knows nothing.\n\n{table}\n\n{NOTE}{left}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="30 steps; never recorded")
    parser.add_argument("--record", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    steps = 30 if args.quick else args.steps
    # The same arithmetic for every variant, and a fair share of a shared CPU.
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, n_docs = write_demo_corpus(root / "kjv.jsonl")
        docs = list(kjv_documents())
        save_tokenizer(train_bpe(docs, VOCAB, ["<|endoftext|>", "<|pad|>"]), root / "tok")
        base = base_config(root, steps)
        for i, (name, change) in enumerate(VARIANTS.items()):
            results[name] = run_variant(root / f"run-{i}", name, merged(base, change))
            r = results[name]
            print(f"{name}: val_loss {r['final_val_loss']:.4f} ({r['seconds']:.0f} s)", flush=True)
            harness.write_result(NAME, {"steps": steps, "documents": n_docs, "results": results})
            if args.record and not args.quick:
                harness.update_benchmarks_md(NAME, render(results, steps, n_docs))
    print(render(results, steps, n_docs))


if __name__ == "__main__":
    main()
