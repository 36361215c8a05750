"""A nanoGPT-sized model on CPU: the whole `lmstream train` run against a minimal loop.

    python bench/bench_cpu_small.py [--steps 2000] [--reps 3] [--threads 2] [--num-workers N] [--record]

Shape (issue #16): 4 layers, 128 wide, 4 heads, context 64, micro-batch 12, fp32, 2 threads,
GELU/LayerNorm/tied embeddings (nanoGPT's), a 2,048-token BPE trained on the KJV corpus. Both
sides are fresh processes, run interleaved (minimal, lmstream, minimal, lmstream, ...) ``--reps``
times, each timed from spawn to exit by wall clock and by CPU time (user + system of the process
and of its loader worker):

- minimal: bench/nanogpt_loop.py (random windows of an in-memory uint16 array of the corpus's
  tokens, the same Transformer, fused AdamW, clipping; tokenizing the array is not timed);
- lmstream: ``python -m lmstream train`` on the same corpus as JSON lines, what
  ``orchestrate`` writes for this CPU (``--num-workers`` loader workers, by default what
  orchestrate picks for these cores: 0 on two or fewer, else 1; shuffle window 4096), its
  start-up, validation holdout, final evaluation and final checkpoint included.

Ratio = minimal / lmstream (goal >= 1.0: lmstream no slower), the median of the pairs' ratios,
by wall clock and by CPU time. On a machine loaded by other jobs the wall-clock ratio at 2
threads says little (an OpenMP thread that finds its core taken holds up the other), and CPU
time at 2 threads counts the threads' spin-waits; ``--threads 1`` gives CPU-time figures that
neighbours barely move. The wall-clock ratio at 2 threads is the issue's figure: take it on a
quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from lmstream.model.presets import cpu_loader_workers

HERE = Path(__file__).resolve().parent
SHAPE = {"layers": 4, "hidden": 128, "heads": 4, "seq": 64, "batch": 12, "vocab": 2048}
LR, WARMUP = 1e-3, 100


def warmup(steps: int) -> int:
    """WARMUP, or less for a run too short to hold it (a quick check of the bench itself)."""
    return min(WARMUP, steps - 1)


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
        "scheduler": {"warmup_steps": warmup(steps), "total_steps": steps},
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


def timed(cmd: list[str], threads: int) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one run. CPU time is user + system of the process
    and of the children it waited for (the loader workers), read as the growth of this
    process's RUSAGE_CHILDREN (one child at a time here)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, proc.stdout


def run(steps: int, reps: int, workers: int, threads: int, root: Path) -> dict:
    tokenizer, tokens = prepare(root)
    minimal = [
        sys.executable, str(HERE / "nanogpt_loop.py"), "--data", str(tokens),
        "--vocab", str(SHAPE["vocab"]), "--steps", str(steps), "--lr", str(LR),
        "--warmup", str(warmup(steps)), "--out", str(root / "minimal.pt"),
    ]  # fmt: skip
    config = write_config(root, tokenizer, steps, workers)
    lmstream = [sys.executable, "-m", "lmstream", "train", "--config", str(config), "--restart"]
    wall: dict[str, list[float]] = {"minimal": [], "lmstream": []}
    cpu: dict[str, list[float]] = {"minimal": [], "lmstream": []}
    for _ in range(reps):  # interleaved, so a change in the machine's load hits both sides
        for side, cmd in (("minimal", minimal), ("lmstream", lmstream)):
            seconds, cpu_s, _ = timed(cmd, threads)
            wall[side].append(seconds)
            cpu[side].append(cpu_s)
    pairs = range(reps)
    return {"steps": steps, "reps": reps, "num_workers": workers, "threads": threads,
            "shape": SHAPE, "seconds": wall, "cpu_seconds": cpu,
            "ratio": median([wall["minimal"][i] / wall["lmstream"][i] for i in pairs]),
            "cpu_ratio": median([cpu["minimal"][i] / cpu["lmstream"][i] for i in pairs]),
            "machine": machine_description(), "load_average": os.getloadavg()[0],
            "date": today()}  # fmt: skip


def report(result: dict, command: str) -> str:
    def runs(values: list[float]) -> str:
        return ", ".join(f"{x:.1f}" for x in values)

    wall, cpu = result["seconds"], result.get("cpu_seconds") or {}
    rows = [[side, f"{median(v):.1f}", runs(v), f"{median(cpu[side]):.1f}" if side in cpu
             else "-", runs(cpu.get(side, []))] for side, v in wall.items()]  # fmt: skip
    threads = result.get("threads", 2)
    lines = [
        "## Small model on CPU: the whole `lmstream train` run vs a minimal loop",
        "",
        f"- Command: `{command}`",
        f"- Machine: {result['machine']}",  # its line ends with the load average already
        f"- Date: {result['date']}",
        f"- 4 layers, 128 wide, 4 heads, context 64, micro-batch 12, fp32, {threads} thread(s), "
        f"vocabulary 2,048, {result['steps']:,} steps; lmstream with {result['num_workers']} "
        "loader worker(s), final evaluation and checkpoint included; sides run interleaved",
        "",
        markdown_table(["side", "median wall s", "wall runs", "median CPU s", "CPU runs"], rows),
        "",
        f"**Ratio minimal / lmstream (median of the pairs): wall {result['ratio']:.2f}x**"
        + (f", CPU time {result['cpu_ratio']:.2f}x" if "cpu_ratio" in result else "")
        + " (goal >= 1.0x).",
        "",
        _spread(wall),
    ]
    return "\n".join(lines)


def _spread(wall: dict[str, list[float]]) -> str:
    """Each pair's ratio and the ratio of the sums: one pair moves by several percent on a
    shared machine, so the median alone says little about a difference of 1-2%."""
    pairs = [m / lm for m, lm in zip(wall["minimal"], wall["lmstream"], strict=True)]
    total_m, total_lm = sum(wall["minimal"]), sum(wall["lmstream"])
    return (
        f"Wall ratio of each pair: {', '.join(f'{r:.3f}' for r in pairs)}; of the sums: "
        f"{total_m:.1f} s / {total_lm:.1f} s = {total_m / total_lm:.3f}x."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of both sides")
    ap.add_argument(
        "--num-workers", type=int, default=cpu_loader_workers(),
        help="loader workers (default: what orchestrate writes for this machine's cores)",
    )  # fmt: skip
    ap.add_argument("--record", action="store_true", help="write the section in BENCHMARKS.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmstream-bench-cpu-small-") as tmp:
        result = run(args.steps, args.reps, args.num_workers, args.threads, Path(tmp))
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
