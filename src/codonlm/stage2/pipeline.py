"""`codonlm stage2 RUN_ID`: every ready classifier config for one run, and one summary for the report.

Ready tasks (configs/classifier/): probe_aa (hydropathy class of the encoded protein), genome (genome of
origin), domain (bacteria vs archaea), real_vs_generated, and the protocols TRTR / TSTR / TRTS (genome of
origin learnt from real or generated genes, tested on the other), and the regression tasks gravy and
isoelectric_point (numeric properties of the encoded protein, cross-validated). Each writes its folder under
outputs/reports/<RUN_ID>/stage2/; this module adds summary.json, compare.csv and compare.png at the top
(regression_compare.png for the regression tasks).
A task that cannot run (for instance no generated genes yet) is reported as skipped with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from codonlm.errors import UserError
from codonlm.io import read_json, write_csv, write_json
from codonlm.log import log
from codonlm.stage2.config import load_classifier_config
from codonlm.stage2.metrics import (
    REGRESSION_HEADLINE,
    compare_rows,
    plot_compare,
    plot_regression_compare,
)

READY_TASKS = ("probe_aa", "genome", "domain", "real_vs_generated")
REGRESSION_TASKS = ("gravy", "isoelectric_point")
REGRESSION_KEYS = ("spearman", "spearman_ci", "pearson", "pearson_ci", "r2", "r2_ci")
PROTOCOLS = {"TRTR": "protocol_trtr", "TSTR": "protocol_tstr", "TRTS": "protocol_trts"}
SUMMARY_KEYS = ("accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci", "roc_auc", "roc_auc_ci")


def _models(metrics: dict) -> dict:
    return {name: {k: m.get(k) for k in SUMMARY_KEYS} for name, m in metrics["models"].items()}


def run_stage2(run_id: str, configs_dir: str = "configs/classifier", checkpoints_dir: str | None = None,
               processed_dir: str | None = None, tasks: list[str] | None = None, show_progress: bool = True,
               runs_dir: str | None = None) -> dict:
    """Run the ready configs for `run_id`; write stage2/summary.json, compare.csv, compare.png."""
    from codonlm.stage2.train import train_from_config

    folder = Path(configs_dir)
    if not folder.is_dir():
        raise UserError(f"classifier configs not found: {folder}; run from the repository root or pass --configs-dir")
    names = list(READY_TASKS) + list(PROTOCOLS.values()) + list(REGRESSION_TASKS)
    chosen = names if not tasks else tasks
    unknown = [t for t in chosen if t not in names]
    if unknown:
        raise UserError(f"unknown stage-2 task '{unknown[0]}'; choose from {', '.join(names)}")
    t0 = time.perf_counter()
    results, skipped, out_root = {}, {}, None
    for name in chosen:
        cfg = load_classifier_config(folder / f"{name}.yaml")
        overrides = {k: v for k, v in (("checkpoints_dir", checkpoints_dir), ("processed_dir", processed_dir),
                                       ("runs_dir", runs_dir)) if v}
        cfg = cfg.model_copy(update=overrides)
        try:
            results[name] = train_from_config(cfg, run_id=run_id, task=name, show_progress=show_progress)
        except UserError as exc:
            skipped[name] = str(exc)
            log(f"[stage2] {name}: skipped ({exc})")
            continue
        out_root = Path(results[name]["out_dir"]).parent
    if not results:
        raise UserError(f"no stage-2 task could run for {run_id}: {next(iter(skipped.values()))}")
    summary = _summary(run_id, results, skipped, out_root, time.perf_counter() - t0)
    for name, m in results.items():
        key = "spearman" if m.get("kind") == "regression" else "macro_f1"
        log(f"[stage2] {name:18s} {key} " + "  ".join(f"{model} {v[key]:.3f}" for model, v in m["models"].items()
                                                     if v[key] is not None))
    log(f"[stage2] {len(results)} task(s) in {summary['seconds']:.0f} s -> {out_root}/summary.json, compare.csv, "
        "compare.png" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    return summary


def _regression_summary(results: dict, out_root: Path) -> dict:
    """The regression tasks' headline metrics, and regression_compare.csv/png beside compare.csv."""
    found = {name: m for name, m in results.items() if m.get("kind") == "regression"}
    if found:
        rows = [r for name, m in found.items() for r in compare_rows(name, m["models"], REGRESSION_HEADLINE)]
        write_csv(pd.DataFrame(rows), out_root / "regression_compare.csv")
        plot_regression_compare(rows, "Stage-2 regression", out_root / "regression_compare.png")
    return {name: {"description": m["description"], "target": m["target"], "n": m["n"], "cv": m["cv"],
                   "final_model_layer": m["embedding"]["final_model_layer"], "chosen_layers": m["chosen_layers"],
                   "models": {k: {key: v.get(key) for key in REGRESSION_KEYS} for k, v in m["models"].items()},
                   "layers": {k: {key: v.get(key) for key in REGRESSION_KEYS[:2]} for k, v in m["layers"].items()}}
            for name, m in found.items()}


def _summary(run_id: str, results: dict, skipped: dict, out_root: Path, seconds: float) -> dict:
    regression = _regression_summary(results, out_root)
    results = {name: m for name, m in results.items() if name not in regression}
    tasks = {name: {"description": m["description"], "n_train": m["n_train"], "n_test": m["n_test"],
                    "classes": m["classes"], "models": _models(m), "split": m["split"]["kind"]}
             for name, m in results.items() if name in READY_TASKS}
    protocols = {p: _models(results[name]) for p, name in PROTOCOLS.items() if name in results}
    sizes = {p: {"n_train": results[name]["n_train"], "n_test": results[name]["n_test"],
                 "train": results[name]["train_sources"], "test": results[name]["test_sources"]}
             for p, name in PROTOCOLS.items() if name in results}
    info = read_json(out_root / "data" / "tasks.json", {}) or {}
    emb = info.get("embedding", {}).get("heldout", {})
    summary = {
        "run_id": run_id, "tasks": tasks, "protocols": protocols, "protocol_sets": sizes,
        "embedding": {"layer": next((m["embedding"]["layer"] for m in results.values()), emb.get("layer")),
                      "layers_stored": emb.get("layer"), "pool": emb.get("pool"), "seconds": emb.get("seconds"),
                      "embeddings_per_s": emb.get("embeddings_per_s"), "codons_per_s": emb.get("codons_per_s"),
                      "n_genes": info.get("counts", {}).get("heldout")},
        "regression": regression, "skipped": skipped, "seconds": round(seconds, 1), "data": {k: info.get(k) for k in
                                                                 ("hydropathy_thresholds", "domains", "temperature", "scores",
                                                                  "prompt_split")},
    }  # fmt: skip
    rows = [r for name, m in results.items() for r in compare_rows(name, m["models"])]
    if not rows:
        write_json(out_root / "summary.json", summary)
        return summary
    write_csv(pd.DataFrame(rows, columns=["task", "model", "metric", "value", "ci_low", "ci_high"]),
              out_root / "compare.csv")
    plot_compare(rows, f"Stage-2 classifiers, run {run_id}", out_root / "compare.png",
                 n_classes={name: len(m["classes"]) for name, m in results.items()})
    write_json(out_root / "summary.json", summary)
    return summary
