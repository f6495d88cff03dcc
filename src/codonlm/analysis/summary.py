"""Step 1, summary: the held-out evaluation, the training curve and the data of a run, in one place.

The held-out numbers come from runs/<RUN_ID>/evaluate/metrics.json, written by `codonlm evaluate` (the
pipeline runs it before the analysis). This step never runs the evaluation itself: without that file it
says so and how to run it, and it runs again once the file appears (its checksum is one of the step's
settings). Beside them: a random-init model of the same shape and the trained model scored on the same
seeded sample of test genes, so the gain from training reads directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from codonlm.analysis.context import AnalysisContext
from codonlm.analysis.report import data_table
from codonlm.evaluate.perplexity import score_genes
from codonlm.io import read_json, save_figure, sha256_file, write_csv

NAME = "summary"
GENES_PER_GENOME = 20  # test genes per genome scored by both models for the random-init comparison


def metrics_path(ctx: AnalysisContext) -> Path:
    return ctx.run_dir / "evaluate" / "metrics.json"


def settings(ctx: AnalysisContext) -> dict:
    """What decides the outputs besides the checkpoint: the sample size, and the evaluation read (or its absence)."""
    path = metrics_path(ctx)
    return {"genes_per_genome": GENES_PER_GENOME, "evaluate_sha256": sha256_file(path) if path.is_file() else None}


def not_evaluated(ctx: AnalysisContext) -> str:
    """What to run when `codonlm evaluate` has not (the held-out numbers are its job, not this step's)."""
    return (f"held-out evaluation not run yet (no {metrics_path(ctx)}): run 'codonlm evaluate {ctx.run_id} "
            f"--checkpoints-dir {ctx.checkpoint.parent.parent}', then analyze again")


def heldout_summary(metrics: dict | None, source: Path) -> dict:
    """The summary.json entries taken from `codonlm evaluate`'s metrics (None each when it has not run)."""
    if metrics is None:
        return {"heldout": None, "best_baseline": None, "beats_every_baseline": None}
    model, best = metrics["model"], metrics.get("best_baseline")
    return {
        "heldout": {"source": f"read {source}", "genes": metrics["genes"], "perplexity": model["perplexity"],
                    "top1_accuracy": model.get("top1_accuracy"), "aa_accuracy": model.get("aa_accuracy"),
                    "synonymous_mass": model.get("synonymous_mass"), "ece": model.get("ece")},
        "best_baseline": {"name": best, "perplexity": metrics["baselines"][best]["perplexity"]},
        "beats_every_baseline": all((metrics.get("beats_baselines") or {"none": False}).values()),
    }


def _sample_scores(ctx: AnalysisContext) -> dict[str, dict]:
    """Perplexity, top-1 and amino-acid accuracy of both models on the same seeded test genes (long genes
    in non-overlapping windows, which the evaluation notes put ~0.4% above the default stride)."""
    genes = ctx.split("test")
    picked = ctx.sample_genes("test", GENES_PER_GENOME, salt=1)
    out = {}
    for name, model in ctx.models().items():
        scores = score_genes(model, [genes.genes[g] for g in picked], device=ctx.device,
                             hosts=ctx.gene_hosts("test", picked),
                             stride=ctx.cfg.model.block_size)  # non-overlapping windows: cheap, ~0.4% above
        logp = np.concatenate([s.logp for s in scores])
        out[name] = {"perplexity": float(math.exp(-logp.mean())),
                     "top1_accuracy": float(np.concatenate([s.top1 for s in scores]).mean()),
                     "aa_accuracy": float(np.concatenate([s.aa_correct for s in scores]).mean()),
                     "genes": len(picked), "targets": int(logp.size)}
    return out


def curve_figure(curves: pd.DataFrame, run_id: str, random_init_loss: float, log_every: int):
    """The training curve of curves.csv: a train-loss row every `log_every` steps, and the validation
    loss only on the rows that have one (sparse: drawn as markers, or the line would never show)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    val = curves.dropna(subset=["val_loss"])
    ax.plot(curves["step"], curves["train_loss"], color="tab:blue", lw=1.2, marker="o" if len(curves) < 30 else None,
            ms=3, label="train loss (mean since the previous row)")
    ax.plot(val["step"], val["val_loss"], color="tab:orange", lw=1.0, marker="o", ms=5,
            label=f"validation loss ({len(val)} rows)")
    ax.axhline(math.log(65), color="k", ls=":", lw=1, label="uniform over 65 targets")
    ax.axhline(random_init_loss, color="tab:grey", ls="--", lw=1, label="random init (test sample)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per codon)")
    ax.set_xlim(0, curves["step"].max() * 1.05)
    ax.set_title(f"Training curve of {run_id}\n({len(curves)} rows in curves.csv: train loss every {log_every} "
                 f"steps, validation loss on {len(val)} of them)", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def _plot_heldout(rows: list[tuple[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.2))
    names, values = zip(*rows, strict=True)
    colors = ["tab:blue" if n.startswith("TinyGPT") else "tab:grey" if "random" in n or "uniform" in n
              else "tab:orange" for n in names]
    ax.barh(range(len(rows)), values, color=colors)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.1f}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("perplexity per codon (lower is better; 65 targets = uniform)")
    ax.set_xlim(0, max(values) * 1.15)
    ax.set_title("Held-out perplexity: trained model, baselines, random init")
    save_figure(fig, path)


def heldout_rows(metrics: dict | None) -> list[tuple[str, float]]:
    """The evaluation's rows of heldout.csv: the model on every test gene, then the baselines, best first."""
    if metrics is None:
        return []
    baselines = {k: v["perplexity"] for k, v in metrics["baselines"].items()}
    return [(f"TinyGPT (all {metrics['genes']} test genes)", metrics["model"]["perplexity"])] + \
        [(f"baseline: {k}", v) for k, v in sorted(baselines.items(), key=lambda kv: kv[1])]


def run(ctx: AnalysisContext) -> dict:
    out = ctx.out_dir(NAME)
    metrics = read_json(metrics_path(ctx))
    notes = [] if metrics is not None else [not_evaluated(ctx)]
    sample = _sample_scores(ctx)
    rows = heldout_rows(metrics)
    rows += [(f"TinyGPT ({sample['trained']['genes']}-gene sample)", sample["trained"]["perplexity"]),
             (f"random init ({sample['random_init']['genes']}-gene sample)", sample["random_init"]["perplexity"]),
             ("uniform over 64 codons + <EOS_CDS>", 65.0)]
    write_csv(pd.DataFrame(rows, columns=["model", "perplexity"]), out / "heldout.csv")
    _plot_heldout(rows, out / "heldout.png")

    curves_path = Path(ctx.cfg.outputs.scores_dir) / ctx.run_id / ctx.cfg.outputs.log_csv
    curve = None
    if curves_path.is_file():
        curves = pd.read_csv(curves_path)
        write_csv(curves, out / "curve.csv")
        save_figure(curve_figure(curves, ctx.run_id, math.log(sample["random_init"]["perplexity"]),
                                 ctx.cfg.train.log_every), out / "curve.png")
        curve = {"points": len(curves), "last_step": int(curves["step"].iloc[-1]),
                 "final_train_loss": float(curves["train_loss"].iloc[-1]),
                 "best_val_loss": float(curves["val_loss"].min())}
    else:
        notes.append(f"training curve not found ({curves_path})")

    prepare_path = ctx.run_dir / "pipeline_prepare.json"
    prepare_report = read_json(prepare_path)
    data = None
    if prepare_report is not None:
        header, data_rows = data_table(prepare_report)
        table = pd.DataFrame(data_rows, columns=header)
        write_csv(table, out / "data.csv")
        data = {"genomes": len(table), "cds_kept": prepare_report.get("kept_cds"),
                "genes": {s: v.get("genes") for s, v in prepare_report.get("splits", {}).items()}}
    else:
        notes.append(f"data report not found ({prepare_path}; written by 'codonlm prepare --run-id')")

    heldout = heldout_summary(metrics, metrics_path(ctx))
    evaluated = (f"held-out perplexity {heldout['heldout']['perplexity']:.1f} over {metrics['genes']} test genes "
                 f"(best baseline {heldout['best_baseline']['name']} {heldout['best_baseline']['perplexity']:.1f})"
                 if metrics is not None else "held-out evaluation not run yet ('codonlm evaluate')")
    reading = (f"{evaluated}; on a {sample['trained']['genes']}-gene sample {sample['trained']['perplexity']:.1f} "
               f"against {sample['random_init']['perplexity']:.1f} at random init")
    return {
        "reading": reading,
        "perplexity": {k: v["perplexity"] for k, v in sample.items()},
        "top1_accuracy": {k: v["top1_accuracy"] for k, v in sample.items()},
        "aa_accuracy": {k: v["aa_accuracy"] for k, v in sample.items()},
        **heldout,
        "curve": curve,
        "data": data,
        "notes": notes,
    }
