"""The regression models of stage 2 and the features each reads.

    probe_ridge    embeddings -> standardise -> ridge, penalty chosen by inner group CV
    probe_svr      embeddings -> standardise -> RBF SVR on the standardised target
    probe_krr      embeddings -> standardise -> RBF kernel ridge on the standardised target, penalty and
                   kernel width chosen by inner group CV (`regression.kernel_ridge_params`)
    probe_mlp      embeddings -> standardise -> one hidden layer of 128 ReLU units, early stopping
    probe_xgb      embeddings -> gradient-boosted trees (xgboost hist, 400 rounds of depth 3, rate 0.05, 64 bins,
                   80% row and column subsamples, one thread as the classifiers' kmer_xgb); xgboost-cpu, the
                   wheel without CUDA libraries, is already a dependency (kmer_xgb)
    codon_ridge    baseline: the 64 codon frequencies + log length -> ridge (inner CV)
    kmer_ridge     baseline: nucleotide k-mer frequencies (k <= 4, `kmer.py`) -> ridge (inner CV)
    cai_linear     baseline: CAI against a reference gene set -> linear fit
    zeroshot_cai   zero-shot, no fit: CAI itself as the prediction (Spearman / Pearson only)
    zeroshot_loglik  zero-shot, no fit: the model's mean log-likelihood per codon (Spearman / Pearson only)

Fitted models are stored as the classifiers are (skops, trusted types only; `classifiers.save_estimator`):
an xgboost regressor too, whose booster skops stores as xgboost's own model bytes (no pickle).
"""

from __future__ import annotations

import numpy as np

from codonlm.data.codons import CODON_OFFSET, as_codon_ids

PROBE_REGRESSORS = ("probe_ridge", "probe_svr", "probe_krr", "probe_mlp", "probe_xgb")
BASELINE_REGRESSORS = ("codon_ridge", "kmer_ridge", "cai_linear")
ZERO_SHOT = ("zeroshot_cai", "zeroshot_loglik")
REGRESSION_MODELS = PROBE_REGRESSORS + BASELINE_REGRESSORS + ZERO_SHOT
CAI_MODELS = ("cai_linear", "zeroshot_cai")  # they need a reference gene set (cai_reference)
DEFAULT_REGRESSION_MODELS = tuple(m for m in REGRESSION_MODELS if m not in CAI_MODELS)
RIDGE_ALPHAS = np.logspace(-2, 5, 15)
KRR_ALPHAS = np.logspace(-3, 1, 9)  # kernel ridge penalty, on the standardised target
KRR_GAMMAS = np.array([0.1, 0.3, 1.0, 3.0])  # RBF width x 1/channels (the standardised inputs' scale)
SOURCES = {**{m: "embedding" for m in PROBE_REGRESSORS}, "codon_ridge": "codon", "kmer_ridge": "kmer",
           "cai_linear": "cai", "zeroshot_cai": "cai", "zeroshot_loglik": "mean_loglik"}


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


def make_regressor(model: str, seed: int, alpha: float | None = None, gamma: float | None = None):
    """An unfitted estimator for a fitted model name (see the module docstring); alpha: the ridge or kernel
    ridge penalty, gamma: the kernel ridge's RBF width (chosen by inner CV, `regression.fit_one`)."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    if model.endswith("ridge"):
        head = Ridge(alpha=1.0 if alpha is None else alpha)
    elif model == "probe_krr":
        head = TransformedTargetRegressor(KernelRidge(kernel="rbf", alpha=1.0 if alpha is None else alpha,
                                                      gamma=gamma), transformer=StandardScaler())
    elif model == "probe_xgb":
        from xgboost import XGBRegressor

        head = XGBRegressor(n_estimators=400, max_depth=3, learning_rate=0.05, subsample=0.8, colsample_bytree=0.8,
                            tree_method="hist", max_bin=64, n_jobs=1, random_state=seed)
    elif model == "probe_svr":
        head = TransformedTargetRegressor(SVR(kernel="rbf", C=1.0, epsilon=0.1), transformer=StandardScaler())
    elif model == "probe_mlp":
        head = TransformedTargetRegressor(MLPRegressor(hidden_layer_sizes=(128,), alpha=1e-3, early_stopping=True,
                                                       max_iter=500, random_state=seed),
                                          transformer=StandardScaler())
    else:
        head = LinearRegression()
    return Pipeline([("scale", StandardScaler()), ("reg", head)])
