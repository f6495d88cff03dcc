"""The regression models of stage 2 and the features each reads.

    probe_ridge    embeddings -> standardise -> ridge, penalty chosen by inner group CV
    probe_svr      embeddings -> standardise -> RBF SVR on the standardised target
    probe_mlp      embeddings -> standardise -> one hidden layer of 128 ReLU units, early stopping
    codon_ridge    baseline: the 64 codon frequencies + log length -> ridge (inner CV)
    kmer_ridge     baseline: nucleotide k-mer frequencies (k <= 4, `kmer.py`) -> ridge (inner CV)
    cai_linear     baseline: CAI against a reference gene set -> linear fit
    zeroshot_cai   zero-shot, no fit: CAI itself as the prediction (Spearman / Pearson only)
    zeroshot_loglik  zero-shot, no fit: the model's mean log-likelihood per codon (Spearman / Pearson only)

Fitted models are stored as the classifiers are (skops, trusted types only; `classifiers.save_estimator`).
"""

from __future__ import annotations

import numpy as np

from codonlm.data.codons import CODON_OFFSET, as_codon_ids

PROBE_REGRESSORS = ("probe_ridge", "probe_svr", "probe_mlp")
BASELINE_REGRESSORS = ("codon_ridge", "kmer_ridge", "cai_linear")
ZERO_SHOT = ("zeroshot_cai", "zeroshot_loglik")
REGRESSION_MODELS = PROBE_REGRESSORS + BASELINE_REGRESSORS + ZERO_SHOT
CAI_MODELS = ("cai_linear", "zeroshot_cai")  # they need a reference gene set (cai_reference)
DEFAULT_REGRESSION_MODELS = tuple(m for m in REGRESSION_MODELS if m not in CAI_MODELS)
RIDGE_ALPHAS = np.logspace(-2, 5, 15)
SOURCES = {"probe_ridge": "embedding", "probe_svr": "embedding", "probe_mlp": "embedding", "codon_ridge": "codon",
           "kmer_ridge": "kmer", "cai_linear": "cai", "zeroshot_cai": "cai", "zeroshot_loglik": "mean_loglik"}


def feature_source(model: str) -> str:
    """What a model reads: embedding, codon, kmer, or a per-gene score (cai, mean_loglik)."""
    return SOURCES[model]


def codon_features(seqs: list[str]) -> np.ndarray:
    """[genes, 65]: the frequency of each of the 64 codons and the log of the length in codons."""
    out = np.zeros((len(seqs), 65), dtype=np.float64)
    for g, dna in enumerate(seqs):
        counts = np.bincount(as_codon_ids(dna) - CODON_OFFSET, minlength=64)
        out[g, :64] = counts / max(counts.sum(), 1)
        out[g, 64] = np.log(max(counts.sum(), 1))
    return out


def make_regressor(model: str, seed: int, alpha: float | None = None):
    """An unfitted estimator for a fitted model name (see the module docstring); alpha: the ridge penalty
    (chosen by `regression.ridge_penalty`)."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    if model.endswith("ridge"):
        head = Ridge(alpha=1.0 if alpha is None else alpha)
    elif model == "probe_svr":
        head = TransformedTargetRegressor(SVR(kernel="rbf", C=1.0, epsilon=0.1), transformer=StandardScaler())
    elif model == "probe_mlp":
        head = TransformedTargetRegressor(MLPRegressor(hidden_layer_sizes=(128,), alpha=1e-3, early_stopping=True,
                                                       max_iter=500, random_state=seed),
                                          transformer=StandardScaler())
    else:
        head = LinearRegression()
    return Pipeline([("scale", StandardScaler()), ("reg", head)])
