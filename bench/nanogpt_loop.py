"""The baseline of bench_cpu_small.py: a minimal single-file training loop of the nanoGPT kind.

    python bench/nanogpt_loop.py --data train.bin --vocab 2048 --steps 2000

Random windows of ``--seq + 1`` tokens from an in-memory uint16 array (nanoGPT's ``get_batch``),
lmstream's Transformer (the same model as the lmstream run), AdamW with weight decay on the
matrices only (fused, as lmstream builds it), gradient clipping at 1.0, warmup then cosine, a
final torch.save of model and optimizer. No evaluation, no logging beyond one final line: the
least a training script can do, timed from the process start by the driver.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from lmstream.config import ModelConfig
from lmstream.model.transformer import Transformer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    torch.manual_seed(1337)
    data = np.fromfile(args.data, dtype=np.uint16)
    cfg = ModelConfig(
        hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_layers=args.layers,
        num_attention_heads=args.heads, max_position_embeddings=args.seq,
        activation="gelu", norm="layernorm", tie_embeddings=True,
    )  # fmt: skip
    model = Transformer(cfg, args.vocab)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=True)

    def get_batch():
        ix = torch.randint(len(data) - args.seq - 1, (args.batch,))
        rows = torch.stack(
            [torch.from_numpy(data[i : i + args.seq + 1].astype(np.int64)) for i in ix]
        )
        return rows[:, :-1], rows[:, 1:]

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * progress))

    start = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = get_batch()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - start
    if args.out:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, args.out)
    print(f"loss {loss.item():.4f} after {args.steps} steps, loop {elapsed:.1f} s")


if __name__ == "__main__":
    main()
