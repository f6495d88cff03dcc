"""The training state: one object that is exactly what a checkpoint saves and restores.

Everything a resumed run needs to repeat an uninterrupted one step for step lives here: the model
and optimizer, the position in the data (epoch, batch within it), the schedule, early-stopping
and non-finite counters, the loss sums behind the next curves row, the curve rows themselves,
the precision chosen at the start, and (at save time) the RNG state. `state_dict()` turns it into
tensors and plain values only, so checkpoints load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from codonlm.data.codons import host_itos
from codonlm.model.checkpoint import save_checkpoint
from codonlm.train.schedule import Plateau

_LIVE = ("model", "optimizer", "plateau")  # objects with their own state_dict()


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    plateau: Plateau
    run_id: str
    config: dict  # the resolved config (Config.model_dump(mode="json")): a resumed run is the same run
    precision: dict = field(default_factory=dict)  # {"dtype": ..., "reason": ...}, chosen once per run
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    best_val: float = math.inf  # best full validation loss at an epoch end
    stale_epochs: int = 0  # epochs since best_val improved
    epoch_loss: list[float] = field(default_factory=lambda: [0.0, 0.0])  # summed loss, scored targets
    row_loss: list[float] = field(default_factory=lambda: [0.0, 0.0])  # the same since the last curves row
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    curves: list[dict] = field(default_factory=list)  # train.curves.curve_row dicts

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def state_dict(self) -> dict:
        """The checkpoint payload."""
        payload = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _LIVE}
        payload.update(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                       plateau=self.plateau.state_dict(), itos=host_itos(self.model.cfg.hosts), n_params=self.n_params,
                       rng_cpu=torch.get_rng_state())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            payload["rng_cuda"] = torch.cuda.get_rng_state()
        return payload

    def load_state_dict(self, payload: dict) -> None:
        """Restore from a checkpoint payload (fields an older checkpoint lacks keep their defaults)."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.plateau.load_state_dict(payload["plateau"])
        for f in fields(self):
            if f.name not in _LIVE and f.name in payload:
                setattr(self, f.name, payload[f.name])
        torch.set_rng_state(payload["rng_cpu"])
        if "rng_cuda" in payload and torch.cuda.is_available():
            torch.cuda.set_rng_state(payload["rng_cuda"])

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, self.state_dict())
