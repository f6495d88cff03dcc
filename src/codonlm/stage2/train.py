"""Train every model of a classifier config on one split, and evaluate a saved model on new data.

Everything a user can get wrong (missing ids, one class, mismatched counts, bad DNA) is checked while
loading, before anything is written; results are written atomically, so out_dir never holds half a run.

out_dir after train_from_config:
    metrics.json       per model: accuracy, macro-F1, ROC-AUC with 95% bootstrap intervals, per-class
                       precision/recall/F1, confusion matrix, ECE; the split and any subsampling
    confusion.png, calibration.png, compare.csv, compare.png
    <model>.skops      each scikit-learn model (kmer_xgb.json for xgboost), vectorizer.skops for k-mer models
    model.skops        the first model of the config (the manual's `model.pkl` resolves to it)
    split.csv          id, set (train/test), label: the split every model used
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from codonlm.data.codons import clean_sequences
from codonlm.data.records import align, is_table, read_sequences, read_table, table_ids
from codonlm.errors import UserError
from codonlm.io import write_csv, write_json
from codonlm.log import log
from codonlm.stage2.classifiers import (
    copy_estimator,
    estimator_suffix,
    feature_kind,
    load_estimator,
    make_classifier,
    save_estimator,
)
from codonlm.stage2.config import ClassifierConfig, resolve_paths
from codonlm.stage2.embeddings import load_embeddings, one_layer
from codonlm.stage2.kmer import kmer_features, kmer_vectorizer
from codonlm.stage2.metrics import (
    classification_metrics,
    compare_rows,
    plot_calibration,
    plot_compare,
    plot_confusions,
)
from codonlm.stage2.regression import column_grouping


@dataclass
class LabelledSet:
    """Genes with labels and the features the models need (embeddings and/or clean DNA)."""

    ids: list[str]
    labels: np.ndarray  # str
    embeddings: np.ndarray | None
    seqs: list[str] | None
    source: str
    groups: np.ndarray | None = None  # genes of one group stay on one side of the split

    def take(self, rows: np.ndarray) -> LabelledSet:
        return LabelledSet([self.ids[i] for i in rows], self.labels[rows],
                           None if self.embeddings is None else self.embeddings[rows],
                           None if self.seqs is None else [self.seqs[i] for i in rows], self.source,
                           None if self.groups is None else self.groups[rows])


# --------------------------------------------------------------------------- loading


def read_labels(paths: list[str], label_column: str, id_column: str,
                group_column: str | None = None) -> tuple[list[str] | None, np.ndarray, list, np.ndarray | None]:
    """(ids or None, labels, tables, groups or None) of one or more label CSVs."""
    tables, ids, labels, groups = [], [], [], []
    for path in paths:
        table = read_table(path, "label CSV")
        for column, key in ((label_column, "label_column"), (group_column, "group_column")):
            if column is not None and column not in table.columns:
                raise UserError(f"{path}: no '{column}' column (columns: {', '.join(table.columns)}); "
                                f"set {key} in the config")
        empty = np.flatnonzero(table[label_column].to_numpy() == "")
        if empty.size:
            raise UserError(f"{path}: row {empty[0] + 2} has an empty '{label_column}'; label every row")
        row_ids = table_ids(table, path, id_column)
        if row_ids is None and len(paths) > 1:
            raise UserError(f"{path}: no '{id_column}' column; several label files need ids to match features")
        tables.append(table)
        ids += row_ids or []
        labels += table[label_column].tolist()
        groups += table[group_column].tolist() if group_column else []
    return (ids or None), np.array(labels, dtype=str), tables, np.array(groups, dtype=str) if group_column else None


def _embeddings_for(ids: list[str] | None, n: int, paths: list[str], labels_src: str,
                    layer: str | None = None) -> np.ndarray:
    files = [load_embeddings(p) for p in paths]
    matrices = [one_layer(f, layer) for f in files]
    if len({m.shape[1] for m in matrices}) > 1:
        raise UserError(f"{', '.join(paths)}: embeddings of different widths; extract them with the same run")
    matrix = np.concatenate(matrices)
    if ids is None:
        if len(files) > 1 or matrix.shape[0] != n:
            raise UserError(f"{labels_src} has {n} rows but {paths[0]} holds {matrix.shape[0]} embeddings; give "
                            "the labels an 'id' column or the same rows in the same order")
        return matrix
    return matrix[align(ids, [i for f in files for i in f.ids], labels_src, ", ".join(paths))]


def _seqs_for(ids: list[str] | None, n: int, paths: list[str], tables: list, labels_src: str,
              id_column: str, seq_column: str = "seq") -> list[str]:
    if paths:
        have_ids, raw = [], []
        for path in paths:
            table = is_table(path)
            i, s, _, w = read_sequences(fasta=None if table else path, csv=path if table else None, id_column=id_column,
                                        seq_column=seq_column)
            have_ids += i
            raw += s
        source, where = ", ".join(paths), w if len(paths) == 1 else None  # one table: its rows in messages
    elif all(seq_column in t.columns for t in tables):
        raw = [s for t in tables for s in t[seq_column]]
        where = [f"row {r + 2}" for t in tables for r in range(len(t))] if len(tables) == 1 else None
        have_ids, source = list(ids or []), labels_src
    else:
        raise UserError(f"{labels_src}: k-mer models need sequences; add a '{seq_column}' column or set *_seqs / "
                        "--seqs")
    if ids is None:
        if len(raw) != n:
            raise UserError(f"{labels_src} has {n} rows but {source} holds {len(raw)} sequences; give the labels "
                            "an 'id' column or the same rows in the same order")
        rows = np.arange(n)
    else:
        rows = align(ids, have_ids, labels_src, source) if have_ids else np.arange(n)
    return clean_sequences(ids or [f"row{i + 1}" for i in range(n)], [raw[i] for i in rows], source,
                           where=None if where is None else [where[i] for i in rows])[1]


def load_set(labels: list[str], embeddings: list[str], seqs: list[str], need_embeddings: bool, need_seqs: bool,
             label_column: str = "label", id_column: str = "id", group_column: str | None = None,
             layer: str | None = None, seq_column: str = "seq") -> LabelledSet:
    ids, y, tables, groups = read_labels(labels, label_column, id_column, group_column)
    src = ", ".join(labels)
    emb = _embeddings_for(ids, len(y), embeddings, src, layer) if need_embeddings else None
    dna = _seqs_for(ids, len(y), seqs, tables, src, id_column, seq_column) if need_seqs else None
    return LabelledSet(ids or [f"row{i + 1}" for i in range(len(y))], y, emb, dna, src, groups)


def subsample(data: LabelledSet, max_per_class: int | None, seed: int) -> tuple[LabelledSet, dict]:
    """At most max_per_class genes per class, a seeded draw (the same set gives the same draw)."""
    if max_per_class is None:
        return data, {}
    rng = np.random.default_rng(seed)
    keep, counts = [], {}
    for label in sorted(set(data.labels)):
        rows = np.flatnonzero(data.labels == label)
        counts[label] = [len(rows), min(len(rows), max_per_class)]
        keep.append(np.sort(rng.choice(rows, size=min(len(rows), max_per_class), replace=False)))
    return data.take(np.sort(np.concatenate(keep))), counts


def _check_classes(train: LabelledSet, test: LabelledSet) -> list[str]:
    classes = sorted(set(train.labels))
    if len(classes) < 2:
        raise UserError(f"{train.source}: only one class ('{classes[0]}') in the training labels; a classifier "
                        "needs at least two")
    unseen = sorted(set(test.labels) - set(classes))
    if unseen:
        raise UserError(f"{test.source}: test class '{unseen[0]}' never occurs in the training labels "
                        f"({train.source}); train on every class you test")
    return classes


def seeded_split(data: LabelledSet, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test), stratified by label; with groups, no group straddles the split (the first
    of round(1 / test_size) stratified group folds is the test set)."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(data.labels))
    try:
        if data.groups is None:
            return train_test_split(rows, test_size=test_size, random_state=seed, stratify=data.labels)
        return next(group_folds(data, max(2, round(1 / test_size)), seed))
    except ValueError as exc:
        raise UserError(f"{data.source}: cannot split {len(rows)} genes ({exc})") from None


def group_folds(data: LabelledSet, n_splits: int, seed: int):
    """Stratified group k-fold (train, test) row indices: no group straddles a fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return folds.split(np.zeros(len(data.labels)), data.labels, data.groups)


