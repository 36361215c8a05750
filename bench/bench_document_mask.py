"""The cost of document-aware attention (``model.document_masking``) against plain causal
attention: tokens/s of a full training step of the same model, same weights, same packed batch.

    python bench/bench_document_mask.py [--quick] [--record]

CPU, fp32, the "tiny" preset (hidden 256, 4 layers, 4 heads) at sequence 256, batch 8: the masked
model runs SDPA with a dense (B, 1, T, T) block-diagonal causal mask, the exact path used off
CUDA. The rows hold documents of random lengths (mean ``--doc-tokens``) separated by the
separator token, as the packer cuts them. Before timing, the benchmark checks that the masked
model gives the same logits as the plain one on a row holding a single document. Contenders
alternate within one process (order reversed every other repetition); the ratio is the median
of per-repetition ratios. On a GPU the masked path is flex attention instead: measure it with
``python bench/gpu_1b.py --document-masking``.
"""

from __future__ import annotations

import argparse

import torch

from _common import bench_parser, parse, publish, report_head
from harness import fmt_int, markdown_table, median, time_steps
from lmstream.config import ModelConfig, OptimizerConfig
from lmstream.model.presets import model_preset
from lmstream.model.transformer import Transformer
from lmstream.train.optim import build_optimizer

SEPARATOR = 0


def packed_rows(batch: int, seq: int, vocab: int, doc_tokens: int, seed: int = 0) -> torch.Tensor:
    """(batch, seq + 1) ids: documents of geometric lengths (mean ``doc_tokens``) each ended by
    SEPARATOR, packed end to end across rows like the loader's packer."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(1, vocab, (batch * (seq + 1),), generator=gen)
    ends = torch.rand(rows.shape, generator=gen) < 1.0 / doc_tokens
    rows[ends] = SEPARATOR
    return rows.view(batch, seq + 1)


def build_pair(cfg: ModelConfig, vocab: int) -> tuple[Transformer, Transformer]:
    """(plain, masked) with the same weights."""
    torch.manual_seed(0)
    plain = Transformer(cfg, vocab)
    update = {"document_masking": True, "document_separator_id": SEPARATOR}
    masked = Transformer(cfg.model_copy(update=update), vocab)
    masked.load_state_dict(plain.state_dict())
    return plain, masked


def check_same_function(plain: Transformer, masked: Transformer, vocab: int, seq: int) -> float:
    """Max abs logit difference on a single-document row (must be ~1e-6)."""
    ids = torch.randint(1, vocab, (1, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return float((plain(ids)[0] - masked(ids)[0]).abs().max())


def measure(args: argparse.Namespace) -> dict:
    shape = {"max_position_embeddings": args.seq}
    if args.quick:  # a smoke run checks the logic, not the speed
        shape.update(hidden_size=64, intermediate_size=128, num_layers=2)
    cfg = model_preset("tiny").model_copy(update=shape)
    plain, masked = build_pair(cfg, args.vocab)
    diff = check_same_function(plain, masked, args.vocab, args.seq)
    if diff > 1e-4:
        raise SystemExit(f"the masked model differs on a single document ({diff:.2e}): not timed")
    rows = packed_rows(args.batch_size, args.seq, args.vocab, args.doc_tokens)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    steps = {}
    for name, model in (("causal", plain), ("document mask", masked)):
        opt = build_optimizer(model, OptimizerConfig(learning_rate=1e-4), 1e-4, torch.device("cpu"))

        def step(model=model, opt=opt) -> None:
            _, loss = model(inputs, targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up: allocations, optimizer state
        steps[name] = step
    tps = {name: [] for name in steps}
    ratios = []
    for rep in range(args.repeats):
        order = list(steps) if rep % 2 == 0 else list(reversed(steps))
        got = {n: median(time_steps(steps[n], steps=args.steps, warmup=0)) for n in order}
        for n, seconds in got.items():
            tps[n].append(args.batch_size * args.seq / seconds)
        ratios.append(got["causal"] / got["document mask"])
    docs_per_row = float((rows[:, :-1] == SEPARATOR).sum(-1).float().mean()) + 1
    return {
        "tokens_per_s": {n: median(v) for n, v in tps.items()},
        "ratio_masked_over_causal": median(ratios),
        "single_document_max_abs_diff": diff,
        "documents_per_row": docs_per_row,
        "shape": {"preset": "tiny", "seq": args.seq, "batch": args.batch_size, "vocab": args.vocab},
    }


def report(result: dict, args: argparse.Namespace) -> str:
    t = result["tokens_per_s"]
    rows = [[n, fmt_int(v)] for n, v in t.items()]
    return "\n".join(
        [
            *report_head(
                "Document masking: cost against plain causal attention (CPU, fp32)",
                args.command,
                torch.device("cpu"),
            ),
            f"- Full training step (forward, fp32 loss, backward, AdamW), tiny preset (hidden 256, "
            f"4 layers, 4 heads), sequence {args.seq}, batch {args.batch_size}, vocabulary "
            f"{args.vocab}; documents of mean {args.doc_tokens} tokens "
            f"({result['documents_per_row']:.1f} per row); median of {args.repeats} alternating "
            f"repetitions of {args.steps} steps",
            f"- Same function first: single-document logits differ by "
            f"{result['single_document_max_abs_diff']:.1e}",
            "",
            markdown_table(["attention", "tokens/s"], rows),
            "",
            f"Masked / causal tokens/s: **{result['ratio_masked_over_causal']:.2f}x** (CPU path: "
            "SDPA with a dense block-diagonal mask instead of the causal kernel). No GPU figure is "
            "claimed here: `python bench/gpu_1b.py --document-masking` measures flex attention.",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser(__doc__, quick="a smoke-sized run (never recorded)")
    p.add_argument("--seq", type=int, default=256, help="sequence length")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--vocab", type=int, default=8000, help="vocabulary size")
    p.add_argument("--doc-tokens", type=int, default=100, help="mean document length in tokens")
    p.add_argument("--steps", type=int, default=5, help="timed steps per repetition")
    p.add_argument("--repeats", type=int, default=5, help="alternating repetitions")
    args = parse(p, argv, __file__)
    if args.quick:
        args.seq, args.batch_size, args.vocab = 32, 2, 256
        args.steps, args.repeats, args.doc_tokens = 1, 2, 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    name = "document_mask_quick" if args.quick else "document_mask"
    publish(name, result, report(result, args), record=args.record and not args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
