"""The seed's 1B model on one CUDA GPU: tokens/s, MFU and peak memory, with and without
torch.compile and activation checkpointing.

    python bench/gpu_1b.py [--batch-size 8] [--record]     # needs a CUDA GPU (H100 / H200)
    python bench/gpu_1b.py --cpu-smoke                      # checks the logic on CPU, tiny model
    python bench/gpu_1b.py --document-masking [--doc-tokens 600]   # each variant also masked

The model is the "1b" preset (the seed's ``model:`` section exactly) with a 50,000-token
vocabulary, bf16 autocast over fp32 master weights (what ``runtime.precision: bf16`` does), sequence
length 2048, fused AdamW from ``build_optimizer``. Each variant is a fresh model with
``distributed.apply_activation_checkpointing`` then ``apply_compile`` applied the way the training
loop applies them. MFU = tokens/s x ``Transformer.flops_per_token(seq)`` / peak, with the dense
bf16 peak of an H100/H200 SXM (989 TFLOPS) unless ``--peak-tflops`` says otherwise.
Published anchors for a 1B model on one H100: OLMo-core about 55,000 tokens/s (4k context),
llm-foundry 45,455 tokens/s = 41.8% MFU. Goal: MFU >= 50%.

``--document-masking`` adds, after each variant, the same variant with
``model.document_masking`` (flex attention on CUDA) on rows packed with documents of mean
``--doc-tokens`` tokens, and reports its tokens/s relative to plain causal (goal: >= 0.9x).

More variants (``--variants``): the chunked loss (train/loss.py) and FP8 (torchao float8 linears,
compute capability 8.9+), whose MFU is given against the same bf16 peak so the rows compare
directly (the FP8 peak is twice it). ``--seqs 2048,4096,8192`` sweeps the sequence length at the
same tokens per step. Each row also gives train/memory_plan.py's estimate ("planned GiB", goal:
within 15% of the measured peak). ``--train`` runs the seed YAML through the real ``lmstream
train`` instead (gpu_1b_train.py).

Without CUDA (and without --cpu-smoke) it exits with status 2 and says so: it never reports a
GPU number it did not measure.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

from _common import bench_parser, parse, publish, report_head
from bench_document_mask import SEPARATOR, packed_rows
from harness import fmt_int, markdown_table, median, time_steps
from lmstream.config import ModelConfig, OptimizerConfig, TrainingConfig
from lmstream.distributed import apply_activation_checkpointing, apply_compile
from lmstream.model.presets import model_preset
from lmstream.model.transformer import Transformer
from lmstream.train.device_defaults import LOSS_CHUNK_TOKENS
from lmstream.train.fp8 import convert_to_fp8
from lmstream.train.memory_plan import plan_memory
from lmstream.train.optim import build_optimizer

H100_BF16_PEAK_TFLOPS = 989.0
VARIANTS = {  # name -> (compile, activation checkpointing, chunked loss, fp8)
    "eager": (False, False, False, False),
    "compile": (True, False, False, False),
    "eager + AC": (False, True, False, False),
    "compile + AC": (True, True, False, False),
    "compile + chunked loss": (True, False, True, False),
    "compile + chunked loss + fp8": (True, False, True, True),
}
DEFAULT_VARIANTS = "eager,compile,eager + AC,compile + AC"
NO_CUDA_MESSAGE = (
    "gpu_1b.py: no CUDA device is available; this benchmark needs one GPU (H100/H200). "
    "Nothing was measured. To check its logic on CPU run: python bench/gpu_1b.py --cpu-smoke"
)


def measure_variant(
    cfg: ModelConfig,
    *,
    vocab: int,
    seq: int,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    dtype: torch.dtype | None,
    compile: bool,
    activation_checkpointing: bool,
    peak_tflops: float,
    chunked_loss: bool = False,
    fp8: bool = False,
    doc_tokens: int | None = None,
) -> dict:
    """Median tokens/s, MFU and peak memory of full optimizer steps for one variant; with
    ``doc_tokens``, document-masked on rows of documents of that mean length."""
    if doc_tokens is not None:
        update = {"document_masking": True, "document_separator_id": SEPARATOR}
        cfg = cfg.model_copy(update=update)
    torch.manual_seed(0)
    with device:  # build (and init) directly on the device: no 4 GiB CPU detour for 1B
        model = Transformer(cfg, vocab)
    model.loss_chunk_tokens = LOSS_CHUNK_TOKENS if chunked_loss else 0
    if fp8:  # the loop's order: float8 conversion, then AC, then compile
        model = convert_to_fp8(model)
    if activation_checkpointing:  # the loop's order: AC, then compile (torchtitan)
        apply_activation_checkpointing(model.blocks)
    if compile:
        apply_compile(model.blocks)
    optimizer = build_optimizer(model, OptimizerConfig(learning_rate=1e-4), 1e-4, device)
    if doc_tokens is None:
        tokens = torch.randint(0, vocab, (batch, seq + 1), device=device)
    else:
        tokens = packed_rows(batch, seq, vocab, doc_tokens).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def step() -> None:
        with autocast:
            _, loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    time_steps(step, steps=0, warmup=warmup)  # includes compilation
    warmup_s = time.perf_counter() - start
    tps = batch * seq / median(time_steps(step, steps=steps, warmup=0))
    flops = model.flops_per_token(seq)
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    plan = _planned_gib(cfg, vocab, seq, batch, activation_checkpointing, chunked_loss, fp8)
    return {
        "planned_gib": plan,
        "tokens_per_s": tps,
        "mfu": tps * flops / (peak_tflops * 1e12),
        "peak_gib": peak_gib,
        "warmup_s": warmup_s,
        "flops_per_token": flops,
        "params": model.num_parameters(),
    }


def _planned_gib(cfg, vocab, seq, batch, ac, chunked, fp8) -> float:
    """train/memory_plan.py's estimate for this variant (goal: within 15% of the peak)."""
    training = TrainingConfig.model_validate({
        "model": cfg.model_dump() | {"vocab_size": vocab, "max_position_embeddings": max(seq, cfg.max_position_embeddings)},
        "tokenizer": {"tokenizer_json": "unused.json"},
        "data": {"batch_size": batch, "sequence_length": seq},
        "optimizer": {"learning_rate": 1e-4},
        "scheduler": {"total_steps": 10},
        "runtime": {"precision": "fp8" if fp8 else "bf16", "activation_checkpointing": ac},
    })  # fmt: skip
    with torch.device("meta"):
        n = Transformer(training.model, vocab).num_parameters()
    return plan_memory(training, n, batch, chunked_loss=chunked).total / 2**30


