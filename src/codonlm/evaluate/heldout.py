"""Held-out evaluation of a run: the model beside honest baselines on the same test genes.

Writes runs/<RUN_ID>/evaluate/: metrics.json, summary.csv (model + baselines), per_dataset.csv,
by_position.csv, calibration.csv, by_identity.csv and test_identity.csv (each test gene's best identity to
a training protein, when MMseqs2 is installed), and PNG plots. A model that does not beat a baseline is
reported as such (metrics.json: beats_baselines).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from codonlm.data.codons import dataset_hosts
from codonlm.data.layout import run_split_path
from codonlm.errors import UserError
from codonlm.evaluate.ngram import KneserNeyLM, PerGroupUnigramLM, UnigramLM
from codonlm.evaluate.perplexity import (
    POSITION_BINS,
    ece,
    perplexity_of,
    position_bins,
    require_finite,
    score_genes,
)
from codonlm.io import read_split_genes, save_figure, write_csv, write_json
from codonlm.model.load import load_model


def fit_baselines(train_genes, train_groups, test_genes, test_groups, orders=(3, 5)) -> dict[str, list[np.ndarray]]:
    """Per-gene log-prob arrays of each baseline on the test genes, fitted on the training genes."""
    models = {"unigram": UnigramLM(), "per_genome_unigram": PerGroupUnigramLM()}
    for k in orders:
        models[f"kneser_ney_{k}"] = KneserNeyLM(order=k)
    out = {}
    for name, lm in models.items():
        grouped = name == "per_genome_unigram"
        lm.fit(train_genes, train_groups if grouped else None)
        out[name] = [lm.log_probs(g, group=int(d)) if grouped else lm.log_probs(g)
                     for g, d in zip(test_genes, test_groups, strict=True)]
    return out


WITHOUT_HOST = "model_without_host"  # a host model (host_dropout > 0) reading the test genes with no host token


def model_label(name: str) -> str:
    """A legend entry: the run's model ('model' in the tables), the same model read without host tokens, or a
    baseline."""
    labels = {"model": "TinyGPT (this run)", WITHOUT_HOST: "TinyGPT, no host token"}
    return labels.get(name, f"baseline: {name}")


def is_baseline(name: str) -> bool:
    return name not in ("model", WITHOUT_HOST)


def _plot(by_pos: pd.DataFrame, calib: list[dict], per_ds: pd.DataFrame, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for name, part in by_pos.groupby("model", sort=False):
        ax.plot(part["bin"], part["perplexity"], marker="o", label=model_label(name))
    ax.set_xscale("log")  # the bins widen along the gene (1-10, 11-25, ... 801+)
    ax.set_xlabel("codon position in gene (first codon of the bin, log scale)")
    ax.set_ylabel("perplexity per codon")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the lines
    ax.set_title("Perplexity by position in the gene (test split)")
    fig.tight_layout()
    save_figure(fig, folder / "by_position.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.plot([r["confidence"] for r in calib], [r["accuracy"] for r in calib], marker="o")
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("Calibration (test split)")
    fig.tight_layout()
    save_figure(fig, folder / "calibration.png")
    plt.close(fig)

    save_figure(per_dataset_figure(per_ds), folder / "per_dataset.png")


def per_dataset_figure(per_ds: pd.DataFrame):
    """Perplexity per genome, one bar per model: genomes down the side (their long names stay readable
    at any count), the legend outside the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wide = per_ds.pivot(index="dataset", columns="model", values="perplexity")
    models = [m for m in ("model", WITHOUT_HOST) if m in wide.columns] + sorted(m for m in wide.columns if is_baseline(m))
    wide = wide.loc[list(dict.fromkeys(per_ds["dataset"]))[::-1], models]  # first genome on top
    fig, ax = plt.subplots(figsize=(8, 0.12 * len(wide) * (len(models) + 1) + 1.5))
    height = 0.8 / len(models)
    colours = dict(zip(models, plt.get_cmap("tab10").colors, strict=False))  # the model blue, as in heldout.png
    for k, name in enumerate(models[::-1]):  # the model's own bar on top of each group
        ax.barh(np.arange(len(wide)) + (k - (len(models) - 1) / 2) * height, wide[name], height, color=colours[name],
                label=model_label(name))
    ax.set_yticks(np.arange(len(wide)), wide.index)
    ax.set_xlabel("perplexity per codon (lower is better)")
    ax.set_title("Per-genome perplexity on the test genes: the model vs baselines")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def _totals(logps: list[np.ndarray]) -> dict:
    flat = np.concatenate(logps)
    nll = float(-flat.mean())
    return {"loss": nll, "perplexity": perplexity_of(nll), "n_targets": int(flat.size)}


