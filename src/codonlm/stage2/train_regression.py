"""A regression config (`task: regression`) end to end: read the user's table, embed and score the genes with
the run's model when no files are given, cross-validate every model (`regression.py`), write out_dir.

Everything a user can get wrong (a missing target or sequence column, a non-numeric or empty target value,
too few genes, a constant target) fails in one line before anything is written; results are written
atomically and metrics.json last, so out_dir never holds half a run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from codonlm.data.codons import clean_sequences, internal_stop_count, translate
from codonlm.data.records import align, is_table, keep_first, read_sequences, read_table, row_ids, table_ids
from codonlm.errors import UserError
from codonlm.io import write_csv, write_json
from codonlm.log import log
from codonlm.stage2.config import RegressionConfig, resolve_paths
from codonlm.stage2.regression import (
    RegressionSet,
    cai_scores,
    check_target,
    column_grouping,
    evaluate_models,
    group_proteins,
    mean_loglik,
    refit_all,
    transform_target,
)
from codonlm.stage2.regressors import ZERO_SHOT, feature_source


def read_target(table: pd.DataFrame, path: str, column: str) -> np.ndarray:
    """The numeric target column; one line naming the first empty or non-numeric row."""
    if column not in table.columns:
        raise UserError(f"{path}: no target column '{column}' (columns: {', '.join(table.columns)}); "
                        "set target_column / --target")
    raw = table[column].astype(str).str.strip()
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = bad[0]
        what = "has no value" if raw.iloc[i] == "" else f"'{raw.iloc[i]}' is not a number"
        raise UserError(f"{path}: row {i + 2} {what} in '{column}'; give every gene a numeric target or drop "
                        "the row")
    return values


def dedupe(ids: list[str], y: np.ndarray, how: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept, their targets) of a table whose ids may repeat (`keep_first`): `error` refuses a repeat,
    `first` keeps an id's first row, `mean` also averages the target over the id's rows."""
    rows = keep_first(ids, "error" if how == "error" else "first", path, table_rows=True)
    if how == "mean" and len(rows) < len(ids):
        log(f"[regression] targets of {len(ids) - len(rows)} repeated id row(s) averaged into their id's first row")
        return rows, pd.Series(y).groupby(np.asarray(ids), sort=False).mean().to_numpy()
    return rows, y[rows]


def _raw_sequences(cfg: RegressionConfig, table: pd.DataFrame, path: str, ids: list[str]) -> tuple[list[str], bool]:
    """(each gene's sequence as given, whether it came from the table's own rows)."""
    if cfg.seq_column in table.columns:
        return table[cfg.seq_column].tolist(), True
    if not cfg.train_seqs:
        raise UserError(f"{path}: no sequence column '{cfg.seq_column}' (columns: {', '.join(table.columns)}); "
                        "set seq_column / --seq-column or give the sequences with train_seqs")
    in_table = is_table(cfg.train_seqs)
    have_ids, seqs, source, _ = read_sequences(fasta=None if in_table else cfg.train_seqs,
                                               csv=cfg.train_seqs if in_table else None, id_column=cfg.id_column,
                                               seq_column=cfg.seq_column)
    return [seqs[i] for i in align(ids, have_ids, path, source)], False


