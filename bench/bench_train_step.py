"""Training-step throughput: lmstream's Transformer against transformers' LlamaForCausalLM.

    python bench/bench_train_step.py [--quick] [--record]
    python bench/bench_train_step.py --gpu-1b [--record]     # one CUDA GPU, bf16, a Llama-1B shape

Both models get identical shapes (SwiGLU MLP, RMSNorm, RoPE, grouped-query attention, untied
head, like Llama), the same weights, the same batch and the same optimizer step: forward, fp32
cross-entropy, backward, global-norm clipping and AdamW from lmstream's ``build_optimizer``. The
benchmark first checks that the two compute the same function (same weights -> same logits), so
the comparison is about speed only. Then it alternates the contenders (lmstream / Llama, eager /
torch.compile) for several repetitions in this one process and reports median tokens/s and the
lmstream/Llama ratio (goal: >= 1.2x). ``--gpu-1b`` runs the same comparison on one CUDA GPU with a
Llama-1B-like shape (hidden 2048, 20 layers, 32 heads / 8 kv, intermediate 5632, vocabulary 32k,
sequence 2048, batch 8) under bf16 autocast, as ``runtime.precision: bf16`` trains.

torch.compile is applied the way each side is used: lmstream compiles each block in place
(``distributed.apply_compile``, what ``runtime.compile: true`` does); Llama is compiled whole
(``model.compile()``, the usual transformers recipe).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from _common import bench_parser, parse, publish, report_head
from harness import fmt_int, markdown_table, median, time_steps
from lmstream.config import ModelConfig, OptimizerConfig
from lmstream.distributed import apply_compile
from lmstream.export import choose_architecture, convert_state_dict, hf_config
from lmstream.model.transformer import Transformer
from lmstream.train.optim import build_optimizer

GOAL_RATIO = 1.2


@dataclass(frozen=True)
class Shape:
    """One benchmark point: model shape and batch."""

    hidden: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    intermediate: int = 688
    vocab: int = 8000
    seq: int = 256
    batch: int = 8

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=self.seq,
            activation="swiglu",
            norm="rmsnorm",
            norm_eps=1e-6,
            tie_embeddings=False,
        )

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


QUICK = Shape(
    hidden=64, layers=2, heads=4, kv_heads=2, intermediate=172, vocab=512, seq=64, batch=2
)
GPU_1B = Shape(
    hidden=2048, layers=20, heads=32, kv_heads=8, intermediate=5632, vocab=32000, seq=2048, batch=8
)


# ------------------------------------------------------------------------------- the two models


def build_lmstream(shape: Shape, seed: int = 0, device: str = "cpu") -> Transformer:
    torch.manual_seed(seed)
    with torch.device(device):  # initialised in place: no 4 GB host detour at 1B
        return Transformer(shape.model_config(), shape.vocab)


def build_llama_like(ours: Transformer) -> nn.Module:
    """A LlamaForCausalLM with our model's shapes, holding our model's weights.

    Config and weight names come from ``lmstream.export`` (the mapping ``lmstream export`` writes
    and verifies), so the bench compares against exactly what an export would load as.
    """
    from transformers import AutoModelForCausalLM

    arch = choose_architecture(ours.config)  # swiglu + rmsnorm -> LlamaForCausalLM
    llama_cfg = hf_config(ours, arch)
    llama_cfg.use_cache = False
    with torch.device(ours.embed.weight.device):
        llama = AutoModelForCausalLM.from_config(llama_cfg, attn_implementation="sdpa")
    llama.load_state_dict(convert_state_dict(ours, arch), strict=not ours.config.tie_embeddings)
    return llama


def logits_of(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits of either model."""
    if isinstance(model, Transformer):
        return model(inputs)[0]
    return model(input_ids=inputs, use_cache=False).logits


@torch.no_grad()
def max_logit_difference(ours: Transformer, llama: nn.Module, inputs: torch.Tensor) -> float:
    """Largest |difference| between the two models' logits on the same tokens."""
    ours.eval(), llama.eval()
    diff = (logits_of(ours, inputs) - logits_of(llama, inputs)).abs().max().item()
    ours.train(), llama.train()
    return diff