def _summary_rows(all_logp: dict[str, list[np.ndarray]], scores) -> tuple[list[dict], list[dict]]:
    """One row per model (the model's own row with accuracy and calibration), and the calibration bins."""
    cat = {k: np.concatenate([getattr(s, k) for s in scores]) for k in
           ("top1", "top5", "aa_correct", "synonymous_mass", "confidence")}
    calib_err, calib_rows = ece(cat["confidence"], cat["top1"])
    rows = []
    for name, logps in all_logp.items():
        row = {"model": name, **_totals(logps)}
        if name == "model":
            row.update({"top1_accuracy": float(cat["top1"].mean()), "top5_accuracy": float(cat["top5"].mean()),
                        "aa_accuracy": float(cat["aa_correct"].mean()),
                        "synonymous_mass": float(cat["synonymous_mass"].mean()), "ece": calib_err})
        rows.append(row)
    return rows, calib_rows


def _per_dataset_table(all_logp: dict[str, list[np.ndarray]], scores, groups, names: list[str]) -> pd.DataFrame:
    rows = []
    groups = np.asarray(groups)
    for d, dname in enumerate(names):
        sel = np.flatnonzero(groups == d)
        if sel.size == 0:
            continue
        for name, logps in all_logp.items():
            row = {"dataset": dname, "model": name, "genes": int(sel.size), **_totals([logps[i] for i in sel])}
            if name == "model":
                row["top1_accuracy"] = float(np.concatenate([scores[i].top1 for i in sel]).mean())
                row["aa_accuracy"] = float(np.concatenate([scores[i].aa_correct for i in sel]).mean())
            rows.append(row)
    return pd.DataFrame(rows)


def _by_position_table(all_logp: dict[str, list[np.ndarray]]) -> pd.DataFrame:
    rows = []
    bins = np.concatenate([position_bins(len(lp)) for lp in all_logp["model"]])
    for name, logps in all_logp.items():
        flat = np.concatenate(logps)
        for b in range(len(POSITION_BINS) - 1):
            sel = bins == b
            if sel.any():
                nll = float(-flat[sel].mean())
                rows.append({"model": name, "bin": POSITION_BINS[b], "bin_end": POSITION_BINS[b + 1] - 1,
                             "n_targets": int(sel.sum()), "loss": nll, "perplexity": perplexity_of(nll)})
    return pd.DataFrame(rows)


IDENTITY_BINS = (0.0, 0.3, 0.5, 0.7, 0.9)  # lower edges of a test gene's best identity to a training protein


def _split_proteins(genes, cfg) -> list[str]:
    """The protein of each gene of a prepared split (its dataset's genetic code)."""
    from codonlm.data.codons import translate

    tables = {spec.name: spec.transl_table for spec in cfg.data.datasets}
    code = [tables.get(name, 11) for name in genes.dataset_names]
    return [translate(genes.codons(g), code[int(d)]) for g, d in enumerate(genes.groups)]


def _identity_report(cfg, test, train, all_logp: dict[str, list[np.ndarray]], folder: Path) -> dict | None:
    """Perplexity by the test genes' best identity to a training protein (MMseqs2 search), every model and
    baseline side by side: how much of the edge is memory of relatives. None (with a log line) without MMseqs2."""
    from codonlm.data.homology import best_identity, mmseqs_version
    from codonlm.log import log

    try:
        mmseqs_version()
    except UserError as exc:
        log(f"[evaluate] no perplexity by identity to training: {exc}")
        return None
    identity = best_identity(_split_proteins(test, cfg), sorted(set(_split_proteins(train, cfg))), os.cpu_count() or 1)
    bins = np.searchsorted(IDENTITY_BINS, identity, side="right") - 1
    write_csv(pd.DataFrame({"gene": test.names, "dataset": [test.dataset_names[int(d)] for d in test.groups],
                            "best_identity": identity, "model_loss": [-float(lp.mean()) for lp in all_logp["model"]]}),
              folder / "test_identity.csv")
    rows = []
    for b, low in enumerate(IDENTITY_BINS):
        members = np.flatnonzero(bins == b)
        high = IDENTITY_BINS[b + 1] if b + 1 < len(IDENTITY_BINS) else 1.0
        for name, logps in all_logp.items() if members.size else ():
            rows.append({"identity_bin": f"{low:.0%}-{high:.0%}", "model": name, "genes": int(members.size),
                         **_totals([logps[i] for i in members])})
    table = pd.DataFrame(rows)
    write_csv(table, folder / "by_identity.csv")
    wide = table.pivot(index="identity_bin", columns="model", values="perplexity")
    best = wide[[c for c in wide.columns if is_baseline(c)]].min(axis=1)
    return {"search": f"MMseqs2 {mmseqs_version()} easy-search, test proteins vs distinct training proteins",
            "genes_per_bin": {k: int(v) for k, v in table.groupby("identity_bin")["genes"].first().items()},
            "model_perplexity": wide["model"].to_dict(), "best_baseline_perplexity": best.to_dict(),
            "model_over_best_baseline": (wide["model"] / best).to_dict()}