def run_variants(args: argparse.Namespace, device: torch.device) -> dict[str, dict]:
    """Every variant in turn; an out-of-memory variant is recorded as such, not fatal."""
    if args.cpu_smoke:
        cfg = ModelConfig(
            hidden_size=64, intermediate_size=256, num_layers=2, num_attention_heads=4,
            max_position_embeddings=args.seq,
        )  # fmt: skip
        dtype = None  # bf16 matmuls are 50-300x slower on CPUs without bf16 units
    else:
        cfg, dtype = model_preset("1b"), torch.bfloat16
    results = {}
    for seq in args.seqs:
        # A sweep keeps the tokens per step: batch x seq as at the first length.
        batch = max(1, args.batch_size * args.seqs[0] // seq)
        cfg_seq = cfg.model_copy(
            update={"max_position_embeddings": max(seq, cfg.max_position_embeddings)}
        )
        runs = [(name, None) for name in args.variants]
        if args.document_masking:
            runs = [r for name in args.variants for r in ((name, None), (name, args.doc_tokens))]
        for base, doc_tokens in runs:
            compile, ac, chunked, fp8 = VARIANTS[base]
            name = base if doc_tokens is None else f"{base} + document mask"
            label = name if len(args.seqs) == 1 else f"{name} @ {seq} x {batch}"
            plain = base if len(args.seqs) == 1 else f"{base} @ {seq} x {batch}"
            if fp8 and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
                results[label] = {"error": "no FP8 on this device"}
                continue
            try:
                results[label] = measure_variant(
                    cfg_seq, vocab=args.vocab, seq=seq, batch=batch, steps=args.steps,
                    warmup=args.warmup, device=device, dtype=dtype, compile=compile,
                    activation_checkpointing=ac, peak_tflops=args.peak_tflops,
                    chunked_loss=chunked, fp8=fp8, doc_tokens=doc_tokens,
                )  # fmt: skip
                if doc_tokens is not None and "tokens_per_s" in results.get(plain, {}):
                    ratio = results[label]["tokens_per_s"] / results[plain]["tokens_per_s"]
                    results[label]["vs_causal"] = ratio
            except torch.cuda.OutOfMemoryError:
                results[label] = {"error": f"out of memory at batch size {batch}"}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"{label:14} {results[label]}", flush=True)
    return results