# ------------------------------------------------------------------------------- the train step


def make_train_step(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> Callable[[], torch.Tensor]:
    """One full optimizer step on a fixed batch, identical for both models (on CUDA: bf16
    autocast over fp32 weights, and the step ends synchronized so the clock reads its end)."""
    device = inputs.device
    optimizer = build_optimizer(
        model, OptimizerConfig(learning_rate=3e-4, weight_decay=0.1), 3e-4, device
    )
    cuda = device.type == "cuda"

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = logits_of(model, inputs)
        # The same fp32 loss for both (lmstream's own forward computes exactly this).
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        return loss.detach()

    return step


def random_batch(
    shape: Shape, seed: int = 1, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, shape.vocab, (shape.batch, shape.seq + 1), generator=g).to(device)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def build_contenders(
    shape: Shape, compile_too: bool, device: str = "cpu"
) -> dict[str, Callable[[], torch.Tensor]]:
    """name -> step function; each contender has its own model copy and optimizer."""
    inputs, targets = random_batch(shape, device=device)
    contenders = {}
    modes = ("eager", "compile") if compile_too else ("eager",)
    for mode in modes:
        ours = build_lmstream(shape, device=device)
        llama = build_llama_like(ours)
        if mode == "compile":
            apply_compile(ours.blocks)
            llama.compile()
        contenders[f"lmstream {mode}"] = make_train_step(ours, inputs, targets)
        contenders[f"llama {mode}"] = make_train_step(llama, inputs, targets)
    return contenders


def run(shape: Shape, reps: int, steps: int, compile_too: bool, device: str = "cpu") -> dict:
    """Parity check, then alternating timed repetitions; returns the numbers."""
    ours = build_lmstream(shape, device=device)
    llama = build_llama_like(ours)
    diff = max_logit_difference(ours, llama, random_batch(shape, device=device)[0])
    del ours, llama
    if diff > 1e-3:
        raise SystemExit(f"bench_train_step: models disagree (max |logit diff| {diff:.2e})")
    contenders = build_contenders(shape, compile_too, device)
    per_rep: dict[str, list[float]] = {name: [] for name in contenders}
    per_rep_cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for step in contenders.values():  # warm-up (and compilation) outside the clock
        time_steps(step, steps=0, warmup=2)
    for rep in range(reps):
        # Alternate the order each repetition so neither side always runs first.
        order = list(contenders) if rep % 2 == 0 else list(reversed(contenders))
        for name in order:
            cpu_start = time.process_time()
            times = time_steps(contenders[name], steps=steps, warmup=0)
            # Process CPU time (all threads, user + system) is what this process itself spent:
            # unlike wall time it barely moves when other jobs share the cores.
            per_rep_cpu[name].append(shape.tokens * steps / (time.process_time() - cpu_start))
            per_rep[name].append(shape.tokens / median(times))
    return {
        "shape": shape.__dict__,
        "max_logit_diff": diff,
        "threads": torch.get_num_threads(),
        "tokens_per_s": {name: median(v) for name, v in per_rep.items()},
        "best_tokens_per_s": {name: max(v) for name, v in per_rep.items()},
        "tokens_per_cpu_s": {name: median(v) for name, v in per_rep_cpu.items()},
        "per_repetition": per_rep,
        "per_repetition_cpu": per_rep_cpu,
        "ratio_lmstream_over_llama": paired_ratios(per_rep),
        "cpu_ratio_lmstream_over_llama": paired_ratios(per_rep_cpu),
        "reps": reps,
        "steps_per_rep": steps,
        "device": device,
    }


def paired_ratios(per_rep: dict[str, list[float]]) -> dict[str, float]:
    """lmstream/Llama per mode: the median of per-repetition ratios (the two sides of one
    repetition ran back to back, under the same load from whatever else shares the machine)."""
    return {
        mode: median(
            [
                a / b
                for a, b in zip(per_rep[f"lmstream {mode}"], per_rep[f"llama {mode}"], strict=True)
            ]
        )
        for mode in ("eager", "compile")
        if f"llama {mode}" in per_rep
    }


def report(result: dict, command: str) -> str:
    """BENCHMARKS.md section (markdown)."""
    tps, ratios = result["tokens_per_s"], result["ratio_lmstream_over_llama"]
    best, cpu_ratios = result["best_tokens_per_s"], result["cpu_ratio_lmstream_over_llama"]
    rows = []
    for mode, ratio in ratios.items():
        ok = "yes" if ratio >= GOAL_RATIO else "no"
        rows.append(
            [
                mode,
                f"{fmt_int(tps[f'lmstream {mode}'])} ({fmt_int(best[f'lmstream {mode}'])})",
                f"{fmt_int(tps[f'llama {mode}'])} ({fmt_int(best[f'llama {mode}'])})",
                f"{ratio:.2f}x",
                f"{cpu_ratios[mode]:.2f}x",
                ok,
            ]
        )
    s = result["shape"]
    cuda = result.get("device", "cpu") == "cuda"
    return "\n".join(
        [
            *report_head(
                "Training step: lmstream vs transformers Llama "
                + ("(one GPU, bf16 autocast)" if cuda else "(CPU, fp32)"),
                command,
                torch.device("cuda", 0) if cuda else None,
            ),
            f"- Shapes: hidden {s['hidden']}, {s['layers']} layers, {s['heads']} heads / {s['kv_heads']} kv, "
            f"intermediate {s['intermediate']}, vocab {s['vocab']}, seq {s['seq']}, batch {s['batch']}; "
            "SwiGLU, RMSNorm, untied head; step = forward + fp32 CE + backward + clip + AdamW (build_optimizer: fused)",
            f"- Same function checked first: max |logit difference| {result['max_logit_diff']:.1e}",
            f"- Tokens/s: median (best) of {result['reps']} alternating repetitions x "
            f"{result['steps_per_rep']} steps, {result.get('threads', '?')} threads; ratios: median of the "
            "per-repetition ratios, by wall time and by process CPU time (robust to other jobs "
            "on the same cores)",
            "",
            markdown_table(
                [
                    "mode",
                    "lmstream tokens/s",
                    "Llama tokens/s",
                    "ratio (wall)",
                    "ratio (CPU time)",
                    f"goal >= {GOAL_RATIO}x met (wall)",
                ],
                rows,
            ),
        ]
    )


def profile_table(shape: Shape, model: str = "lmstream", rows: int = 20) -> str:
    """torch.profiler's per-operator table (self CPU time) for two eager steps of one model."""
    from torch.profiler import ProfilerActivity, profile

    ours = build_lmstream(shape)
    net = ours if model == "lmstream" else build_llama_like(ours)
    step = make_train_step(net, *random_batch(shape))
    time_steps(step, steps=0, warmup=2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        time_steps(step, steps=2, warmup=0)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, quick="tiny shapes, eager only (smoke run)")
    p.add_argument("--gpu-1b", action="store_true", help="one CUDA GPU, bf16, Llama-1B shape")
    p.add_argument("--reps", type=int, default=5, help="alternating repetitions")
    p.add_argument("--steps", type=int, default=5, help="timed steps per repetition")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: all)"
    )
    p.add_argument(
        "--profile",
        choices=["lmstream", "llama"],
        help="print torch.profiler's operator table for two eager steps of this model and exit",
    )
    args = parse(p, argv, __file__)
    shape = QUICK if args.quick else GPU_1B if args.gpu_1b else Shape()
    device = "cuda" if args.gpu_1b else "cpu"
    if args.gpu_1b and not torch.cuda.is_available():
        print("bench_train_step: --gpu-1b needs a CUDA device; nothing measured", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        print(profile_table(shape, args.profile))
        return 0
    reps, steps = (2, 2) if args.quick else (args.reps, args.steps)
    result = run(shape, reps, steps, not (args.quick or args.no_compile), device)
    name = "train_step_gpu_1b" if args.gpu_1b else "train_step"
    publish(name, result, report(result, args.command), record=args.record and not args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
