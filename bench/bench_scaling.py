"""Scaling: training tokens/s, achieved FLOP/s and peak memory against model size and sequence length.

    python bench/bench_scaling.py [--quick] [--record] [--sizes tiny,small,125m] [--device cpu]

Each point is one full lmstream training step (forward with the model's own fp32 loss, backward,
AdamW from ``build_optimizer``) measured in a fresh subprocess, so the peak memory of one point is
not hidden by an earlier, larger one. Peak memory is the process's peak resident set on CPU (the
table also gives the baseline of an idle interpreter with torch loaded, so the model's share is
visible) and ``torch.cuda.max_memory_allocated`` on CUDA. Achieved GFLOP/s uses
``Transformer.flops_per_token`` and is comparable to the device's matmul peak (about 115-145
GFLOP/s fp32 on the 2-core benchmark CPU).

Writes a markdown table (stdout, and BENCHMARKS.md with --record), bench/results/scaling.json and
a chart bench/results/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import bench_parser, parse, publish, report_head
from harness import RESULTS_DIR, fmt_int, markdown_table, median, time_steps
from lmstream.config import ModelConfig, OptimizerConfig
from lmstream.model.presets import PRESETS
from lmstream.model.transformer import Transformer
from lmstream.train.optim import build_optimizer

# Presets by name, plus "small" between tiny and 125m and "micro" for smoke tests.
SIZES: dict[str, dict] = {
    "micro": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 1024,
    },
    "small": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_layers": 8,
        "num_attention_heads": 8,
        "max_position_embeddings": 2048,
    },
    **PRESETS,
}


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_point(
    size: str, seq: int, batch: int, steps: int, vocab: int, device: str = "cpu"
) -> dict:
    """One point, in this process: median seconds per optimizer step and peak memory."""
    dev = torch.device(device)
    baseline = _peak_rss_mib()
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SIZES[size], "max_position_embeddings": max(seq, 128)})
    model = Transformer(cfg, vocab).to(dev)
    optimizer = build_optimizer(model, OptimizerConfig(learning_rate=1e-4), 1e-4, dev)
    tokens = torch.randint(0, vocab, (batch, seq + 1), device=dev)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> None:
        _, loss = model(inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    step()  # warm-up
    cpu = time.process_time()
    seconds = median(time_steps(step, steps=steps, warmup=0))
    # CPU time of this process (all threads): barely moved by other jobs on shared cores.
    cpu_tps = batch * seq * steps / (time.process_time() - cpu)
    tps = batch * seq / seconds
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _peak_rss_mib()
    return {
        "size": size,
        "params": model.num_parameters(),
        "seq": seq,
        "batch": batch,
        "seconds_per_step": seconds,
        "tokens_per_s": tps,
        "tokens_per_cpu_s": cpu_tps,
        "gflops_per_s": tps * model.flops_per_token(seq) / 1e9,
        "peak_mib": peak,
        "baseline_mib": baseline if dev.type == "cpu" else 0.0,
    }


def measure_in_subprocess(size: str, seq: int, batch: int, steps: int, vocab: int, device: str):
    """measure_point in a fresh interpreter (a clean peak-memory counter per point)."""
    cmd = [sys.executable, __file__, "--point", size, str(seq), str(batch), str(steps)]
    cmd += ["--vocab", str(vocab), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"size": size, "seq": seq, "batch": batch, "error": tail[0]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan(quick: bool, sizes: list[str]) -> list[tuple[str, str, int, int, int]]:
    """(sweep, size, seq, batch, timed steps): the size sweep, then the sequence-length sweep."""
    if quick:
        return [
            ("size", "micro", 64, 2, 1),
            ("size", "tiny", 64, 2, 1),
            ("seq", "micro", 32, 4, 1),
            ("seq", "micro", 128, 1, 1),
        ]
    # Big models get one timed step: on a CPU a 125m step takes seconds.
    points = [
        ("size", s, 256, 2, 1 if s in ("125m", "350m", "760m", "1b", "3b") else 2) for s in sizes
    ]
    # Sequence sweep on "tiny" at a constant 2048 tokens per step.
    points += [("seq", "tiny", t, 2048 // t, 2) for t in (128, 256, 512, 1024)]
    return points


def chart(points: list[dict], path: Path) -> None:
    """Three panels: tokens/s and peak memory against parameters, tokens/s against seq length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if "error" not in p]
    by_size = [p for p in ok if p.get("sweep") == "size"]
    by_seq = [p for p in ok if p.get("sweep") == "seq"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    params = [p["params"] / 1e6 for p in by_size]
    axes[0].loglog(params, [p["tokens_per_s"] for p in by_size], "o-")
    axes[0].set(xlabel="parameters (M)", ylabel="tokens/s", title="Throughput vs model size")
    axes[1].loglog(params, [p["peak_mib"] for p in by_size], "s-", color="tab:red")
    axes[1].set(xlabel="parameters (M)", ylabel="peak memory (MiB)", title="Peak memory vs size")
    for p, x in zip(by_size, params, strict=True):
        axes[0].annotate(p["size"], (x, p["tokens_per_s"]))
        axes[1].annotate(p["size"], (x, p["peak_mib"]))
    axes[2].semilogx([p["seq"] for p in by_seq], [p["tokens_per_s"] for p in by_seq], "o-", base=2)
    axes[2].set(
        xlabel="sequence length",
        ylabel="tokens/s",
        title="Throughput vs sequence length",
    )
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(points: list[dict], command: str, device: str) -> str:
    """BENCHMARKS.md section: one table per sweep."""
    header = [
        "model",
        "params",
        "seq x batch",
        "tokens/s",
        "tokens/CPU-s",
        "GFLOP/s",
        "peak MiB",
        "s/step",
    ]

    def rows(sweep: str) -> list[list[object]]:
        out = []
        for p in (q for q in points if q["sweep"] == sweep):
            if "error" in p:
                out.append(
                    [
                        p["size"],
                        "",
                        f"{p['seq']} x {p['batch']}",
                        "failed: " + p["error"],
                        "",
                        "",
                        "",
                    ]
                )
                continue
            out.append(
                [
                    p["size"],
                    f"{p['params'] / 1e6:.1f}M",
                    f"{p['seq']} x {p['batch']}",
                    fmt_int(p["tokens_per_s"]),
                    fmt_int(p["tokens_per_cpu_s"]),
                    f"{p['gflops_per_s']:.1f}",
                    fmt_int(p["peak_mib"]),
                    f"{p['seconds_per_step']:.2f}",
                ]
            )
        return out

    baselines = [p["baseline_mib"] for p in points if p.get("baseline_mib")]
    memory_note = (
        f"peak resident memory of the whole process (an idle interpreter with torch loaded: "
        f"about {fmt_int(median(baselines))} MiB)"
        if device == "cpu" and baselines
        else "torch.cuda.max_memory_allocated"
    )
    return "\n".join(
        [
            *report_head(
                f"Scaling: throughput and memory vs model size and sequence length ({device}, fp32)",
                command,
                torch.device(device),
            ),
            "- One full step (forward + fp32 loss + backward + AdamW), each point in a fresh process; "
            f"peak MiB = {memory_note}. GFLOP/s (wall) from `Transformer.flops_per_token`. "
            "tokens/CPU-s: tokens per second of this process's CPU time (all threads), robust to "
            "other jobs on shared cores.",
            "- Chart: bench/results/scaling.png",
            "",
            "By model size (presets; vocabulary " + str(points[0].get("vocab", "")) + "):",
            "",
            markdown_table(header, rows("size")),
            "",
            "By sequence length (constant tokens per step):",
            "",
            markdown_table(header, rows("seq")),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, quick="minuscule points only (smoke run)")
    p.add_argument(
        "--sizes", default="tiny,small,125m", help="comma-separated sizes: " + ",".join(SIZES)
    )
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size of every model")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--point", nargs=4, metavar=("SIZE", "SEQ", "BATCH", "STEPS"), help=argparse.SUPPRESS
    )
    args = parse(p, argv, __file__)
    if args.point:  # child process: one measurement, printed as JSON
        size, seq, batch, steps = args.point[0], *map(int, args.point[1:])
        print(json.dumps(measure_point(size, seq, batch, steps, args.vocab, args.device)))
        return 0
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"--sizes: unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here")
    vocab = 512 if args.quick else args.vocab
    points = []
    for sweep, size, seq, batch, steps in plan(args.quick, sizes):
        point = measure_in_subprocess(size, seq, batch, steps, vocab, args.device)
        points.append({**point, "sweep": sweep, "vocab": vocab})
        print(
            f"{sweep:4} {size:6} seq {seq:5} x {batch:3}: "
            + (
                point.get("error")
                or f"{point['tokens_per_s']:,.0f} tokens/s, {point['peak_mib']:,.0f} MiB"
            ),
            flush=True,
        )
    chart(points, RESULTS_DIR / "scaling.png")
    text = report(points, args.command, args.device)
    publish("scaling", {"points": points}, text, record=args.record and not args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