def split_sets(cfg: ClassifierConfig, notes: dict[str, str] | None = None) -> tuple[LabelledSet, LabelledSet, dict]:
    """(train, test, split info): the config's test files, else one seeded stratified (group) split; notes:
    what the ready data says of its group columns (metrics.json split.groups)."""
    need = {"need_embeddings": bool(cfg.probes), "need_seqs": bool(cfg.kmers),
            "label_column": cfg.label_column, "id_column": cfg.id_column, "layer": cfg.layer,
            "seq_column": cfg.seq_column}
    train = load_set(cfg.as_list("train_labels"), cfg.as_list("train_embeddings"), cfg.as_list("train_seqs"),
                     group_column=cfg.group_column if cfg.test_labels is None else None, **need)
    train, drawn = subsample(train, cfg.max_per_class, cfg.seed)
    info: dict = {"seed": cfg.seed, "max_per_class": cfg.max_per_class}
    if cfg.test_labels is None:
        if len(set(train.labels)) < 2:
            _check_classes(train, train)
        counts = pd.Series(train.labels).value_counts()
        if counts.min() < 2:
            raise UserError(f"{train.source}: class '{counts.idxmin()}' has one gene; a stratified split needs at "
                            "least two per class (add genes or drop the class)")
        tr, te = seeded_split(train, cfg.test_size, cfg.seed)
        train, test = train.take(np.sort(tr)), train.take(np.sort(te))
        kind = f"seeded stratified split, groups by '{cfg.group_column}'" if cfg.group_column else \
            "seeded stratified split"
        info.update(kind=kind, test_size=cfg.test_size, subsampled=drawn,
                    groups=column_grouping(cfg.group_column, notes or {}) if cfg.group_column else None)
    else:
        test = load_set(cfg.as_list("test_labels"), cfg.as_list("test_embeddings"), cfg.as_list("test_seqs"), **need)
        test, drawn_test = subsample(test, cfg.max_per_class, cfg.seed)
        info.update(kind="declared train/test files", subsampled={"train": drawn, "test": drawn_test})
    if cfg.max_per_class is not None:
        log(f"[classifier] subsampled to at most {cfg.max_per_class} genes per class (seed {cfg.seed})")
    return train, test, info


