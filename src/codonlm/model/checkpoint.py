"""Checkpoints hold tensors and plain values only; written atomically, read with weights_only=True."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from codonlm.errors import UserError
from codonlm.io import atomic_path


def save_checkpoint(path: str | Path, state: dict) -> None:
    """temp file + rename: a crash mid-write never leaves a half-written best.pt/last.pt."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # a file object, not the name: torch then names the archive inside 'archive' rather than after the
        # temporary file, so the bytes (and checksums in stage stamps) do not depend on a random name
        torch.save(state, fh)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load without running code from the file: anything but tensors and plain values is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; give a run's best.pt or last.pt (in the config's "
                        "outputs.out_dir, <out_dir>/<RUN_ID>/), or its run id")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise UserError(
            f"{path}: refused, the checkpoint holds Python objects that would run code on load ({first}); "
            "only load checkpoints written by codonlm"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path}: not a codonlm checkpoint (no 'model'/'config' entries)")
    return state


def nonfinite_weights(weights: dict) -> list[str]:
    """Names of the floating-point tensors that hold NaN or inf (a diverged model)."""
    return [name for name, t in weights.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def divergence_advice(lr: float, dtype: str = "float32") -> str:
    """What to change when training goes non-finite (shared by the trainer and by commands that refuse
    a diverged checkpoint)."""
    amp = f"set train.amp: false (training runs in {dtype}), " if dtype != "float32" else ""
    return (f"lower train.lr (now {lr:g}), {amp}reduce label_smoothing, or re-prep with --force "
            "(see the manual's NaNs section)")
