"""The seed's training.yaml through the real `lmstream train` on one GPU (``gpu_1b.py --train``).

    python bench/gpu_1b.py --train [--steps 40] [--record]   # needs a CUDA GPU
    python bench/gpu_1b.py --train --cpu-smoke                # the logic on CPU, tiny model

The seed YAML (tests/fixtures/seed_training.yaml, what ``orchestrate --model-size 1b`` writes)
with only what a bench must change: its paths (tokenizer, data, run folders) point at a KJV
corpus and BPE prepared by ``gpu_loop.py --prepare-only --workdir DIR`` (the GPU machine has no
registry), the schedule is ``--steps`` long with 2 warm-up steps, and it logs every step,
checkpointing only at the end. Variants:

- ``seed as written``: the settings as they ran before ``auto`` (eager, micro-batch 2 x 32,
  plain loss): ``compile: false, micro_batch: fixed, chunked_loss: false``;
- ``seed, new defaults``: the same YAML with nothing added (compile, micro-batch search and
  chunked loss all ``auto``);
- ``seed, fp8``: the new defaults with ``precision: fp8``.

Tokens/s is the median of the per-step log intervals after the first two; MFU against 989
TFLOPS (bf16 dense, H100/H200 SXM; ``--peak-tflops``) for every variant, so rows compare.
Goals (issue #16): >= 50% MFU for the seed as orchestrate writes it (new defaults), FP8 >= 1.25x
the best bf16 tokens/s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml

from bench_loop_overhead import run_loop
from gpu_loop import prepare
from harness import (
    fmt_int,
    machine_description,
    markdown_table,
    today,
    update_benchmarks_md,
    write_result,
)

SEED_YAML = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seed_training.yaml"
VARIANTS = {
    "seed as written": {"compile": False, "micro_batch": "fixed", "chunked_loss": False},
    "seed, new defaults": {},
    "seed, fp8": {"precision": "fp8"},
}


def seed_config(workdir: Path, name: str, tokenizer_json: Path, args) -> tuple[Path, dict]:
    """RUN/training.yaml: the seed's, repointed and shortened, with the variant's runtime keys."""
    cfg = yaml.safe_load(SEED_YAML.read_text())
    run_dir = workdir / ("run-" + name.replace(" ", "-").replace(",", ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg["tokenizer"] = {"tokenizer_json": str(tokenizer_json.resolve())}
    data = cfg["data"]
    data.update(train_shards=[str((workdir / "train.jsonl").resolve())], validation_shards=[])
    data.update(cache_dir=str(run_dir / "cache"), validation_documents=200)
    cfg["scheduler"].update(warmup_steps=2, total_steps=args.steps)
    rt = cfg["runtime"]
    rt.update(log_every_n_steps=1, device="cuda" if not args.cpu_smoke else "cpu")
    rt["checkpoint"].update(directory=str(run_dir / "checkpoints"), every_n_steps=None, max_keep=1)
    rt["evaluation"].update(every_n_steps=None, max_batches=4)
    rt["evaluation"]["best"]["directory"] = str(run_dir / "best")
    rt["logging"]["tensorboard"] = str(run_dir / "tensorboard")
    rt.update(VARIANTS[name])
    if args.cpu_smoke:  # a tiny model in fp32: the logic only
        cfg["model"].update(hidden_size=64, intermediate_size=256, num_layers=2,
                            num_attention_heads=4, num_key_value_heads=4,
                            max_position_embeddings=64)  # fmt: skip
        data.update(sequence_length=64, batch_size=2, gradient_accumulation_steps=2, num_workers=1)
        rt["precision"] = VARIANTS[name].get("precision", "fp32")  # fp8: its refusal here
    path = run_dir / "training.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, cfg


def measure(name: str, workdir: Path, tokenizer_json: Path, flops_per_token, args) -> dict:
    config, cfg = seed_config(workdir, name, tokenizer_json, args)
    try:
        loop = run_loop(config)
    except SystemExit as err:  # e.g. fp8 refused on this card: recorded, not fatal
        return {"variant": name, "error": str(err).splitlines()[-1][:200]}
    records = [json.loads(x) for x in (config.parent / "metrics.jsonl").read_text().splitlines()]
    d = cfg["data"]
    tps = loop["tokens_per_s"]
    return {
        "variant": name, "tokens_per_s": tps,
        "mfu": tps * flops_per_token(d["sequence_length"]) / (args.peak_tflops * 1e12),
        "peak_memory_gb": max((r.get("memory_gb", 0.0) for r in records), default=0.0),
        "run_wall_s": loop["wall_s"],
    }  # fmt: skip


def main(args) -> int:
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_1b.py --train: no CUDA device; nothing was measured", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or "/tmp/lmstream-gpu-1b-train")
    args.steps = max(args.steps, 6)  # the first two log intervals are start-up
    tokenizer_json = prepare(
        workdir, 300 if args.cpu_smoke else 32000, 2000 if args.cpu_smoke else None
    )
    from lmstream.config import load_training_config
    from lmstream.model.transformer import Transformer
    from lmstream.tokenizer import load_tokenizer

    vocab = load_tokenizer(tokenizer_json).get_vocab_size()
    first, _ = seed_config(workdir, "seed as written", tokenizer_json, args)
    with torch.device("meta"):
        model = Transformer(load_training_config(first).model, vocab)
    results = [measure(n, workdir, tokenizer_json, model.flops_per_token, args) for n in VARIANTS]
    write_result(
        "gpu_1b_train_cpu_smoke" if args.cpu_smoke else "gpu_1b_train", {"results": results}
    )
    rows = [
        [r["variant"], r["error"], "", ""] if "error" in r else
        [r["variant"], fmt_int(r["tokens_per_s"]), f"{100 * r['mfu']:.1f}%", f"{r['peak_memory_gb']:.1f}"]
        for r in results
    ]  # fmt: skip
    text = "\n".join([
        "## The seed YAML through `lmstream train` on one GPU (1B)",
        "",
        f"- Command: `{' '.join(['python bench/gpu_1b.py', *args.argv])}`",
        f"- Machine: {machine_description(torch.device('cuda', 0) if not args.cpu_smoke else None)}",
        f"- Date: {today()}; vocabulary {vocab} (BPE on the KJV corpus), {args.steps} steps",
        "",
        markdown_table(["variant", "tokens/s", "MFU", "peak GB"], rows),
    ])  # fmt: skip
    print(text)
    if args.record and not args.cpu_smoke:
        update_benchmarks_md("gpu_1b_train", text)
    return 0