# --------------------------------------------------------------------------- fitting


def _features(model: str, data: LabelledSet, vectorizer) -> np.ndarray:
    return kmer_features(vectorizer, data.seqs) if feature_kind(model) == "kmer" else data.embeddings


def fit_models(cfg: ClassifierConfig, train: LabelledSet, test: LabelledSet) -> tuple[dict, dict, object]:
    """(fitted estimators, metrics per model, vectorizer or None).

    Fits run with one BLAS/OpenMP thread: these problems are small (about a thousand genes), and with two
    threads on a shared 2-core machine OpenMP spin-waiting made logistic regression 70x slower (measured).
    """
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    vectorizer = kmer_vectorizer(cfg.kmer_k).fit(train.seqs) if cfg.kmers else None
    fitted, results = {}, {}
    for name in cfg.models:
        t0 = time.perf_counter()
        estimator = make_classifier(name, cfg.seed)
        group_calibration = name.endswith("svm") and train.groups is not None
        if group_calibration:  # Platt scaling's internal folds must keep groups whole too (else twins leak)
            estimator.set_params(clf__cv=list(group_folds(train, 3, cfg.seed)))
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
            warnings.simplefilter("always", ConvergenceWarning)
            try:
                estimator.fit(_features(name, train, vectorizer), train.labels)
            except ValueError as exc:
                raise UserError(f"{name} cannot be fitted on {len(train.labels)} genes of {train.source} "
                                f"({str(exc).splitlines()[0][:120]}); give it more genes per class") from None
            proba = estimator.predict_proba(_features(name, test, vectorizer))
        if group_calibration:
            estimator.set_params(clf__cv=3)  # the fold indices served their purpose; keep them out of the file
        metrics = classification_metrics(test.labels, proba, list(estimator.classes_), cfg.bootstrap, cfg.seed)
        metrics["fit_seconds"] = round(time.perf_counter() - t0, 2)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            metrics["note"] = "did not fully converge"
        fitted[name], results[name] = estimator, metrics
        log(f"[classifier] {name}: accuracy {metrics['accuracy']:.3f} {_ci(metrics['accuracy_ci'])}, macro-F1 "
            f"{metrics['macro_f1']:.3f} {_ci(metrics['macro_f1_ci'])}, ROC-AUC "
            + (f"{metrics['roc_auc']:.3f}" if metrics["roc_auc"] is not None else "n/a")
            + f" ({metrics['fit_seconds']:.1f} s)")
    return fitted, results, vectorizer


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def write_results(out: Path, title: str, classes: list[str], results: dict, prefix: str = "") -> list[dict]:
    """metrics figures and the compare table of one task; returns the compare rows."""
    plot_confusions(results, classes, title, out / f"{prefix}confusion.png")
    plot_calibration(results, title, out / f"{prefix}calibration.png")
    rows = compare_rows(title, results)
    if not prefix:
        write_csv(pd.DataFrame(rows), out / "compare.csv")
        plot_compare(rows, title, out / "compare.png", n_classes={title: len(classes)})
    return rows


