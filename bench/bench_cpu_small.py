"""A nanoGPT-sized model on CPU: the whole `lmstream train` run against a minimal loop.

    python bench/bench_cpu_small.py [--steps 2000] [--reps 2] [--num-workers 1] [--record]

Shape (issue #16): 4 layers, 128 wide, 4 heads, context 64, micro-batch 12, fp32, 2 threads,
GELU/LayerNorm/tied embeddings (nanoGPT's), a 2,048-token BPE trained on the KJV corpus. Both
sides are fresh processes timed by wall clock from spawn to exit, alternated ``--reps`` times:

- minimal: bench/nanogpt_loop.py (random windows of an in-memory uint16 array of the corpus's
  tokens, the same Transformer, fused AdamW, clipping; tokenizing the array is not timed);
- lmstream: ``python -m lmstream train`` on the same corpus as JSON lines, what
  ``orchestrate`` writes for a CPU (``--num-workers`` loader workers, shuffle window 4096), its
  start-up, validation holdout, final evaluation and final checkpoint included.

Ratio = minimal seconds / lmstream seconds (goal >= 1.0: lmstream no slower). On a shared
machine both sides see the same neighbours, so the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from harness import (
    machine_description,
    markdown_table,
    median,
    today,
    update_benchmarks_md,
    write_result,
)

HERE = Path(__file__).resolve().parent
SHAPE = {"layers": 4, "hidden": 128, "heads": 4, "seq": 64, "batch": 12, "vocab": 2048}
LR, WARMUP = 1e-3, 100


def prepare(root: Path) -> tuple[Path, Path]:
    """train.jsonl + tok/ (for lmstream) and train.bin (uint16 tokens, for the minimal loop)."""
    from lmstream.corpus import kjv_documents
    from lmstream.tokenizer import load_tokenizer, save_tokenizer, train_bpe

    docs = list(kjv_documents())
    with open(root / "train.jsonl", "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    save_tokenizer(train_bpe(docs, SHAPE["vocab"], ["<|endoftext|>", "<|pad|>"]), root / "tok")
    tok = load_tokenizer(root / "tok" / "tokenizer.json")
    eot = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eot)
    np.asarray(ids, dtype=np.uint16).tofile(root / "train.bin")
    return root / "tok" / "tokenizer.json", root / "train.bin"


def write_config(root: Path, tokenizer: Path, steps: int, workers: int) -> Path:
    cfg = {
        "model": {
            "hidden_size": SHAPE["hidden"], "intermediate_size": 4 * SHAPE["hidden"],
            "num_layers": SHAPE["layers"], "num_attention_heads": SHAPE["heads"],
            "max_position_embeddings": SHAPE["seq"], "activation": "gelu",
            "norm": "layernorm", "tie_embeddings": True,
        },
        "tokenizer": {"tokenizer_json": str(tokenizer)},
        "data": {
            "train_shards": [str(root / "train.jsonl")], "batch_size": SHAPE["batch"],
            "sequence_length": SHAPE["seq"], "num_workers": workers,
            "shuffle_buffer_size": 4096, "validation_documents": 100,
        },
        "optimizer": {"learning_rate": LR, "weight_decay": 0.1, "beta2": 0.95},
        "scheduler": {"warmup_steps": WARMUP, "total_steps": steps},
        "runtime": {
            "device": "cpu", "precision": "fp32", "log_every_n_steps": 100,
            "evaluation": {"max_batches": 8},
        },
    }  # fmt: skip
    run_dir = root / "run"
    run_dir.mkdir(exist_ok=True)
    path = run_dir / "training.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def timed(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout


def run(steps: int, reps: int, workers: int, root: Path) -> dict:
    tokenizer, tokens = prepare(root)
    minimal = [
        sys.executable, str(HERE / "nanogpt_loop.py"), "--data", str(tokens),
        "--vocab", str(SHAPE["vocab"]), "--steps", str(steps), "--lr", str(LR),
        "--warmup", str(WARMUP), "--out", str(root / "minimal.pt"),
    ]  # fmt: skip
    times: dict[str, list[float]] = {"minimal": [], "lmstream": []}
    for _ in range(reps):
        times["minimal"].append(timed(minimal)[0])
        config = write_config(root, tokenizer, steps, workers)
        seconds, out = timed(
            [sys.executable, "-m", "lmstream", "train", "--config", str(config), "--restart"]
        )
        times["lmstream"].append(seconds)
    ratio = median(times["minimal"]) / median(times["lmstream"])
    return {"steps": steps, "reps": reps, "num_workers": workers, "shape": SHAPE,
            "seconds": times, "ratio": ratio, "machine": machine_description(),
            "load_average": os.getloadavg()[0], "date": today()}  # fmt: skip


def report(result: dict, command: str) -> str:
    s = result["seconds"]
    rows = [[side, f"{median(v):.1f}", ", ".join(f"{x:.1f}" for x in v)] for side, v in s.items()]
    return "\n".join([
        "## Small model on CPU: the whole `lmstream train` run vs a minimal loop",
        "",
        f"- Command: `{command}`",
        f"- Machine: {result['machine']}",  # its line ends with the load average already
        f"- Date: {result['date']}",
        f"- 4 layers, 128 wide, 4 heads, context 64, micro-batch 12, fp32, 2 threads, vocabulary "
        f"2,048, {result['steps']:,} steps; lmstream with {result['num_workers']} loader worker(s),"
        " final evaluation and checkpoint included",
        "",
        markdown_table(["side", "median s", "runs"], rows),
        "",
        f"**Ratio minimal / lmstream: {result['ratio']:.2f}x** (goal >= 1.0x).",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--record", action="store_true", help="write the section in BENCHMARKS.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmstream-bench-cpu-small-") as tmp:
        result = run(args.steps, args.reps, args.num_workers, Path(tmp))
    write_result("cpu_small", result)
    command = "python bench/bench_cpu_small.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = report(result, command.strip())
    print(text)
    if args.record:
        update_benchmarks_md("cpu_small", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
