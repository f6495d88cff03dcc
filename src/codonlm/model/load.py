"""Load a trained run's model from its checkpoint (weights_only), for evaluation, export and analysis.

`load_model` is the one way a checkpoint is loaded for use: it refuses NaN/inf weights, so no command
scores, evaluates, generates, analyzes or exports a diverged model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from codonlm.config import Config, parse_config
from codonlm.errors import UserError
from codonlm.model.checkpoint import divergence_advice, load_checkpoint, nonfinite_weights
from codonlm.model.tinygpt import TinyGPT
from codonlm.runid import locate_run


def _advice(path: Path, state: dict) -> str:
    """What to change in a new run, for the run of this checkpoint (its lr and precision)."""
    cfg = parse_config(state["config"], source=str(path))
    return divergence_advice(cfg.train.lr, (state.get("precision") or {}).get("dtype", "float32"))


def _diverged(path: Path, state: dict, bad: list[str]) -> str:
    """What a checkpoint with NaN/inf weights means, and what to do."""
    return (f"{path} (step {state.get('step', '?')}) holds NaN/inf weights ({len(bad)} tensor(s), first "
            f"{bad[0]}): the training diverged; train a new run: {_advice(path, state)}")


def _no_best(run_id: str, folder: Path) -> UserError:
    """A run without best.pt: say why (never trained, diverged, or stopped before an epoch ended)."""
    last = folder / "last.pt"
    if not last.is_file():
        return UserError(f"run '{run_id}' has no checkpoint in {folder}; train it first "
                         f"('codonlm train -c CONFIG --run-id {run_id}' or ./main.sh)")
    state = load_checkpoint(last)
    if bad := nonfinite_weights(state["model"]):
        return UserError(f"run '{run_id}' has no best.pt: {_diverged(last, state, bad)}")
    if state.get("epoch", 0) > 0 and not math.isfinite(state.get("best_val", math.inf)):  # epochs ended, none finite
        return UserError(f"run '{run_id}' has no best.pt: its validation loss was never finite ({last}, step "
                         f"{state.get('step', '?')}); train a new run: {_advice(last, state)}")
    return UserError(f"run '{run_id}' has no best.pt: its training stopped at step {state.get('step', '?')}, "
                     f"before an epoch ended (best.pt is written at epoch ends); continue it with "
                     f"'codonlm train -r {last}', or pass {last} to use that checkpoint as it is")


def checkpoint_path(run_id_or_path: str, checkpoints_dir: str | None = None, runs_dir: str | None = None) -> Path:
    """A path to a .pt file as it is, or a run id's best.pt (found with runid.locate_run)."""
    as_path = Path(run_id_or_path)
    if as_path.suffix == ".pt":
        return as_path
    folder = locate_run(run_id_or_path, checkpoints_dir, runs_dir)
    if not (folder / "best.pt").is_file():
        raise _no_best(run_id_or_path, folder)
    return folder / "best.pt"


def load_model(run_id_or_path: str, checkpoints_dir: str | None = None, device: str = "cpu",
               runs_dir: str | None = None) -> tuple[TinyGPT, Config, dict]:
    """(model in eval mode, its config, the checkpoint payload); a one-line UserError for NaN/inf weights."""
    path = checkpoint_path(run_id_or_path, checkpoints_dir, runs_dir)
    state = load_checkpoint(path, map_location=device)
    if bad := nonfinite_weights(state["model"]):
        raise UserError(_diverged(path, state, bad))
    cfg = parse_config(state["config"], source=str(path))
    model = TinyGPT(cfg.model)
    model.load_state_dict(state["model"])
    model.to(torch.device(device)).eval()
    return model, cfg, state
