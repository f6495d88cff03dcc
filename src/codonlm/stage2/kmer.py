"""k-mer baselines' features: overlapping nucleotide k-mer frequencies (scikit-learn's char n-gram vectorizer).

Every offset counts (all three frames), and each gene's counts are scaled to sum to one, so a classifier
sees composition, not length. k = 4 (256 features) by default: it holds dinucleotide and codon-position GC
signal and stays small enough for an RBF SVM and boosted trees on 2 cores; configs set `kmer_k`.
"""

from __future__ import annotations

import numpy as np

DEFAULT_K = 4


def kmer_vectorizer(k: int = DEFAULT_K):
    """An unfitted vectorizer: DNA strings -> k-mer frequencies (its vocabulary is fitted on training genes)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=(k, k), lowercase=False, use_idf=False, norm="l1",
                           dtype=np.float32)


def kmer_features(vectorizer, seqs: list[str]) -> np.ndarray:
    """Dense float32 frequencies (4^k columns at most: small enough to keep dense)."""
    return np.asarray(vectorizer.transform(seqs).toarray(), dtype=np.float32)
