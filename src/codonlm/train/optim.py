"""Optimizers: AdamW (default) or Adafactor; weight decay only on matrices (not norms)."""

from __future__ import annotations

import torch

from codonlm.config import TrainConfig


def build_optimizer(model: torch.nn.Module, train: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=train.lr)
    return torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.95), fused=device_type == "cuda")
