"""A torchrun job for test_token_weights.py: one training step's gradient when the ranks hold
different numbers of counted target tokens. Rank 0 takes two full micro-batches; rank 1 takes a
final batch padded with ignored (-100) targets and then an idle one (weight 0), as a drained
rank does at an epoch's end. Under DDP and then FSDP2, rank 0 writes the full gradients and the
loss the loop would log. Usage: token_weight_job.py OUT.pt"""

from __future__ import annotations

import sys

import torch

from lmstream import distributed as dist
from lmstream.config import ModelConfig
from lmstream.data.packing import Batch
from lmstream.model.transformer import Transformer
from lmstream.train.loop import forward_backward
from lmstream.train.precision import Precision

VOCAB = 64


def tiny_model() -> Transformer:
    """The same tiny model in every process (fp32; no dropout, so ranks and the reference agree)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        hidden_size=16,
        intermediate_size=32,
        num_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
    )
    return Transformer(cfg, VOCAB)


def batches() -> list[list[Batch]]:
    """Each rank's micro-batches of the step: rank 0 counts 32 targets, rank 1 counts 11."""
    g = torch.Generator().manual_seed(3)
    full = [Batch.from_rows(torch.randint(0, VOCAB, (2, 9), generator=g)) for _ in range(2)]
    padded = Batch.from_rows(torch.randint(0, VOCAB, (2, 9), generator=g))
    padded.targets[0, 6:] = -100  # a worker's last tokens, the rest of the row padding
    padded.targets[1, 1:] = -100
    idle = Batch(padded.inputs.clone(), torch.zeros_like(padded.targets), weight=0.0)
    return [full, [padded, idle]]


def main(out: str) -> None:
    env = dist.init_distributed("cpu")
    mine = batches()[env.rank]
    fp32 = Precision("fp32", env.device, None)
    result = {}
    for strategy in ("ddp", "fsdp"):
        model = dist.parallelize(tiny_model(), env, strategy=strategy)
        loss = forward_backward(model, mine, fp32, env.device)
        grads = {}
        for name, p in dist.unwrap(model).named_parameters():
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[name] = grad.detach().clone()
        result[strategy] = {"loss": dist.all_reduce_mean(loss).item(), "grads": grads}
    if env.rank == 0:
        torch.save(result, out)
    dist.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
