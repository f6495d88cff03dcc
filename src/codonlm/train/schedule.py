"""Learning-rate schedules: cosine with linear warmup to min_lr, or warmup + reduce-on-plateau."""

from __future__ import annotations

import math


def cosine_lr(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


class Plateau:
    """Halve the learning rate once `patience` epochs in a row bring no better val loss (floor: min_lr):
    with patience 2, the second stalled epoch halves it, so the epoch after trains at half."""

    def __init__(self, lr: float, min_lr: float, patience: int, factor: float = 0.5):
        self.lr, self.min_lr, self.patience, self.factor = lr, min_lr, patience, factor
        self.best = math.inf
        self.bad_epochs = 0

    def step(self, val_loss: float) -> None:
        if val_loss < self.best:
            self.best, self.bad_epochs = val_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.lr = max(self.min_lr, self.lr * self.factor)
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"lr": self.lr, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.best, self.bad_epochs = state["lr"], state["best"], state["bad_epochs"]

    def lr_at(self, step: int, warmup_steps: int) -> float:
        if warmup_steps and step < warmup_steps:
            return self.lr * (step + 1) / warmup_steps
        return self.lr
