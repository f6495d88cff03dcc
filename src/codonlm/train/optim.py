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


ADAFACTOR_DEFAULT_LR = 1e-2  # torch.optim.Adafactor's default: the cap of its relative step size


def adafactor_lr_warning(train: TrainConfig) -> str | None:
    """A warning when Adafactor gets an AdamW-sized learning rate (it then barely moves the weights)."""
    if train.optimizer != "adafactor" or train.lr >= ADAFACTOR_DEFAULT_LR:
        return None
    return (f"optimizer adafactor with lr {train.lr:g}: torch's Adafactor steps by lr x RMS(weights), so an "
            f"AdamW-sized lr makes far smaller steps than AdamW (measured on the default corpus: val "
            f"perplexity 62 vs 40); its default lr is {ADAFACTOR_DEFAULT_LR:g}")