def load_regression_set(cfg: RegressionConfig, run_data=None, notes: dict[str, str] | None = None) -> RegressionSet:
    """Ids, transformed target, clean DNA and CV groups of the labels file (scores and embeddings come later):
    the group column's, else identical proteins, or clusters when `run_data` (the run's DataConfig) split the
    run's genes by cluster (`group_proteins`); notes: what the ready data says of its group columns."""
    if len(cfg.as_list("train_labels")) != 1:
        raise UserError("a regression config takes one train_labels table; concatenate the files")
    path = cfg.as_list("train_labels")[0]
    table = read_table(path, "regression table")
    y = read_target(table, path, cfg.target_column)
    if cfg.transform == "log10":
        transform_target(y, "log10", path)  # names a value <= 0 by its row in the file
    all_ids = row_ids(table, path, cfg.id_column)
    first, y = dedupe(all_ids, y, cfg.dedupe, path)
    table = table.iloc[first].reset_index(drop=True)
    ids = [all_ids[r] for r in first]
    seqs, from_table = _raw_sequences(cfg, table, path, ids)
    kept, dna, _ = clean_sequences(ids, seqs, path, cfg.skip_invalid, stops_table=11 if cfg.skip_invalid else None,
                                   where=[f"row {r + 2}" for r in first] if from_table else None)
    stopped = next((name for name, s in zip(kept, dna, strict=True) if internal_stop_count(s)), None)
    if stopped is not None:  # a measured property of a gene with internal stops is not one of its CDS
        raise UserError(f"{path}: record '{stopped}' has internal stop codons, not a CDS; fix or drop it (or pass "
                        "--skip-invalid to skip such records)")
    kept_ids = set(kept)
    rows = np.array([i for i, name in enumerate(ids) if name in kept_ids], dtype=np.int64)
    y = transform_target(y[rows], cfg.transform, path)
    if cfg.group_column:
        if cfg.group_column not in table.columns:
            raise UserError(f"{path}: no '{cfg.group_column}' column (columns: {', '.join(table.columns)}); "
                            "set group_column")
        groups = table[cfg.group_column].to_numpy(dtype=str)[rows]
        grouping = column_grouping(cfg.group_column, notes or {})
    else:
        groups, grouping = group_proteins([translate(s) for s in dna], run_data)
    return RegressionSet(ids=kept, y=y, seqs=dna, groups=groups, source=path, grouping=grouping)


def _embeddings(cfg: RegressionConfig, data: RegressionSet, show_progress: bool) -> tuple[np.ndarray, list[str]]:
    """Embeddings of the genes (every layer for `layer: all`) from the config's files, else made with the run's
    model (cached in out_dir)."""
    from codonlm.stage2.embeddings import load_embeddings, one_layer

    if cfg.train_embeddings:
        files = [load_embeddings(p) for p in cfg.as_list("train_embeddings")]
        if cfg.layer == "all" and any(f.embeddings.ndim != 3 or f.offsets is not None for f in files):
            raise UserError(f"{files[0].path}: one layer only; layer: all needs embeddings of every layer "
                            "(extract-embeddings --layer all)")
        matrix = np.concatenate([f.embeddings if cfg.layer == "all" else one_layer(f, cfg.layer) for f in files])
        rows = align(data.ids, [i for f in files for i in f.ids], data.source, ", ".join(cfg.as_list("train_embeddings")))
        return matrix[rows], files[0].layers if cfg.layer == "all" else [cfg.layer]
    from codonlm.model.load import checkpoint_path
    from codonlm.stage2.tasks import ensure_embeddings

    ckpt = checkpoint_path(cfg.run_id, cfg.checkpoints_dir, cfg.runs_dir)
    table = pd.DataFrame({"id": data.ids, "seq": data.seqs})
    emb = ensure_embeddings(cfg, table, Path(cfg.out_dir) / "embeddings.npz", ckpt, show_progress)
    return emb.embeddings, emb.layers


def _scores(cfg: RegressionConfig, data: RegressionSet) -> dict[str, np.ndarray]:
    """Per-gene zero-shot scores: from zero_shot_scores, else CAI against cai_reference and the model's mean
    log-likelihood per codon."""
    wanted = {feature_source(m) for m in cfg.models if feature_source(m) in ("cai", "mean_loglik")}
    if cfg.zero_shot_scores:
        table = read_table(cfg.zero_shot_scores, "zero-shot scores")
        rows = align(data.ids, table_ids(table, cfg.zero_shot_scores) or [], data.source, cfg.zero_shot_scores)
        return {k: pd.to_numeric(table[k]).to_numpy(dtype=np.float64)[rows] for k in wanted if k in table.columns}
    scores = {}
    if "cai" in wanted and cfg.cai_reference:
        scores["cai"] = cai_scores(data.seqs, cfg.cai_reference)
    if "mean_loglik" in wanted:
        from codonlm.model.load import load_model

        model, _, _ = load_model(cfg.run_id, cfg.checkpoints_dir, runs_dir=cfg.runs_dir)
        scores["mean_loglik"] = mean_loglik(model, data.ids, data.seqs)
    return scores