def evaluate_run(run_id: str, checkpoints_dir: str | None = None, split: str = "test",
                 device: str = "cpu", out_dir: str | Path | None = None, kn_orders=(3, 5),
                 stride: int | None = None, amp: bool = False, runs_dir: str | None = None) -> dict:
    t0 = time.perf_counter()
    model, cfg, state = load_model(run_id, checkpoints_dir, device, runs_dir)
    run_id = state.get("run_id", run_id)
    test_path, train_path = run_split_path(cfg, run_id, split), run_split_path(cfg, run_id, "train")
    for p in (test_path, train_path):
        if not p.is_file():
            raise UserError(f"prepared data not found: {p}; run 'codonlm prepare -c CONFIG' for this run's config")
    test, train = read_split_genes(test_path), read_split_genes(train_path)
    names = test.dataset_names
    test_genes, test_groups, train_genes, train_groups = test.genes, test.groups, train.genes, train.groups
    if not test_genes:
        raise UserError(f"{test_path} holds no genes; set data.test_frac > 0 and re-run prepare")

    scores = score_genes(model, test_genes, device=device, stride=stride, amp=amp,
                         hosts=dataset_hosts(model.cfg.hosts, names, test_groups))
    all_logp = {"model": [s.logp for s in scores]}
    if model.cfg.hosts and model.cfg.host_dropout > 0:  # what the host token is worth, on the same genes
        all_logp[WITHOUT_HOST] = [s.logp for s in score_genes(model, test_genes, device=device, stride=stride,
                                                              amp=amp)]
    all_logp.update(fit_baselines(train_genes, train_groups, test_genes, test_groups, kn_orders))
    summary_rows, calib_rows = _summary_rows(all_logp, scores)
    require_finite(summary_rows[0]["perplexity"], f"{split} perplexity")  # before any file is written
    summary = pd.DataFrame(summary_rows)
    per_ds = _per_dataset_table(all_logp, scores, test_groups, names)
    by_pos = _by_position_table(all_logp)

    folder = Path(out_dir) if out_dir else Path(cfg.outputs.runs_dir) / run_id / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(summary, folder / "summary.csv")
    write_csv(per_ds, folder / "per_dataset.csv")
    write_csv(by_pos, folder / "by_position.csv")
    write_csv(pd.DataFrame(calib_rows), folder / "calibration.csv")
    _plot(by_pos, calib_rows, per_ds, folder)
    by_identity = _identity_report(cfg, test, train, all_logp, folder)
    model_ppl = float(summary.loc[summary.model == "model", "perplexity"].iloc[0])
    baseline_ppl = {r["model"]: r["perplexity"] for r in summary_rows if is_baseline(r["model"])}
    metrics = {
        "run_id": run_id, "split": split, "checkpoint_step": state.get("step"), "genes": len(test_genes),
        "model": summary_rows[0], "baselines": {r["model"]: r for r in summary_rows if is_baseline(r["model"])},
        **{r["model"]: r for r in summary_rows if r["model"] == WITHOUT_HOST},
        "beats_baselines": {k: model_ppl < v for k, v in baseline_ppl.items()},
        "best_baseline": min(baseline_ppl, key=baseline_ppl.get),
        "seconds": round(time.perf_counter() - t0, 1),
        "stride": stride or "sliding window", "amp": amp, "by_identity": by_identity,
        "host_tokens": list(model.cfg.hosts),
        "note": "perplexity over whole genes (codons + <EOS_CDS>); genes longer than block_size are read with "
                "sliding-window attention (every codon has at least block_size tokens of context), or with "
                "windows advancing by `stride` when one is set (at least block_size - stride + 1); the model's "
                "probability is its full softmax (no renormalisation).",
    }
    write_json(folder / "metrics.json", metrics)
    return metrics
