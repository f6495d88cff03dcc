"""Classifier metrics with bootstrap confidence intervals, and the figures people read them from.

Accuracy, macro-F1 (every class weighs the same, whatever its size; classes absent from both the labels and
the predictions are left out, as scikit-learn does) and ROC-AUC (binary: of the second
class; multiclass: one-vs-rest, macro over the classes present) are computed by one vectorised function, on the test
set itself for the point value and on `n_boot` resamples of it (seeded) for the percentile 95% interval.
The interval is the test-set sampling noise only, not the variance of refitting the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codonlm.evaluate.perplexity import ece
from codonlm.io import save_figure

HEADLINE = ("accuracy", "macro_f1", "roc_auc")


def _scores(true: np.ndarray, proba: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, macro_f1, roc_auc of each resample (rows of idx); true holds class indices 0..K-1."""
    from scipy.stats import rankdata

    K = proba.shape[1]
    t, p = true[idx], proba[idx]  # [B, n], [B, n, K]
    pred = p.argmax(-1)
    f1, seen = [], []  # macro over the classes in the true labels or the predictions (scikit-learn's default)
    for k in range(K):
        tp = ((t == k) & (pred == k)).sum(1)
        fp = ((t != k) & (pred == k)).sum(1)
        fn = ((t == k) & (pred != k)).sum(1)
        denom = 2 * tp + fp + fn
        f1.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        seen.append(denom > 0)
    aucs = []
    for k in [1] if K == 2 else range(K):
        pos = t == k
        n_pos, n_neg = pos.sum(1), (~pos).sum(1)
        ranks = rankdata(p[..., k], axis=1)
        u = (ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2
        aucs.append(np.where((n_pos > 0) & (n_neg > 0), u / np.maximum(n_pos * n_neg, 1), np.nan))
    aucs = np.array(aucs)  # [classes scored, B]; NaN where a resample lacks positives or negatives
    scored = ~np.isnan(aucs)
    roc = np.where(scored.any(0), np.nansum(aucs, 0) / np.maximum(scored.sum(0), 1), np.nan)
    macro_f1 = np.sum(f1, axis=0) / np.maximum(np.sum(seen, axis=0), 1)
    return {"accuracy": (pred == t).mean(1), "macro_f1": macro_f1, "roc_auc": roc}


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str], n_boot: int = 1000,
                           seed: int = 0) -> dict:
    """Headline metrics with 95% bootstrap intervals, per-class precision/recall/F1, confusion, calibration.

    proba [n, K] columns follow `classes`; y_true holds class names (each one of `classes`).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    classes = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    true = np.array([index[str(v)] for v in y_true], dtype=np.int64)
    n = len(true)
    point = {k: float(v[0]) for k, v in _scores(true, proba, np.arange(n)[None]).items()}
    out: dict = {}
    rng = np.random.default_rng(seed)
    boot = _scores(true, proba, rng.integers(0, n, size=(n_boot, n))) if n_boot else None
    for k in HEADLINE:
        value = point[k]
        out[k] = None if np.isnan(value) else value
        ci = None
        if boot is not None and out[k] is not None:
            ci = [float(x) for x in np.nanpercentile(boot[k], [2.5, 97.5])]
        out[f"{k}_ci"] = ci
    pred = proba.argmax(1)
    prec, rec, f1, support = precision_recall_fscore_support(true, pred, labels=range(len(classes)), zero_division=0)
    out["per_class"] = {c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                            "support": int(support[i])} for i, c in enumerate(classes)}
    out["confusion"] = confusion_matrix(true, pred, labels=range(len(classes))).tolist()
    err, bins = ece(proba.max(1), pred == true, n_bins=10)
    out["ece"] = float(err)
    out["reliability"] = bins
    out["n_test"] = int(n)
    return out


# --------------------------------------------------------------------------- figures


def _grid(n: int, size: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def plot_confusions(results: dict[str, dict], classes: list[str], title: str, path: Path) -> None:
    """One row-normalised confusion matrix per model, counts written in the cells."""
    fig, axes = _grid(len(results), 4.2 if len(classes) <= 4 else 5.2)
    short = [c if len(c) <= 14 else c[:13] + "." for c in classes]
    for ax, (name, m) in zip(axes, results.items(), strict=False):
        counts = np.array(m["confusion"], dtype=float)
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), short, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), short, fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{name} (accuracy {m['accuracy']:.2f})", fontsize=9)
    fig.suptitle(f"{title}: confusion matrices on the test set (colour: share of the true class)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_calibration(results: dict[str, dict], title: str, path: Path, min_genes: int = 5) -> None:
    """Reliability diagram: top-1 confidence against accuracy per confidence bin, one line per model (bins
    holding fewer than `min_genes` test genes are left out: one gene makes a 0-or-1 point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    for name, m in results.items():
        bins = [b for b in m["reliability"] if b["n"] >= min_genes]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                label=f"{name} (ECE {m['ece']:.3f})")
    ax.set_xlabel("top-1 predicted probability (bin mean)")
    ax.set_ylabel("fraction correct in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
    ax.set_title(f"{title}: calibration on the test set (10 bins, those with >= {min_genes} genes)")
    save_figure(fig, path)  # bbox "tight" makes room for the legend outside the axes


def compare_rows(task: str, results: dict[str, dict], metrics: tuple[str, ...] = HEADLINE) -> list[dict]:
    """Long table rows: task, model, metric, value, ci_low, ci_high (classification HEADLINE, or
    REGRESSION_HEADLINE for regression)."""
    rows = []
    for name, m in results.items():
        for k in metrics:
            ci = m.get(f"{k}_ci") or [None, None]
            rows.append({"task": task, "model": name, "metric": k, "value": m.get(k), "ci_low": ci[0],
                         "ci_high": ci[1]})
    return rows


def _interval_bars(ax, part, colors: list[str]) -> None:
    """One horizontal bar per model (rows of a compare table) with its 95% interval as error bars."""
    y = np.arange(len(part))
    value = part["value"].astype(float).to_numpy()
    low = value - part["ci_low"].astype(float).fillna(part["value"].astype(float)).to_numpy()
    high = part["ci_high"].astype(float).fillna(part["value"].astype(float)).to_numpy() - value
    ax.barh(y, value, xerr=[low, high], color=colors, capsize=3)
    ax.set_yticks(y, part["model"], fontsize=8)


def plot_compare(rows: list[dict], title: str, path: Path, metric: str = "macro_f1",
                 n_classes: dict[str, int] | None = None) -> None:
    """Every model of every task side by side: `metric` with its 95% interval, one panel per task; a dotted
    line at 1 / classes (what guessing scores on balanced classes) where `n_classes` gives the count."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df = df[df["metric"] == metric]
    tasks = list(dict.fromkeys(df["task"]))
    fig, axes = _grid(len(tasks), 4.0)
    for ax, task in zip(axes, tasks, strict=False):
        part = df[df["task"] == task]
        _interval_bars(ax, part, ["tab:blue" if m.startswith(("probe", "mlp")) else "tab:orange"
                                  for m in part["model"]])
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{metric.replace('_', '-')} (95% bootstrap CI)")
        ax.set_title(task, fontsize=10)
        ax.invert_yaxis()
        if n_classes and task in n_classes:
            ax.axvline(1 / n_classes[task], color="grey", ls=":")
    chance = "; dotted: chance (1 / classes)" if n_classes else ""
    fig.suptitle(f"{title}: embedding probes (blue) vs k-mer baselines (orange){chance}")
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------- regression

REGRESSION_HEADLINE = ("spearman", "pearson", "r2")


def resample_ranks(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average ranks of values[idx] within each resample (row of idx), equal to rankdata(values[idx], axis=1)
    from one sort of the values: an element's rank is the count of draws below its value plus (draws of
    its value + 1) / 2. (rankdata sorts every resample: 5 of the 15 s of a ready task, profiled.)"""
    dense = np.unique(values, return_inverse=True)[1]  # equal values share a dense rank
    k = int(dense.max()) + 1
    d = dense[idx]  # [B, n]
    counts = np.bincount((np.arange(len(idx))[:, None] * k + d).ravel(), minlength=len(idx) * k).reshape(len(idx), k)
    below = np.cumsum(counts, axis=1) - counts
    return np.take_along_axis(below, d, 1) + (np.take_along_axis(counts, d, 1) + 1) / 2


def _regression_scores(y: np.ndarray, pred: np.ndarray, idx: np.ndarray, with_r2: bool) -> dict[str, np.ndarray]:
    """Spearman, Pearson, R^2 of each resample (rows of idx) of each repeat (rows of pred): [repeats, B]."""
    t, p = y[idx][None], pred[:, idx]  # [1, B, n], [R, B, n]

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
        denom = np.sqrt((a**2).sum(-1) * (b**2).sum(-1))
        return np.where(denom > 0, (a * b).sum(-1) / np.where(denom > 0, denom, 1), np.nan)

    ranks = np.stack([resample_ranks(row, idx) for row in pred])
    out = {"pearson": corr(t, p), "spearman": corr(resample_ranks(y, idx)[None], ranks)}
    total = ((t - t.mean(-1, keepdims=True)) ** 2).sum(-1)
    r2 = 1 - ((t - p) ** 2).sum(-1) / np.where(total > 0, total, np.nan)
    out["r2"] = r2 if with_r2 else np.full_like(r2, np.nan)
    return out


def regression_metrics(y: np.ndarray, pred: np.ndarray, n_boot: int = 1000, seed: int = 0,
                       with_r2: bool = True) -> dict:
    """Spearman, Pearson and R^2 of out-of-fold predictions pred [repeats, n] against y [n]: the mean over the
    CV repeats, and a percentile 95% interval from `n_boot` seeded resamples of the genes (the same genes
    in every repeat). with_r2=False for zero-shot scores, whose scale is not the target's."""
    pred = np.atleast_2d(np.asarray(pred, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    point = _regression_scores(y, pred, np.arange(n)[None], with_r2)
    boot = _regression_scores(y, pred, np.random.default_rng(seed).integers(0, n, size=(n_boot, n)), with_r2) \
        if n_boot else None
    out: dict = {}
    for k in REGRESSION_HEADLINE:
        value = float(np.nanmean(point[k])) if not np.isnan(point[k]).all() else None
        out[k] = value
        ci = None
        if boot is not None and value is not None:
            ci = [float(x) for x in np.nanpercentile(np.nanmean(boot[k], axis=0), [2.5, 97.5])]
        out[f"{k}_ci"] = ci
        out[f"{k}_per_repeat"] = [None if np.isnan(v) else float(v) for v in point[k][:, 0]]
    out["n"] = int(n)
    return out


def plot_regression_compare(rows: list[dict], title: str, path: Path) -> None:
    """Spearman rho of every model with its 95% interval, one panel per task: probes blue, baselines orange,
    zero-shot scores grey."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df = df[df["metric"] == "spearman"]
    tasks = list(dict.fromkeys(df["task"]))
    fig, axes = _grid(len(tasks), 4.0)
    for ax, task in zip(axes, tasks, strict=False):
        part = df[df["task"] == task]
        _interval_bars(ax, part, ["tab:blue" if m.startswith("probe") else "grey" if m.startswith("zeroshot")
                                  else "tab:orange" for m in part["model"]])
        ax.set_xlim(-1, 1)
        ax.axvline(0, color="black", lw=0.5)
        ax.set_xlabel("Spearman rho, out of fold (95% bootstrap CI)")
        ax.set_title(task, fontsize=10)
        ax.invert_yaxis()
    fig.suptitle(f"{title}: embedding probes (blue) vs baselines (orange) and zero-shot scores (grey)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_measured_vs_predicted(y: np.ndarray, predictions: dict[str, np.ndarray], results: dict[str, dict],
                               title: str, target: str, path: Path) -> None:
    """One scatter per model: measured target against the out-of-fold prediction (first CV repeat)."""
    fig, axes = _grid(len(predictions), 3.6)
    for ax, (name, pred) in zip(axes, predictions.items(), strict=False):
        ax.scatter(pred, y, s=4, alpha=0.4)
        m = results[name]
        ax.set_title(f"{name} (rho {m['spearman']:.2f})" if m["spearman"] is not None else name, fontsize=9)
        ax.set_xlabel("predicted (zero-shot: score)" if name.startswith("zeroshot") else "predicted, out of fold")
        ax.set_ylabel(f"measured {target}")
    fig.suptitle(f"{title}: measured vs predicted")
    fig.tight_layout()
    save_figure(fig, path)


def plot_metric_by_layer(layers: dict[str, dict], chosen: dict[str, int], title: str, path: Path) -> None:
    """Out-of-fold Spearman rho (95% CI) of the ridge probe on each layer, and how often inner CV chose it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(layers)
    value = np.array([layers[n]["spearman"] if layers[n]["spearman"] is not None else np.nan for n in names])
    ci = np.array([layers[n]["spearman_ci"] or [np.nan, np.nan] for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(names))
    ax.errorbar(x, value, yerr=[value - ci[:, 0], ci[:, 1] - value], marker="o", capsize=3)
    for i, n in enumerate(names):
        if chosen.get(n):
            ax.annotate(f"chosen {chosen[n]}x", (i, value[i]), textcoords="offset points", xytext=(0, 8),
                        ha="center", fontsize=7)
    ax.set_xticks(x, names)
    ax.set_xlabel("layer (block index; final = input of the LM head)")
    ax.set_ylabel("Spearman rho, ridge probe, out of fold")
    ax.set_title(f"{title}: metric by layer (annotated: folds whose inner CV chose it)", fontsize=9)
    save_figure(fig, path)
