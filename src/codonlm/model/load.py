"""Load a trained run's model from its checkpoint (weights_only), for evaluation, export and analysis."""

from __future__ import annotations

from pathlib import Path

import torch

from codonlm.config import Config, parse_config
from codonlm.errors import UserError
from codonlm.model.checkpoint import load_checkpoint
from codonlm.model.tinygpt import TinyGPT


def checkpoint_path(
    run_id_or_path: str, checkpoints_dir: str = "outputs/checkpoints", which: str = "best"
) -> Path:
    """A run id (best.pt, falling back to last.pt) or a path to a .pt file."""
    as_path = Path(run_id_or_path)
    if as_path.suffix == ".pt":
        return as_path
    folder = Path(checkpoints_dir) / run_id_or_path
    for name in (f"{which}.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    raise UserError(
        f"no checkpoint for run '{run_id_or_path}' in {folder}; train it first ('codonlm train') "
        "or pass --checkpoints-dir"
    )


def load_model(
    run_id_or_path: str,
    checkpoints_dir: str = "outputs/checkpoints",
    device: str = "cpu",
    which: str = "best",
) -> tuple[TinyGPT, Config, dict]:
    path = checkpoint_path(run_id_or_path, checkpoints_dir, which)
    state = load_checkpoint(path, map_location=device)
    cfg = parse_config(state["config"], source=str(path))
    model = TinyGPT(cfg.model)
    model.load_state_dict(state["model"])
    model.to(torch.device(device)).eval()
    return model, cfg, state
