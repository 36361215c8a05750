"""Muon for the transformer blocks' 2-D matrices, AdamW for everything else, as one optimizer.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers") orthogonalises each matrix's
momentum with Newton-Schulz iterations; it is meant for hidden matrices only, so embeddings,
the vocabulary head, norm gains and biases stay on AdamW (the split of modded-nanogpt,
Moonshot's "Muon is Scalable for LLM Training" and torch's own Muon docs). The fused q/k/v and
SwiGLU gate/up matrices are orthogonalised whole, as modded-nanogpt's fused qkv weight was.

The loop, the GradScaler, the checkpoint code and ``torch.distributed.checkpoint`` all expect
one ``torch.optim.Optimizer``: :class:`MuonWithAdamW` is one, whose param groups and state are
those of an inner ``torch.optim.Muon`` and an inner ``torch.optim.AdamW`` (shared objects, not
copies), so ``state_dict``/``load_state_dict`` cover both and resume exactly.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from lmstream.config import OptimizerConfig
from lmstream.errors import ConfigError

MUON_LR, MUON_MOMENTUM = 0.02, 0.95  # Keller Jordan's defaults (torch's Muon: lr 1e-3)
_HIDDEN = re.compile(r"(^|\.)blocks\.")


class MuonWithAdamW(torch.optim.Optimizer):
    """Groups ``[muon matrices, adamw decayed, adamw not decayed]``; ``step`` runs both."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self._muon, self._adamw = muon, adamw
        self._n_muon = len(muon.param_groups)
        super().__init__(muon.param_groups + adamw.param_groups, defaults={})
        self._share()

    def _share(self) -> None:
        """Point the inner optimizers at this one's groups and state (after a load too)."""
        self._muon.param_groups = self.param_groups[: self._n_muon]
        self._adamw.param_groups = self.param_groups[self._n_muon :]
        self._muon.state = self._adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self._muon.step()
        self._adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        # The saved groups carry the saved run's lr_scale (its muon lr / its lr); a resume with
        # changed rates must keep this config's, or set_lr would apply the old ratio.
        scales = [group.get("lr_scale", 1.0) for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, scale in zip(self.param_groups, scales, strict=True):
            group["lr_scale"] = scale
        self._share()


def muon_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list]:
    """(block matrices for Muon, other matrices for AdamW with decay, vectors without)."""
    hidden, matrices, vectors = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.dim() == 2 and _HIDDEN.search(name):
            hidden.append(param)
        else:
            (matrices if param.dim() >= 2 else vectors).append(param)
    return hidden, matrices, vectors


def build_muon(model: nn.Module, cfg: OptimizerConfig, lr: float) -> MuonWithAdamW:
    """Muon at ``muon_learning_rate`` and AdamW at ``lr``; both groups follow the schedule's
    shape through ``lr_scale`` (see lmstream.train.optim.set_lr)."""
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(
            f"optimizer.algorithm: muon needs torch >= 2.9 (torch.optim.Muon); this is torch "
            f"{torch.__version__}: upgrade torch or use adam_w"
        )
    from lmstream.distributed import is_dtensor

    hidden, matrices, vectors = muon_groups(model)
    if any(is_dtensor(p) for p in hidden):
        # Newton-Schulz needs each whole matrix; FSDP2 gives every rank a row shard of it.
        raise ConfigError(
            "optimizer.algorithm: muon does not support FSDP2's sharded parameters yet; set "
            "runtime.parallelism: ddp (or use adam_w with fsdp)"
        )
    muon_lr = cfg.muon_learning_rate if cfg.muon_learning_rate is not None else MUON_LR
    momentum = cfg.muon_momentum if cfg.muon_momentum is not None else MUON_MOMENTUM
    muon = torch.optim.Muon(
        [{"params": hidden, "lr_scale": muon_lr / lr}],
        lr=muon_lr,
        weight_decay=cfg.weight_decay,
        momentum=momentum,
        nesterov=True,
    )
    adamw = torch.optim.AdamW(
        [
            {"params": matrices, "weight_decay": cfg.weight_decay},
            {"params": vectors, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.epsilon,
        fused=True,
    )
    return MuonWithAdamW(muon, adamw)
