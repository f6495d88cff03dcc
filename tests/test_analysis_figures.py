"""Figures a reader must be able to read: what they draw, and that their parts do not cover each other
(checked on the drawn figure's extents, with the default corpus's long genome names)."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd

from codonlm.analysis.summary import curve_figure
from codonlm.evaluate.heldout import per_dataset_figure

GENOMES = ["ecoli_k12", "bradyrhizobium_japonicum", "roseobacter_denitrificans", "methanosarcina_acetivorans",
           "methanococcus_maripaludis", "methanothermobacter_thermautotrophicus", "thermococcus_kodakaraensis"]


def _extents(fig, artists):
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def test_training_curve_draws_the_sparse_validation_loss():
    """90 rows, a validation loss on 9 of them (every 100 steps): the validation series is drawn with
    markers on exactly those rows, and the title counts rows, not epochs."""
    steps = np.arange(10, 910, 10)
    val = np.where(steps % 100 == 0, 4.0 - steps / 1000, np.nan)
    curves = pd.DataFrame({"step": steps, "train_loss": 4.1 - steps / 1000, "val_loss": val,
                           "perplexity": np.exp(val), "lr": 1e-3})
    fig = curve_figure(curves, "run", 4.2, log_every=10)
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("validation")]
    assert line.get_marker() not in (None, "", " ", "None")
    np.testing.assert_array_equal(line.get_xdata(), steps[steps % 100 == 0])
    assert len(line.get_ydata()) == 9 and np.isfinite(line.get_ydata()).all()
    title = ax.get_title()
    assert "per epoch" not in title and "90 rows" in title and "every 10 steps" in title and "9 of them" in title


def test_per_genome_perplexity_legend_and_names_do_not_cover_anything():
    models = ["model", "unigram", "per_genome_unigram", "kneser_ney_3", "kneser_ney_5"]
    per_ds = pd.DataFrame([{"dataset": g, "model": m, "perplexity": 40.0 + 3 * i + j}
                           for i, g in enumerate(GENOMES) for j, m in enumerate(models)])
    fig = per_dataset_figure(per_ds)
    fig.canvas.draw()
    ax = fig.axes[0]
    bars = _extents(fig, ax.patches)
    assert len(bars) == len(GENOMES) * len(models)
    (legend,) = _extents(fig, [ax.get_legend()])
    assert not any(legend.overlaps(b) for b in bars)  # the legend sits beside the bars, never on them
    names = [t for t in ax.get_yticklabels() if t.get_text()]
    assert sorted(t.get_text() for t in names) == sorted(GENOMES)  # every genome named in full
    for a, b in itertools.combinations(_extents(fig, names), 2):
        assert not a.overlaps(b)
    assert "perplexity" in ax.get_xlabel() and ax.get_title()


def test_head_grid_stays_narrow_enough_to_read_in_the_report(tmp_path):
    """Six measures x two models of a 4-layer, 4-head model: the report shows figures at most 1,100 px wide,
    so a grid wider than ~1,500 px would shrink its 7-point cell numbers below legibility."""
    import struct

    from codonlm.analysis.analyze_attention import MEASURES, draw_head_grid

    rng = np.random.default_rng(0)
    heads = pd.DataFrame([{"model": m, "layer": layer, "head": h, **{k: float(rng.random()) for k in MEASURES}}
                          for m in ("trained", "random_init") for layer in range(4) for h in range(4)])
    draw_head_grid(heads, tmp_path)
    width, height = struct.unpack(">II", (tmp_path / "heads.png").read_bytes()[16:24])  # the PNG's IHDR
    assert width <= 1500 and height > width


def test_cell_numbers_contrast_with_their_cell():
    """viridis is dark at 0 and yellow at 1, RdBu_r dark at both ends: the number on a cell is white on the
    dark cells and black on the light ones."""
    import matplotlib.pyplot as plt

    from codonlm.analysis.analyze_attention import _annotated

    fig, (a, b) = plt.subplots(1, 2)
    _annotated(a, np.array([[0.0, 0.5, 1.0]]), 0.0, 1.0, "viridis")
    _annotated(b, np.array([[-1.0, 0.0, 1.0]]), -1.0, 1.0, "RdBu_r", "{:+.3f}")
    assert [t.get_color() for t in a.texts] == ["white", "white", "black"]
    assert [t.get_color() for t in b.texts] == ["white", "black", "white"]
    plt.close(fig)