def report(results: dict[str, dict], args: argparse.Namespace, device: torch.device) -> str:
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, r["error"], "", "", "", ""])
            continue
        peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        rows.append(
            [
                name,
                fmt_int(r["tokens_per_s"])
                + (f" ({r['vs_causal']:.2f}x causal)" if "vs_causal" in r else ""),
                f"{100 * r['mfu']:.1f}%",
                peak,
                f"{r['planned_gib']:.1f}",
                f"{r['warmup_s']:.0f}",
            ]
        )
    model = "tiny CPU smoke model" if args.cpu_smoke else "seed 1B preset"
    return "\n".join(
        [
            *report_head(
                f"1B on one GPU: tokens/s, MFU, peak memory ({model})", args.command, device
            ),
            f"- Sequence {args.seq}, batch {args.batch_size}, vocabulary {args.vocab}, "
            f"{'fp32' if args.cpu_smoke else 'bf16 autocast, fp32 master weights'}, "
            f"MFU against {args.peak_tflops:g} TFLOPS; median of {args.steps} steps after "
            f"{args.warmup} warm-up steps",
            "",
            markdown_table(
                ["variant", "tokens/s", "MFU", "peak GiB", "planned GiB", "warm-up s"], rows
            ),
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser(__doc__, quick="fewer timed and warm-up steps")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU: checks the logic")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--seq", type=int, default=2048, help="sequence length")
    p.add_argument("--vocab", type=int, default=50000, help="vocabulary size (the seed's 50k)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation) per variant")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_TFLOPS)
    p.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help="comma-separated: " + ", ".join(VARIANTS)
    )
    p.add_argument(
        "--seqs",
        default=None,
        help="sequence-length sweep, e.g. 2048,4096,8192 (batch scaled "
        "to keep the tokens per step); default: --seq",
    )
    p.add_argument("--workdir", type=Path, default=None, help="--train: corpus + tokenizer")
    p.add_argument(
        "--train",
        action="store_true",
        help="the seed YAML through the real `lmstream train` "
        "(as written, with the new defaults, with fp8): see gpu_1b_train.py",
    )
    p.add_argument(
        "--document-masking",
        action="store_true",
        help="also time each variant with model.document_masking (flex attention)",
    )
    p.add_argument("--doc-tokens", type=int, default=600, help="mean document length in tokens")
    args = parse(p, argv, __file__)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    args.seqs = [int(x) for x in args.seqs.split(",")] if args.seqs else [args.seq]
    if args.cpu_smoke:
        args.seq, args.batch_size, args.vocab = min(args.seq, 64), min(args.batch_size, 2), 256
        args.seqs = [min(s, 64) for s in args.seqs]
        args.steps, args.warmup = min(args.steps, 2), 2
    elif args.quick:
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.train:
        from gpu_1b_train import main as train_main

        return train_main(args)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (loss) on tensor cores
    results = run_variants(args, device)
    name = "gpu_1b_cpu_smoke" if args.cpu_smoke else "gpu_1b"
    text = report(results, args, device)
    publish(name, {"variants": results}, text, record=args.record and not args.cpu_smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
