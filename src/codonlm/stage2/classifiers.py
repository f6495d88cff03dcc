"""The six classifiers, small scikit-learn estimators with an explicit random_state, and how they are stored.

    probe_logreg, kmer_logreg   standardise -> multinomial logistic regression (L2, C=1)
    probe_svm,    kmer_svm      standardise -> RBF SVM, probabilities by Platt scaling (3-fold, one SVM)
    mlp                         standardise -> one hidden layer of 128 ReLU units, early stopping
    kmer_xgb                    gradient-boosted trees (xgboost hist, 100 rounds of depth 4, 64 bins, one thread:
                                with two threads on the shared 2-core machine OpenMP spin-waiting made a fit
                                16x slower, measured)

probe_* and mlp read embeddings; kmer_* read k-mer frequencies of the sequences (`kmer.py`).

Storage never runs code from the file: scikit-learn models are skops archives, and loading one lists the
types it holds and refuses any outside TRUSTED_TYPES (what these estimators are made of); xgboost models are
xgboost's own JSON with the class names in a booster attribute.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from codonlm.errors import UserError
from codonlm.io import atomic_path

PROBE_MODELS = ("probe_logreg", "probe_svm", "mlp")
KMER_MODELS = ("kmer_logreg", "kmer_svm", "kmer_xgb")
MODELS = PROBE_MODELS + KMER_MODELS

# Types skops does not trust by default that our estimators contain; anything else in a file is refused.
TRUSTED_TYPES = (
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "xgboost.sklearn.XGBRegressor",  # the regression probe probe_xgb; its booster is xgboost's model bytes
    "xgboost.core.Booster",
)


def feature_kind(model: str) -> str:
    """'probe' (embeddings) or 'kmer' (sequences)."""
    return "kmer" if model in KMER_MODELS else "probe"


class XGBoostClassifier:
    """xgboost's XGBClassifier with string class labels (it needs 0..K-1) and JSON storage."""

    def __init__(self, random_state: int = 0, n_estimators: int = 100, max_depth: int = 4,
                 learning_rate: float = 0.2, n_jobs: int = 1):
        self.params = {"random_state": random_state, "n_estimators": n_estimators, "max_depth": max_depth,
                       "learning_rate": learning_rate, "n_jobs": n_jobs, "tree_method": "hist", "max_bin": 64}
        self.classes_: np.ndarray | None = None
        self.model_ = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> XGBoostClassifier:
        from xgboost import XGBClassifier

        self.classes_ = np.unique(y)
        self.model_ = XGBClassifier(**self.params).fit(X, np.searchsorted(self.classes_, y))
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(X)

    def save(self, path: Path) -> None:
        self.model_.get_booster().set_attr(codonlm_classes=json.dumps([str(c) for c in self.classes_]))
        self.model_.save_model(path)

    @classmethod
    def load(cls, path: Path) -> XGBoostClassifier:
        from xgboost import XGBClassifier
        from xgboost.core import XGBoostError

        model = XGBClassifier()
        try:
            model.load_model(path)
        except XGBoostError as exc:
            raise UserError(f"{path}: not an xgboost JSON model ({str(exc).splitlines()[0][:100]})") from None
        classes = model.get_booster().attr("codonlm_classes")
        if classes is None:
            raise UserError(f"{path}: xgboost model without class names; train it with train_classifier")
        out = cls()
        out.model_, out.classes_ = model, np.array(json.loads(classes), dtype=str)
        return out


def make_classifier(model: str, seed: int):
    """An unfitted estimator for a model name (see the module docstring)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if model not in MODELS:
        raise UserError(f"unknown model kind '{model}'; choose from {', '.join(MODELS)}")
    if model == "kmer_xgb":
        return XGBoostClassifier(random_state=seed)
    if model.endswith("logreg"):
        head = LogisticRegression(C=1.0, max_iter=3000, random_state=seed)
    elif model.endswith("svm"):
        head = CalibratedClassifierCV(SVC(kernel="rbf", C=1.0, random_state=seed), ensemble=False, cv=3)
    else:
        head = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, early_stopping=True, max_iter=500,
                             random_state=seed)
    return Pipeline([("scale", StandardScaler()), ("clf", head)])


# --------------------------------------------------------------------------- storage


def estimator_suffix(model) -> str:
    return ".json" if isinstance(model, XGBoostClassifier) else ".skops"


def save_estimator(obj, path: str | Path) -> Path:
    """A fitted estimator or vectorizer: xgboost as JSON, anything else as skops; atomically."""
    import skops.io as sio

    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(obj, XGBoostClassifier):
            obj.save(tmp)
        else:
            sio.dump(obj, tmp)
    return path


def copy_estimator(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def resolve_estimator_path(path: str | Path, what: str = "model") -> Path:
    """The file to load. The manual's `model.pkl` names the model train_classifier wrote as model.skops (or
    model.json for xgboost): we never write or read pickles, so a missing .pkl resolves to those files."""
    path = Path(path)
    if path.is_file():
        return path
    if path.suffix == ".pkl":
        for suffix in (".skops", ".json"):
            if path.with_suffix(suffix).is_file():
                return path.with_suffix(suffix)
    raise UserError(f"{what} not found: {path}; pass the .skops (or xgboost .json) file train_classifier wrote")


def load_estimator(path: str | Path, what: str = "model"):
    """Load a stored estimator without running code from the file (skops with trusted types, xgboost JSON)."""
    import skops.io as sio

    path = resolve_estimator_path(path, what)
    head = path.read_bytes()[:4]
    if head.startswith(b"{"):
        return XGBoostClassifier.load(path)
    if head[:1] == b"\x80":
        raise UserError(f"{path}: a Python pickle; pickles are never loaded (they can run code); "
                        "pass the .skops file train_classifier wrote")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a skops archive or xgboost JSON; pass a file train_classifier wrote")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise UserError(f"{path}: unreadable skops archive ({str(exc)[:100]})") from None
    refused = [t for t in untrusted if t not in TRUSTED_TYPES]
    if refused:
        raise UserError(f"{path}: refused, holds type(s) outside the trusted list ({', '.join(refused[:3])}); "
                        "only load models written by train_classifier")
    return sio.load(path, trusted=untrusted)
