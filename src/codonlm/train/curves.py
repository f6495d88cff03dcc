"""Training curves: rows kept in the training state, written as the manual's curves.csv and a curves.png.

A row is written every `train.log_every` steps (train_loss = mean over the steps since the previous
row), at every `train.eval_every` steps with the validation loss on a fixed subset of windows, and
at each epoch end with the full validation. The rows live in the checkpointed TrainState, so after
a resume the files are rewritten from exactly the rows an uninterrupted run had at that step.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from codonlm.io import atomic_path, save_figure

CURVE_COLUMNS = ["step", "train_loss", "val_loss", "perplexity", "lr"]


def curve_row(step: int, train_loss: float, lr: float, val_loss: float | None = None,
              val_set: str | None = None) -> dict:
    """One row: plain values (it is stored in checkpoints). `val_set` is 'subset' or 'full'."""
    return {"step": step, "train_loss": train_loss, "val_loss": val_loss, "lr": lr, "val_set": val_set}


def _csv_fields(row: dict) -> dict:
    val = row["val_loss"]
    return {"step": row["step"], "train_loss": f"{row['train_loss']:.6f}",
            "val_loss": "" if val is None else f"{val:.6f}",
            "perplexity": "" if val is None else f"{math.exp(val):.4f}", "lr": f"{row['lr']:.6e}"}


def write_curves_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        writer.writerows(_csv_fields(r) for r in rows)


def plot_curves(path: Path, rows: list[dict], run_id: str) -> None:
    """Train loss per row, validation on the fixed subset and on the full split, lr on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["step"] for r in rows], [r["train_loss"] for r in rows], color="tab:blue", lw=1.2,
            label="train (mean since previous row)")
    for val_set, style in (("subset", dict(marker=".", ls="-", color="tab:orange", lw=0.8)),
                           ("full", dict(marker="o", ls="none", color="tab:red", ms=7))):
        pts = [(r["step"], r["val_loss"]) for r in rows if r["val_set"] == val_set]
        if pts:
            label = "validation, fixed subset" if val_set == "subset" else "validation, full split (epoch end)"
            ax.plot(*zip(*pts, strict=True), label=label, **style)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats per codon)")
    lr_ax = ax.twinx()
    lr_ax.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="tab:gray", ls=":", lw=1,
               label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + lr_ax.get_legend_handles_labels()[1]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    ax.set_title(f"{run_id}: training and validation loss per codon by optimizer step")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