def write_regression_results(cfg: RegressionConfig, data: RegressionSet, result: dict, title: str) -> dict:
    """Models, predictions.csv, figures, compare table, then metrics.json (last) in out_dir."""
    from codonlm.stage2.classifiers import copy_estimator, save_estimator
    from codonlm.stage2.metrics import (
        REGRESSION_HEADLINE,
        compare_rows,
        plot_measured_vs_predicted,
        plot_metric_by_layer,
        plot_regression_compare,
    )

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fitted, final_layer = refit_all(data, cfg.models, cfg.seed, result["vectorizer"])
    files = {name: str(save_estimator(est, out / f"{name}.skops")) for name, est in fitted.items()}
    if fitted:
        copy_estimator(Path(files[next(iter(fitted))]), out / "model.skops")
    if result["vectorizer"] is not None:
        save_estimator(result["vectorizer"], out / "vectorizer.skops")
    first = {m: p[0] for m, p in result["predictions"].items()}
    write_csv(pd.DataFrame({"id": data.ids, "target": data.y, "fold": result["fold"],
                            **{m: p.mean(0) for m, p in result["predictions"].items()}}), out / "predictions.csv")
    plot_measured_vs_predicted(data.y, first, result["models"], title, cfg.target_column, out / "scatter.png")
    if result["layers"]:
        plot_metric_by_layer(result["layers"], result["chosen_layers"], title, out / "layers.png")
    rows = compare_rows(title, result["models"], REGRESSION_HEADLINE)
    write_csv(pd.DataFrame(rows), out / "compare.csv")
    plot_regression_compare(rows, title, out / "compare.png")
    metrics = {
        "task": title, "kind": "regression", "description": cfg.description, "run_id": cfg.run_id,
        "out_dir": str(out), "target": cfg.target_column, "transform": cfg.transform, "n": len(data.y),
        "n_groups": len(set(data.groups)), "source": data.source, "cv": result["cv"],
        "embedding": {"layer": cfg.layer, "pool": cfg.pool, "layers": data.layers, "final_model_layer": final_layer},
        "models": result["models"], "layers": result["layers"], "chosen_layers": result["chosen_layers"],
        "zero_shot": [m for m in cfg.models if m in ZERO_SHOT], "files": files, "cv_seconds": result["cv_seconds"],
    }  # fmt: skip
    write_json(out / "metrics.json", metrics)
    return metrics


def train_regression_from_config(cfg: RegressionConfig, run_id: str | None = None, task: str | None = None,
                                 show_progress: bool = True) -> dict:
    """Build the ready data when asked, cross-validate every model, write out_dir; returns metrics.json."""
    from codonlm.stage2.tasks import build_run_data, run_context

    cfg = resolve_paths(cfg, run_id)
    notes = build_run_data(cfg, show_progress=show_progress)["group_columns"] if cfg.build_from_run else {}
    # the run's split decides the default groups: its clusters when it was split by cluster
    run_data = run_context(cfg)[1].data if cfg.needs_model and not cfg.group_column else None
    data = load_regression_set(cfg, run_data, notes)
    check_target(data, cfg.folds)  # before any embedding or scoring is written
    title = task or Path(cfg.out_dir).name
    if any(feature_source(m) == "embedding" for m in cfg.models):
        data.embeddings, data.layers = _embeddings(cfg, data, show_progress)
    data.scores = _scores(cfg, data)
    log(f"[regression] {title}: {len(data.y)} genes in {len(set(data.groups))} groups ({data.grouping}), target "
        f"'{cfg.target_column}' ({cfg.transform}); {cfg.folds}-fold CV x {cfg.repeats}; models {', '.join(cfg.models)}")
    result = evaluate_models(data, cfg.models, cfg.folds, cfg.repeats, cfg.seed, cfg.bootstrap, cfg.kmer_k)
    metrics = write_regression_results(cfg, data, result, title)
    log(f"[regression] {title}: Spearman " + ", ".join(
        f"{m} {v['spearman']:.3f}" for m, v in metrics["models"].items() if v["spearman"] is not None)
        + f" -> {cfg.out_dir}/metrics.json")
    return metrics
