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
        raise UserError(f"checkpoint not found: {path}; expected outputs/checkpoints/<RUN_ID>/last.pt or best.pt")
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
