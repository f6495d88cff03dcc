"""Codon-choice metrics of a designed gene against a host: %MinMax, its DTW distance, CFD, and a bootstrap CI.

CAI and CSI are `seqmetrics.CAIReference` fitted on different references (CAI: the host's
ribosomal-protein genes; CSI: all of its genes, as CodonTransformer defines it); GC and GC3 are
`seqmetrics.gc` / `gc3`. What this module adds:

- %MinMax (Clarke & Clark 2008, PLoS ONE 3:e3412): per sliding window of 18 codons, where the
  actual codons' mean usage sits between the mean usage of the rarest and of the most used synonyms
  (+100 = all most-used, -100 = all rarest, 0 = the average synonym). Usage is each codon's
  frequency among its synonyms in the host (relative synonymous frequency, as CodonTransformer's
  implementation uses it); stops are left out; one-codon amino acids add the same to actual, max,
  min and mean, so they do not move the value.
- DTW distance between two %MinMax profiles (`dtaidistance`): how far a design's pattern of
  fast and slow stretches is from a natural gene's, allowing for shifts.
- CFD (codon frequency distribution, Ikemura 1981 as CodonTransformer computes it): the share of a
  gene's counted codons whose relative adaptiveness w (seqmetrics.CAIReference weights) is below 0.3.
"""

from __future__ import annotations

import numpy as np

from codonlm.data.codons import CODON_OFFSET, Gene, as_codon_ids, genetic_code
from codonlm.evaluate.seqmetrics import CAIReference, _synonymous_families, codon_usage

MINMAX_WINDOW = 18
"""Clarke & Clark's window (codons)."""

CFD_THRESHOLD = 0.3


def synonymous_frequencies(genes, table_id: int = 11, pseudocount: float = 0.5) -> np.ndarray:
    """64-vector: each sense codon's share of its amino acid's codons in `genes` (stops: nan).

    A codon never seen gets `pseudocount` (as CAI's Sharp & Li convention) so no share is 0."""
    x = codon_usage(genes).astype(np.float64)
    x[x == 0] = pseudocount
    freq = np.full(64, np.nan)
    for fam in _synonymous_families(table_id, split_boxes=False):
        freq[fam] = x[fam] / x[fam].sum()
    return freq


def minmax_profile(gene: Gene, frequencies: np.ndarray, table_id: int = 11, window: int = MINMAX_WINDOW) -> np.ndarray:
    """%MinMax per window of `window` codons (stops dropped); empty for a gene shorter than the window."""
    code = genetic_code(table_id)
    ids = as_codon_ids(gene)
    ids = ids[~code.is_stop[ids]] - CODON_OFFSET
    if ids.size < window:
        return np.zeros(0)
    fam_of = np.empty(64, dtype=np.int64)
    fams = _synonymous_families(table_id, split_boxes=False)
    for f, fam in enumerate(fams):
        fam_of[fam] = f
    fmax = np.array([frequencies[f].max() for f in fams])
    fmin = np.array([frequencies[f].min() for f in fams])
    fmean = np.array([frequencies[f].mean() for f in fams])
    kernel = np.ones(window) / window
    actual = np.convolve(frequencies[ids], kernel, "valid")
    hi = np.convolve(fmax[fam_of[ids]], kernel, "valid")
    lo = np.convolve(fmin[fam_of[ids]], kernel, "valid")
    mid = np.convolve(fmean[fam_of[ids]], kernel, "valid")
    with np.errstate(invalid="ignore", divide="ignore"):
        up = np.where(hi > mid, (actual - mid) / (hi - mid), 0.0)
        down = np.where(mid > lo, (actual - mid) / (mid - lo), 0.0)
    return 100.0 * np.where(actual >= mid, up, down)


def minmax_dtw(a: np.ndarray, b: np.ndarray) -> float:
    """DTW distance between two %MinMax profiles (dtaidistance's C implementation); nan if either is empty."""
    from dtaidistance import dtw

    if not a.size or not b.size:
        return float("nan")
    return float(dtw.distance_fast(np.ascontiguousarray(a, dtype=np.double), np.ascontiguousarray(b, dtype=np.double)))


def cfd(gene: Gene, reference: CAIReference, threshold: float = CFD_THRESHOLD) -> float:
    """Share of the gene's counted codons (those with a CAI weight) whose w is below `threshold`."""
    w = reference.weights_[as_codon_ids(gene) - CODON_OFFSET]
    w = w[~np.isnan(w)]
    return float((w < threshold).mean()) if w.size else float("nan")


def bootstrap_mean_ci(values, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of resampled means) of the finite values; nans when none."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
