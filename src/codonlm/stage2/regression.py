"""Regression in stage 2: predict a measured gene property from sequence, probes against baselines.

Every model (`regressors.py`) is scored by K-fold cross-validation (default 5 folds, `repeats` times with
seeds seed, seed + 1, ...): out-of-fold predictions of every gene, then Spearman, Pearson and R^2 with 95%
bootstrap intervals (`metrics.regression_metrics`). Folds are grouped: genes of one group (by default
identical proteins; `group_column` for clusters) never sit on both sides of a split, and stratified by
target so each fold spans the range. With `layer: all` every layer is scored with the ridge probe
(metric by layer), and in each outer fold the probes read the layer the ridge's inner group CV scored
best on the training genes only, never on the test fold.

out_dir:
    metrics.json      per model: spearman, pearson, r2 (+ _ci, _per_repeat); the CV settings; the layer sweep
    predictions.csv   id, target, fold (first repeat), each model's out-of-fold prediction (mean of repeats)
    scatter.png       measured vs predicted per model;  layers.png  metric by layer (layer: all)
    compare.csv/png   every model's Spearman / Pearson / R^2 with intervals
    <model>.skops     each fitted model refitted on every gene; vectorizer.skops for kmer_ridge; model.skops
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from codonlm.errors import UserError
from codonlm.stage2.regressors import (
    KRR_ALPHAS,
    KRR_GAMMAS,
    RIDGE_ALPHAS,
    ZERO_SHOT,
    codon_features,
    feature_source,
    make_regressor,
)

MIN_GENES = 20


@dataclass
class RegressionSet:
    """Genes with a numeric target and what the models read."""

    ids: list[str]
    y: np.ndarray
    seqs: list[str]
    groups: np.ndarray
    embeddings: np.ndarray | None = None  # [genes, channels] or [genes, layers, channels]
    layers: list[str] = field(default_factory=lambda: ["final"])
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # per-gene cai, mean_loglik
    source: str = "input"
    grouping: str = "identical proteins"  # what `groups` are (metrics.json cv.groups)


def check_target(data: RegressionSet, folds: int) -> None:
    """One line saying why cross-validation cannot run (too few genes or groups, a constant target)."""
    n = len(data.y)
    if n < MIN_GENES:
        raise UserError(f"{data.source}: {n} labelled genes; cross-validated regression needs at least "
                        f"{MIN_GENES}, add genes")
    if np.ptp(data.y) == 0:
        raise UserError(f"{data.source}: the target is constant ({data.y[0]:g} for all {n} genes); nothing to "
                        "predict, check the target column")
    n_groups = len(set(data.groups))
    if n_groups < folds:
        raise UserError(f"{data.source}: {n_groups} groups of identical proteins / clusters for {folds} folds; "
                        "lower 'folds' or add genes")


def cv_folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) rows of a seeded group k-fold stratified by target: the groups, ranked by their mean
    target (ties in random order), are dealt in runs of `folds`, each run's groups to the folds in a random
    order. No group straddles a split, and every fold spans the target's range. (scikit-learn's
    StratifiedGroupKFold does the same job 100x slower on a thousand singleton groups: measured 12 s of a
    50 s task.)"""
    rng = np.random.default_rng(seed)
    names, group_of = np.unique(groups, return_inverse=True)
    mean = np.bincount(group_of, weights=y) / np.bincount(group_of)
    shuffled = rng.permutation(len(names))
    ranked = shuffled[np.argsort(mean[shuffled], kind="stable")]
    deal = np.argsort(rng.random((-(-len(names) // folds), folds)), axis=1).ravel()[: len(names)]
    fold_of = np.empty(len(names), dtype=np.int64)
    fold_of[ranked] = deal
    fold = fold_of[group_of]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(folds)]


def ridge_penalty(X: np.ndarray, y: np.ndarray, inner: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(alpha, its mean inner R^2): the RIDGE_ALPHAS value a standardised ridge scores best with over the
    inner folds, every alpha solved from one SVD per fold (as RidgeCV would, without its 45 refits)."""
    from sklearn.preprocessing import StandardScaler

    scores = np.zeros(len(RIDGE_ALPHAS))
    for train, test in inner:
        scaler = StandardScaler().fit(X[train])
        u, s, vt = np.linalg.svd(scaler.transform(X[train]), full_matrices=False)
        offset = y[train].mean()
        shrink = s[:, None] / (s[:, None] ** 2 + RIDGE_ALPHAS[None])  # [rank, alphas]
        pred = scaler.transform(X[test]) @ (vt.T @ (shrink * (u.T @ (y[train] - offset))[:, None])) + offset
        total = ((y[test] - y[test].mean()) ** 2).sum()
        scores += 1 - ((y[test][:, None] - pred) ** 2).sum(0) / (total if total > 0 else np.nan)
    best = int(np.nanargmax(scores)) if not np.isnan(scores).all() else 0
    return float(RIDGE_ALPHAS[best]), float(scores[best] / len(inner))


def kernel_ridge_params(X: np.ndarray, y: np.ndarray, inner: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(alpha, gamma): the KRR_ALPHAS x KRR_GAMMAS pair an RBF kernel ridge (standardised inputs and target,
    as `probe_krr`) scores best with over the inner folds, by mean R^2; each fold's kernel is decomposed once
    per width and every penalty solved from that."""
    from sklearn.preprocessing import StandardScaler

    widths = KRR_GAMMAS / X.shape[1]
    scores = np.zeros((len(widths), len(KRR_ALPHAS)))
    for train, test in inner:
        scaler = StandardScaler().fit(X[train])
        a, b = scaler.transform(X[train]), scaler.transform(X[test])
        norms = (a**2).sum(1)
        d_train = np.maximum(norms[:, None] + norms[None] - 2 * a @ a.T, 0)
        d_test = np.maximum((b**2).sum(1)[:, None] + norms[None] - 2 * b @ a.T, 0)
        mu, sd = y[train].mean(), y[train].std() or 1.0
        total = ((y[test] - y[test].mean()) ** 2).sum()
        for g, width in enumerate(widths):
            w, v = np.linalg.eigh(np.exp(-width * d_train))
            coef = v @ ((v.T @ ((y[train] - mu) / sd))[:, None] / (np.maximum(w, 0)[:, None] + KRR_ALPHAS[None]))
            pred = np.exp(-width * d_test) @ coef * sd + mu
            scores[g] += 1 - ((y[test][:, None] - pred) ** 2).sum(0) / (total if total > 0 else np.nan)
    best = np.unravel_index(np.nanargmax(scores), scores.shape) if not np.isnan(scores).all() else (0, 0)
    return float(KRR_ALPHAS[best[1]]), float(widths[best[0]])


def feature_table(data: RegressionSet, models: list[str], vectorizer=None) -> dict[str, np.ndarray]:
    """Each input the models read, computed once: codon or k-mer frequencies, per-gene scores; embeddings
    as they are ([genes, channels] or [genes, layers, channels])."""
    from codonlm.stage2.kmer import kmer_features

    table: dict[str, np.ndarray] = {}
    for source in {feature_source(m) for m in models}:
        if source == "embedding":
            table[source] = data.embeddings if data.embeddings.ndim == 3 else data.embeddings[:, None]
        elif source == "codon":
            table[source] = codon_features(data.seqs)
        elif source == "kmer":
            table[source] = kmer_features(vectorizer, data.seqs)
        else:
            table[source] = data.scores[source][:, None]
    return table


def fit_one(model: str, X: np.ndarray, data: RegressionSet, rows: np.ndarray, seed: int) -> tuple[object, float | None]:
    """(a fitted estimator of `model` on `rows` of X, the inner R^2 of a ridge): ridge penalties are chosen
    by inner group CV on those rows only."""
    from scipy.linalg import LinAlgWarning
    from sklearn.exceptions import ConvergenceWarning

    alpha, gamma, inner_r2 = None, None, None
    if model.endswith("ridge") or model == "probe_krr":
        inner = cv_folds(data.y[rows], data.groups[rows], min(3, len(set(data.groups[rows]))), seed)
        if model == "probe_krr":
            alpha, gamma = kernel_ridge_params(X[rows], data.y[rows], inner)
        else:
            alpha, inner_r2 = ridge_penalty(X[rows], data.y[rows], inner)
    estimator = make_regressor(model, seed, alpha, gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", LinAlgWarning)  # codon frequencies sum to one: collinear by design
        estimator.fit(X[rows], data.y[rows])
    return estimator, inner_r2


def fit_fold(models: list[str], features: dict, data: RegressionSet, rows: np.ndarray, seed: int) -> tuple[dict, int, list]:
    """Every fitted model on `rows`: ({model: estimator}, the layer the probes read, the per-layer ridges).
    With several layers the ridge probe is fitted on each, and the probes read the one whose inner R^2
    is best (chosen on `rows` only)."""
    layer, ridges = 0, []
    if "embedding" in features and features["embedding"].shape[1] > 1:
        ridges = [fit_one("probe_ridge", features["embedding"][:, i], data, rows, seed)
                  for i in range(features["embedding"].shape[1])]
        layer = int(np.argmax([score for _, score in ridges]))
    fitted = {}
    for m in models:
        if m in ZERO_SHOT:
            continue
        if m == "probe_ridge" and ridges:
            fitted[m] = ridges[layer][0]
            continue
        source = feature_source(m)
        X = features[source][:, layer] if source == "embedding" else features[source]
        fitted[m] = fit_one(m, X, data, rows, seed)[0]
    return fitted, layer, [est for est, _ in ridges]


def cross_validate(data: RegressionSet, models: list[str], folds: int = 5, repeats: int = 1, seed: int = 0,
                   vectorizer=None) -> tuple[dict[str, np.ndarray], dict]:
    """Out-of-fold predictions [repeats, genes] per model, and the CV record (fold of each gene in the first
    repeat, the layer each fold's inner CV chose, the per-layer ridge predictions of a layer sweep)."""
    from threadpoolctl import threadpool_limits

    n = len(data.y)
    features = feature_table(data, models, vectorizer)
    preds = {m: np.zeros((repeats, n)) for m in models}
    n_layers = features["embedding"].shape[1] if "embedding" in features else 1
    layer_preds = np.zeros((n_layers, repeats, n)) if n_layers > 1 else None
    record: dict = {"fold": np.zeros(n, dtype=np.int64), "chosen_layers": []}
    with threadpool_limits(limits=1):  # small problems: one thread avoids OpenMP spin-waits on shared cores
        for r in range(repeats):
            for f, (train, test) in enumerate(cv_folds(data.y, data.groups, folds, seed + r)):
                if r == 0:
                    record["fold"][test] = f
                fitted, layer, ridges = fit_fold(models, features, data, train, seed + r)
                record["chosen_layers"].append(data.layers[layer])
                for m in models:
                    source = feature_source(m)
                    X = features[source][:, layer] if source == "embedding" else features[source]
                    preds[m][r, test] = X[test, 0] if m in ZERO_SHOT else fitted[m].predict(X[test])
                for i, ridge in enumerate(ridges):
                    layer_preds[i, r, test] = ridge.predict(features["embedding"][test, i])
    record["layer_predictions"] = layer_preds
    return preds, record


def evaluate_models(data: RegressionSet, models: list[str], folds: int = 5, repeats: int = 1, seed: int = 0,
                    bootstrap: int = 1000, kmer_k: int = 4) -> dict:
    """Cross-validate every model and score it: {"models": metrics per model, "layers": sweep or {}, ...}.

    What `train-regressor`, the ready tasks and `CodonLM.fit_probe` all call."""
    from codonlm.stage2.kmer import kmer_vectorizer
    from codonlm.stage2.metrics import regression_metrics

    check_target(data, folds)
    missing = [m for m in models if feature_source(m) == "embedding" and data.embeddings is None]
    missing += [m for m in models if feature_source(m) in ("cai", "mean_loglik") and feature_source(m) not in data.scores]
    if missing:
        raise UserError(f"{data.source}: model {missing[0]} has no {feature_source(missing[0])} input; give it "
                        "(embeddings, cai_reference, a run to score with) or drop the model")
    t0 = time.perf_counter()
    # the k-mer vocabulary is unsupervised (every k-mer of the alphabet): fitting it on all genes leaks no target
    vectorizer = kmer_vectorizer(kmer_k).fit(data.seqs) if "kmer_ridge" in models else None
    preds, record = cross_validate(data, models, folds, repeats, seed, vectorizer)
    results = {m: regression_metrics(data.y, preds[m], bootstrap, seed, with_r2=m not in ZERO_SHOT) for m in models}
    layers, chosen = {}, {}
    if record["layer_predictions"] is not None:
        layers = {name: regression_metrics(data.y, record["layer_predictions"][i], bootstrap, seed)
                  for i, name in enumerate(data.layers)}
        chosen = {name: record["chosen_layers"].count(name) for name in data.layers}
    return {"models": results, "predictions": preds, "fold": record["fold"], "layers": layers,
            "chosen_layers": chosen, "vectorizer": vectorizer, "cv_seconds": round(time.perf_counter() - t0, 2),
            "cv": {"folds": folds, "repeats": repeats, "seed": seed, "grouped": True, "groups": data.grouping,
                   "stratified": "target quintile", "bootstrap": bootstrap}}


def refit_all(data: RegressionSet, models: list[str], seed: int, vectorizer) -> tuple[dict, str | None]:
    """Every fitted model refitted on all genes (layer chosen by inner CV on all of them) for saving."""
    from threadpoolctl import threadpool_limits

    features = feature_table(data, models, vectorizer)
    with threadpool_limits(limits=1):
        fitted, layer, _ = fit_fold(models, features, data, np.arange(len(data.y)), seed)
    sweep = "embedding" in features and features["embedding"].shape[1] > 1
    return fitted, data.layers[layer] if sweep else None


def transform_target(values: np.ndarray, transform: str, where: str) -> np.ndarray:
    """The target as the models see it: as given, log10 (every value > 0), or ranks scaled to (0, 1]."""
    from scipy.stats import rankdata

    if transform == "log10":
        bad = np.flatnonzero(values <= 0)
        if bad.size:
            raise UserError(f"{where} row {bad[0] + 2}: {values[bad[0]]:g} has no log10 (not > 0); use transform "
                            "rank or none, or drop the row")
        return np.log10(values)
    if transform == "rank":
        return rankdata(values) / len(values)
    return values


def protein_groups(seqs: list[str], table_id: int = 11) -> np.ndarray:
    """A group per distinct encoded protein: identical proteins (paralogous copies) share a CV fold."""
    from codonlm.data.codons import translate

    return group_proteins([translate(s, table_id) for s in seqs])[0]


def column_grouping(column: str, notes: dict[str, str]) -> str:
    """What the groups of a group column are: its name, and what the ready tasks' data says of it
    (tasks.json group_columns, e.g. protein_group: identical proteins or MMseqs2 clusters)."""
    return f"column '{column}'" + (f": {notes[column]}" if column in notes else "")


def group_proteins(proteins: list[str], data=None) -> tuple[np.ndarray, str]:
    """(CV group of each protein, what the groups are): identical proteins; or, when `data` (a run's
    DataConfig) split the run's genes by cluster, MMseqs2 clusters of the proteins at its cluster_identity and
    cluster_coverage, so that no test fold holds a close relative of a training gene, as no held-out gene
    has one in the language model's training split."""
    import hashlib

    if data is None or data.split_by != "cluster":
        return np.array([hashlib.sha1(p.encode()).hexdigest()[:16] for p in proteins]), "identical proteins"
    from codonlm.data.homology import cluster_labels

    labels = cluster_labels(list(proteins), data.cluster_identity, data.cluster_coverage)
    return np.array(labels), (f"MMseqs2 clusters of the proteins ({data.cluster_identity:.0%} identity, "
                              f"{data.cluster_coverage:.0%} coverage), as the run's data.split_by: cluster")


def mean_loglik(model, ids: list[str], seqs: list[str], hosts: list[str] | None = None) -> np.ndarray:
    """The model's mean log-likelihood per token of each whole gene (`<BOS_CDS> codons <EOS_CDS>`, = -nll);
    hosts: each gene's genome, for a host-conditioned model."""
    from codonlm.data.codons import host_token
    from codonlm.evaluate.query import score

    tokens = None if hosts is None else [host_token(model.cfg, h) for h in hosts]
    return np.array([-row["nll"] for row in score(model, list(zip(ids, seqs, strict=True)), host=tokens)])


def cai_scores(seqs: list[str], reference_fasta: str) -> np.ndarray:
    """CAI (Sharp & Li) of each gene against the codon usage of the reference genes in a FASTA file."""
    from codonlm.data.records import read_records
    from codonlm.evaluate.seqmetrics import CAIReference

    reference = read_records(reference_fasta, stops_table=None)
    return CAIReference().fit(reference.seqs).cai_many(seqs)
