"""The whole `lmstream train` loop on one CUDA GPU against the bare step of the same config.

    python bench/gpu_loop.py [--variants seed,compile] [--record]   # needs a CUDA GPU
    python bench/gpu_loop.py --prepare-only --workdir DIR            # corpus + BPE only (any host)
    python bench/gpu_loop.py --cpu-smoke                              # checks the logic on CPU

Model: the seed's 1B (``model_preset("1b")``), bf16 autocast, sequence 2048, 64 sequences per
optimizer step, fused AdamW. Variants:

- ``seed``: the seed YAML's own data settings (batch 2 x 32 accumulation steps), eager;
- ``compile``: batch 8 x 8 accumulation steps with ``runtime.compile: true``.

Loop: the real CLI (``python -m lmstream train``) on the KJV corpus (JSON lines, tokenized in
DataLoader workers) with a BPE trained on it, logging every step (stdout, JSONL, TensorBoard),
evaluation and a checkpoint (model + AdamW state, ~13 GB for 1B) every ``--every`` steps and at
the end. Throughput comes from the loop's own per-step log records: the steady state is the median
of the intervals after the first two (start-up, compilation) that hold no evaluation or checkpoint;
the interval after a checkpoint step gives the cost of that evaluation + checkpoint, amortised
at the seed's cadence (checkpoint every 1,500 steps, evaluation every 4,500).

Bare step: the loop's own ``forward_backward`` + ``optimizer_step`` on fixed batches already on
the GPU, same model, precision, compile and optimizer, built in this process after the loop runs.
Overhead = 1 - loop tokens/s / bare tokens/s (goal: < 5%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench_loop_overhead import run_loop, write_corpus_and_tokenizer
from harness import (
    fmt_int,
    machine_description,
    markdown_table,
    today,
    update_benchmarks_md,
    write_result,
)
from lmstream.config import load_training_config
from lmstream.model.presets import model_preset

GOAL_OVERHEAD = 0.05
SEQ = 2048
VARIANTS = {  # name -> (micro-batch, accumulation steps, compile)
    "seed": (2, 32, False),
    "compile": (8, 8, True),
}
SEED_CHECKPOINT_EVERY, SEED_EVAL_EVERY = 1500, 4500
NO_CUDA_MESSAGE = (
    "gpu_loop.py: no CUDA device is available; this benchmark needs one GPU. Nothing was "
    "measured. (--prepare-only builds its corpus and tokenizer on any host.)"
)


def prepare(workdir: Path, vocab: int, max_docs: int | None = None) -> Path:
    """KJV train.jsonl + tok/tokenizer.json in ``workdir`` (reused when already there)."""
    tokenizer_json = workdir / "tok" / "tokenizer.json"
    if not (tokenizer_json.is_file() and (workdir / "train.jsonl").is_file()):
        workdir.mkdir(parents=True, exist_ok=True)
        write_corpus_and_tokenizer(workdir, vocab, max_docs)
    return tokenizer_json


def model_section(args) -> dict:
    if args.cpu_smoke:
        return {"hidden_size": 64, "intermediate_size": 256, "num_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": args.seq}  # fmt: skip
    return model_preset("1b").model_dump() | {"max_position_embeddings": args.seq}


def variant_shape(name: str, args) -> tuple[int, int, bool]:
    """(micro-batch, accumulation steps, compile); the smoke run keeps 2 x 2, eager."""
    return (2, 2, False) if args.cpu_smoke else VARIANTS[name]


def write_config(workdir: Path, name: str, tokenizer_json: Path, args) -> Path:
    batch, accum, compile = variant_shape(name, args)
    model = model_section(args)
    cfg = {
        "model": model,
        "tokenizer": {"tokenizer_json": str(tokenizer_json.resolve())},
        "data": {
            "train_shards": [str((workdir / "train.jsonl").resolve())],
            "batch_size": batch,
            "gradient_accumulation_steps": accum,
            "sequence_length": args.seq,
            "num_workers": args.num_workers,
            "shuffle_buffer_size": 1024,
            "validation_documents": 200,
        },
        "optimizer": {"learning_rate": 1.8e-4, "weight_decay": 0.01, "beta2": 0.95},
        "scheduler": {"warmup_steps": 2, "total_steps": args.steps},
        "runtime": {
            "device": args.device.type,
            "precision": args.precision,
            "compile": compile,
            "micro_batch": "fixed",  # the bare step runs the same cut: compare like with like
            "log_every_n_steps": 1,
            "checkpoint": {"every_n_steps": args.every, "max_keep": 1},
            "evaluation": {
                "every_n_steps": args.every,
                "max_batches": args.eval_batches,
                "best": {"max_keep": 1},
            },
            "logging": {"tensorboard": "tb"},
        },
    }
    run_dir = workdir / f"run-{name}"
    run_dir.mkdir(exist_ok=True)
    path = run_dir / "training.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    load_training_config(path)  # fail here, with the field named, not in the subprocess
    return path


def step_intervals(records: list[dict]) -> list[tuple[int, float]]:
    """(step, seconds that step took) from per-step log records, eval/ckpt time included in
    the interval after the step that triggered them (the loop's clock restarts before them)."""
    train = [r for r in records if "tokens_per_s" in r and "tokens_seen" in r]
    out, prev_tokens = [], 0
    for r in train:
        tokens = r["tokens_seen"] - prev_tokens
        out.append((r["step"], tokens / r["tokens_per_s"]))
        prev_tokens = r["tokens_seen"]
    return out


def loop_figures(records: list[dict], every: int, tokens_per_step: int) -> dict:
    intervals = step_intervals(records)[2:]  # start-up and compilation
    after_save = {s for s, _ in intervals if (s - 1) > 0 and (s - 1) % every == 0}
    steady = [t for s, t in intervals if s not in after_save]
    dips = [t for s, t in intervals if s in after_save]
    if not steady:
        raise SystemExit("gpu_loop: too few steady steps; raise --steps")
    step_s = statistics.median(steady)
    save_s = statistics.median(dips) - step_s if dips else None
    return {
        "step_s": step_s,
        "tokens_per_s": tokens_per_step / step_s,
        "steady_steps": len(steady),
        "eval_and_checkpoint_s": save_s,
    }


def bare_tokens_per_s(
    config: Path, vocab: int, device: torch.device, steps: int, warmup: int
) -> float:
    """The loop's step functions on fixed GPU batches; median step time -> tokens/s."""
    from lmstream import distributed as dist
    from lmstream.data.packing import Batch
    from lmstream.train.loop import forward_backward, optimizer_step
    from lmstream.train.optim import build_optimizer
    from lmstream.train.precision import build_precision
    from lmstream.train.setup import build_model

    cfg = load_training_config(config)
    torch.manual_seed(0)
    precision = build_precision(cfg.runtime.precision, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build_model(cfg, vocab, device)
    env = dist.DistEnv(device=device)
    model = dist.parallelize(model, env, strategy="ddp", compile=cfg.runtime.compile)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.peak_lr, device)
    d = cfg.data
    micro = [
        Batch.from_rows(
            torch.randint(0, vocab, (d.batch_size, d.sequence_length + 1), device=device)
        )
        for _ in range(d.gradient_accumulation_steps)
    ]
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        loss = forward_backward(model, micro, precision, device)
        optimizer_step(model, optimizer, precision, loss, cfg.peak_lr, cfg.optimizer.max_grad_norm)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    del model, optimizer, micro
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tokens = d.batch_size * d.gradient_accumulation_steps * d.sequence_length
    return tokens / statistics.median(times)


def measure(name: str, workdir: Path, tokenizer_json: Path, vocab: int, args) -> dict:
    config = write_config(workdir, name, tokenizer_json, args)
    batch, accum, compile = variant_shape(name, args)
    tokens_per_step = batch * accum * args.seq
    loop = run_loop(config)
    records = [json.loads(x) for x in (config.parent / "metrics.jsonl").read_text().splitlines()]
    figures = loop_figures(records, args.every, tokens_per_step)
    bare = bare_tokens_per_s(config, vocab, args.device, args.bare_steps, warmup=2)
    step_s = tokens_per_step / bare
    save_s = figures["eval_and_checkpoint_s"]
    amortised = None
    if save_s is not None:  # at the seed's cadence (checkpoint every 1,500, eval every 4,500)
        amortised = save_s / (SEED_CHECKPOINT_EVERY * step_s)
    result = {
        "variant": name, "batch": batch, "accum": accum, "compile": compile,
        "loop_tokens_per_s": figures["tokens_per_s"], "bare_tokens_per_s": bare,
        "overhead": 1.0 - figures["tokens_per_s"] / bare, "steady_steps": figures["steady_steps"],
        "eval_and_checkpoint_s": save_s, "amortised_at_seed_cadence": amortised,
        "run_wall_s": loop["wall_s"], "peak_memory_gb": max(
            (r.get("memory_gb", 0.0) for r in records), default=0.0
        ),
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def report(results: list[dict], args, vocab: int) -> str:
    rows = []
    for r in results:
        amort = r["amortised_at_seed_cadence"]
        rows.append(
            [
                r["variant"],
                f"{r['batch']} x {r['accum']}" + (", compile" if r["compile"] else ""),
                fmt_int(r["loop_tokens_per_s"]),
                fmt_int(r["bare_tokens_per_s"]),
                f"{100 * r['overhead']:.1f}%",
                "n/a"
                if r["eval_and_checkpoint_s"] is None
                else f"{r['eval_and_checkpoint_s']:.1f}",
                "n/a" if amort is None else f"{100 * amort:.2f}%",
                "yes" if r["overhead"] < GOAL_OVERHEAD else "no",
            ]
        )
    return "\n".join(
        [
            "## Training loop overhead on one GPU: `lmstream train` vs the bare step (1B, bf16)",
            "",
            f"- Command: `{' '.join(['python bench/gpu_loop.py', *args.argv])}`",
            f"- Machine: {machine_description(args.device)}",
            f"- Date: {today()}",
            f"- {'Tiny smoke' if args.cpu_smoke else 'Seed 1B'} model, vocabulary {vocab} (BPE on "
            f"the KJV corpus), sequence {args.seq}, {args.precision}, {args.num_workers} DataLoader workers tokenizing; "
            f"{args.steps} loop steps logged every step, evaluation ({args.eval_batches} batches) "
            f"+ checkpoint every {args.every}; bare = median of {args.bare_steps} steps",
            "- Overhead is the steady state (steps without evaluation or checkpoint); the "
            "evaluation + checkpoint cost is the extra time of the step after one, then amortised "
            f"at the seed's cadence (checkpoint every {SEED_CHECKPOINT_EVERY} steps)",
            "",
            markdown_table(
                [
                    "variant",
                    "micro-batch x accum",
                    "loop tokens/s",
                    "bare tokens/s",
                    "overhead",
                    "eval+ckpt s",
                    "amortised",
                    f"< {GOAL_OVERHEAD:.0%}",
                ],
                rows,
            ),  # fmt: skip
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", type=Path, default=None, help="corpus, tokenizer and runs")
    p.add_argument("--prepare-only", action="store_true", help="write corpus + tokenizer, exit")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU: checks the logic")
    p.add_argument("--vocab", type=int, default=32000, help="BPE vocabulary size to train")
    p.add_argument("--variants", default=",".join(VARIANTS), help=", ".join(VARIANTS))
    p.add_argument("--steps", type=int, default=8, help="loop optimizer steps per variant")
    p.add_argument("--every", type=int, default=4, help="evaluation + checkpoint cadence")
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--bare-steps", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--record", action="store_true", help="write the section in BENCHMARKS.md")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    args.seq, args.device, args.precision = SEQ, torch.device("cuda", 0), "bf16"
    if args.cpu_smoke:
        args.seq, args.device, args.precision = 64, torch.device("cpu"), "fp32"
        args.vocab, args.num_workers, args.eval_batches = min(args.vocab, 300), 1, 1
        args.steps, args.every, args.bare_steps = 6, 2, 2
    if args.steps < args.every + 3:
        p.error("--steps must exceed --every by at least 3 (warm-up and a steady step)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lmstream-gpu-loop-"))
    tokenizer_json = prepare(workdir, args.vocab, 2000 if args.cpu_smoke else None)
    if args.prepare_only:
        print(f"prepared {workdir}")
        return 0
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return 2
    from lmstream.tokenizer import load_tokenizer

    torch.backends.cuda.matmul.allow_tf32 = True
    vocab = load_tokenizer(tokenizer_json).get_vocab_size()
    results = [measure(name, workdir, tokenizer_json, vocab, args) for name in args.variants]
    write_result("gpu_loop_cpu_smoke" if args.cpu_smoke else "gpu_loop", {"results": results})
    text = report(results, args, vocab)
    print(text)
    if args.record and not args.cpu_smoke:
        update_benchmarks_md("gpu_loop", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