def train_from_config(cfg: ClassifierConfig, run_id: str | None = None, task: str | None = None,
                      show_progress: bool = True) -> dict:
    """Build the ready data when asked, fit every model on one split, write out_dir; returns metrics.json.
    A `task: regression` config goes to `train_regression` (cross-validated regression)."""
    if cfg.task == "regression":
        from codonlm.stage2.train_regression import train_regression_from_config

        return train_regression_from_config(cfg, run_id, task, show_progress)
    cfg = resolve_paths(cfg, run_id)
    notes = {}
    if cfg.build_from_run:
        from codonlm.stage2.tasks import build_run_data

        notes = build_run_data(cfg, show_progress=show_progress)["group_columns"]
    train, test, split = split_sets(cfg, notes)
    classes = _check_classes(train, test)
    log(f"[classifier] {task or cfg.out_dir}: {len(train.labels)} training and {len(test.labels)} test genes, "
        f"{len(classes)} classes; models {', '.join(cfg.models)}")
    fitted, results, vectorizer = fit_models(cfg, train, test)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: save_estimator(est, out / f"{name}{estimator_suffix(est)}") for name, est in fitted.items()}
    primary = files[cfg.models[0]]
    copy_estimator(primary, out / f"model{primary.suffix}")
    if vectorizer is not None:
        save_estimator(vectorizer, out / "vectorizer.skops")
    write_csv(pd.DataFrame({"id": train.ids + test.ids, "set": ["train"] * len(train.ids) + ["test"] * len(test.ids),
                            "label": list(train.labels) + list(test.labels)}), out / "split.csv")
    title = task or Path(cfg.out_dir).name
    write_results(out, title, classes, results)
    metrics = {
        "task": title, "description": cfg.description, "run_id": cfg.run_id, "out_dir": str(out), "classes": classes,
        "n_train": len(train.labels), "n_test": len(test.labels), "split": split,
        "train_sources": train.source, "test_sources": test.source, "kmer_k": cfg.kmer_k,
        "embedding": {"layer": cfg.layer, "pool": cfg.pool}, "bootstrap": cfg.bootstrap,
        "models": results, "files": {k: str(v) for k, v in files.items()}, "primary_model": cfg.models[0],
    }  # fmt: skip
    write_json(out / "metrics.json", metrics)
    log(f"[classifier] wrote {out}/metrics.json, confusion.png, calibration.png, compare.csv/png and the models")
    return metrics


# --------------------------------------------------------------------------- a saved model on new data


def evaluate_saved(kind: str, model_path: str, labels: str, out: str, embeddings: str | None = None,
                   seqs: str | None = None, vectorizer: str | None = None, label_column: str = "label",
                   id_column: str = "id", bootstrap: int = 1000, seed: int = 0, seq_column: str = "seq") -> dict:
    """Score a model train_classifier saved on labelled data: eval_metrics.json, eval_confusion.png and
    eval_calibration.png in `out` (prefixed, so the training metrics in the same folder stay)."""
    if kind not in ("probe", "kmer"):
        raise UserError(f"--kind {kind}: choose probe (embeddings) or kmer (sequences)")
    if kind == "probe" and not embeddings:
        raise UserError("--kind probe needs --embeddings NPZ")
    if kind == "kmer" and not vectorizer:
        raise UserError("--kind kmer needs --vectorizer (vectorizer.skops beside the model) and --seqs or a "
                        "'seq' column in --labels")
    estimator = load_estimator(model_path)
    vec = load_estimator(vectorizer, "vectorizer") if kind == "kmer" else None
    data = load_set([labels], [embeddings] if embeddings else [], [seqs] if seqs else [], kind == "probe",
                    kind == "kmer", label_column, id_column, seq_column=seq_column)
    classes = [str(c) for c in estimator.classes_]
    unseen = sorted(set(data.labels) - set(classes))
    if unseen:
        raise UserError(f"{labels}: class '{unseen[0]}' is unknown to the model (it knows {', '.join(classes)})")
    X = kmer_features(vec, data.seqs) if kind == "kmer" else data.embeddings
    try:
        proba = estimator.predict_proba(X)
    except ValueError as exc:
        raise UserError(f"{model_path} does not fit these features ({str(exc).splitlines()[0][:120]}); "
                        "use the embeddings/vectorizer of the run it was trained on") from None
    metrics = classification_metrics(data.labels, proba, classes, bootstrap, seed)
    name = Path(model_path).stem
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_results(folder, f"{name} on {Path(labels).name}", classes, {name: metrics}, prefix="eval_")
    result = {"model": str(model_path), "kind": kind, "labels": labels, "classes": classes,
              "n_test": len(data.labels), "models": {name: metrics}}
    write_json(folder / "eval_metrics.json", result)
    log(f"[eval-classifier] {name} on {len(data.labels)} genes: accuracy {metrics['accuracy']:.3f} "
        f"{_ci(metrics['accuracy_ci'])}, macro-F1 {metrics['macro_f1']:.3f} {_ci(metrics['macro_f1_ci'])} "
        f"-> {folder}/eval_metrics.json")
    return result
