"""Count-based baselines for held-out perplexity: unigram, per-genome unigram, Kneser-Ney n-gram.

They give the numbers a neural model has to beat. All three score exactly the targets the model's
loss counts (`codonlm.data.codons.loss_mask`): the 64 codons and `<EOS_CDS>`, never `<PAD>`,
`<BOS_CDS>` or `<SEP>`. Every model is a proper distribution over those 65 outcomes
(`TARGET_IDS`), so their perplexities compare directly with the model's.

A gene is a token array `<BOS_CDS> c1 .. cn <EOS_CDS>` (as in the NPZ `gene_tokens`); its scored
targets are `gene[1:]`, so `log_probs(gene)` has `len(gene) - 1` entries. Estimators follow the
scikit-learn habit: parameters in `__init__`, learned state in attributes ending in `_`, `fit`
returns `self`; nothing is global.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from codonlm.data.codons import BOS, CODON_OFFSET, EOS, VOCAB_SIZE

TARGET_IDS = np.array([EOS, *range(CODON_OFFSET, VOCAB_SIZE)], dtype=np.int64)
"""Token ids of the 65 outcomes every model here predicts, in the order `next_probs` returns them."""
N_OUTCOMES = TARGET_IDS.size  # 65

_IS_TARGET = np.zeros(VOCAB_SIZE, dtype=bool)
_IS_TARGET[TARGET_IDS] = True
_OUTCOME_INDEX = np.full(VOCAB_SIZE, -1, dtype=np.int64)
_OUTCOME_INDEX[TARGET_IDS] = np.arange(N_OUTCOMES)

_BASE = VOCAB_SIZE  # digits of a packed n-gram key; 68**10 < 2**63
MAX_ORDER = 10


# --------------------------------------------------------------------------- helpers


def _check_gene(gene: np.ndarray) -> np.ndarray:
    gene = np.asarray(gene)
    if gene.ndim != 1 or gene.size < 2 or gene[0] != BOS:
        raise ValueError(
            "a gene must be a 1-D token array <BOS_CDS> c1 .. cn [<EOS_CDS>] with at least one target"
        )
    if gene.min() < 0 or gene.max() >= VOCAB_SIZE or not _IS_TARGET[gene[1:]].all():
        raise ValueError(
            "gene targets must be codons or <EOS_CDS> (no <PAD>, <BOS_CDS> or <SEP> after the start)"
        )
    return gene.astype(np.int64)


def _concat(genes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate genes; also return each token's position in its gene and each gene's length."""
    checked = [_check_gene(g) for g in genes]
    if not checked:
        raise ValueError("no genes given")
    lengths = np.array([g.size for g in checked], dtype=np.int64)
    tok = np.concatenate(checked)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = np.arange(tok.size, dtype=np.int64) - starts
    return tok, pos, lengths


def _summary(logp: np.ndarray) -> dict[str, float]:
    nll = float(-logp.mean())
    return {"nll": nll, "perplexity": float(np.exp(nll)), "n_tokens": int(logp.size)}


class _Base:
    """Shared scoring API: subclasses give `_logp_concat`, log P of every token of concatenated genes."""

    def _logp_concat(
        self, tok: np.ndarray, pos: np.ndarray, lengths: np.ndarray, groups: Sequence[Hashable] | None
    ) -> np.ndarray:
        """Log probability at each position of `tok` (0 at the `<BOS_CDS>` positions, pos == 0)."""
        raise NotImplementedError

    def log_probs(self, gene: np.ndarray, group: Hashable | None = None) -> np.ndarray:
        """Natural-log probability of each target of one gene (`len(gene) - 1` values)."""
        tok, pos, lengths = _concat([gene])
        return self._logp_concat(tok, pos, lengths, None if group is None else [group])[pos > 0]

    def score(
        self, genes: Sequence[np.ndarray], groups: Sequence[Hashable] | None = None
    ) -> dict[str, float]:
        """Mean nats per target over all genes (token-weighted), its perplexity and the target count."""
        tok, pos, lengths = _concat(genes)
        if groups is not None and len(groups) != len(genes):
            raise ValueError(f"{len(groups)} groups for {len(genes)} genes")
        return _summary(self._logp_concat(tok, pos, lengths, groups)[pos > 0])


# --------------------------------------------------------------------------- unigram models


def _target_counts(genes: Sequence[np.ndarray]) -> np.ndarray:
    tok, pos, _ = _concat(genes)
    return np.bincount(_OUTCOME_INDEX[tok[pos > 0]], minlength=N_OUTCOMES).astype(np.float64)


class UnigramLM(_Base):
    """Add-alpha unigram over the 65 outcomes: what a model gets from codon usage alone."""

    def __init__(self, alpha: float = 1.0):
        if alpha <= 0:
            raise ValueError("alpha must be > 0 so that unseen codons keep some probability")
        self.alpha = alpha

    def fit(self, genes: Sequence[np.ndarray], groups: Sequence[Hashable] | None = None) -> UnigramLM:
        """Count targets; `groups` is accepted for a uniform API and ignored."""
        self.counts_ = _target_counts(genes)
        p = self.counts_ + self.alpha
        self.log_p_ = np.log(p / p.sum())
        return self

    def next_probs(self, context: np.ndarray | None = None) -> np.ndarray:
        """Distribution over `TARGET_IDS` (the context is ignored)."""
        return np.exp(self.log_p_)

    def _logp_concat(self, tok, pos, lengths, groups):
        out = np.zeros(tok.size)
        t = pos > 0
        out[t] = self.log_p_[_OUTCOME_INDEX[tok[t]]]
        return out


class PerGroupUnigramLM(_Base):
    """One add-alpha unigram per group (genome): codon usage is genome-specific (GC content, tRNA pools).

    A group not seen in `fit` falls back to the unigram of all genes together.
    """

    def __init__(self, alpha: float = 1.0):
        if alpha <= 0:
            raise ValueError("alpha must be > 0")
        self.alpha = alpha

    def fit(self, genes: Sequence[np.ndarray], groups: Sequence[Hashable] | None = None) -> PerGroupUnigramLM:
        if groups is None or len(groups) != len(genes):
            raise ValueError("PerGroupUnigramLM.fit needs one group per gene")
        self.global_ = UnigramLM(self.alpha).fit(genes)
        self.groups_: dict[Hashable, UnigramLM] = {}
        groups_arr = np.asarray(groups, dtype=object)
        for grp in dict.fromkeys(groups_arr.tolist()):
            idx = np.flatnonzero(groups_arr == grp)
            self.groups_[grp] = UnigramLM(self.alpha).fit([genes[i] for i in idx])
        return self

    def _model(self, group: Hashable | None) -> UnigramLM:
        return self.groups_.get(group, self.global_) if group is not None else self.global_

    def next_probs(self, context: np.ndarray | None = None, group: Hashable | None = None) -> np.ndarray:
        return self._model(group).next_probs()

    def log_probs(self, gene: np.ndarray, group: Hashable | None = None) -> np.ndarray:
        if group is None:
            raise ValueError("PerGroupUnigramLM needs the gene's group")
        return super().log_probs(gene, group)

    def score(
        self, genes: Sequence[np.ndarray], groups: Sequence[Hashable] | None = None
    ) -> dict[str, float]:
        if groups is None:
            raise ValueError("PerGroupUnigramLM.score needs one group per gene")
        return super().score(genes, groups)

    def _logp_concat(self, tok, pos, lengths, groups):
        out = np.zeros(tok.size)
        t = pos > 0
        tab = np.stack([self.global_.log_p_] + [m.log_p_ for m in self.groups_.values()])
        row_of = {g: i + 1 for i, g in enumerate(self.groups_)}
        gene_rows = np.array([row_of.get(g, 0) for g in np.asarray(groups, dtype=object).tolist()])
        rows = np.repeat(gene_rows.astype(np.int64), lengths)
        out[t] = tab[rows[t], _OUTCOME_INDEX[tok[t]]]
        return out


# --------------------------------------------------------------------------- Kneser-Ney


class _OrderTable:
    """Everything needed at one n-gram order: sorted packed keys, discounted counts, context stats."""

    __slots__ = ("keys", "num", "ctx", "inv_total", "gamma", "discounts", "count_of_counts")


def _estimate_discounts(a: np.ndarray, fixed: float | None) -> tuple[tuple[float, float, float], np.ndarray]:
    """Modified-KN discounts D1, D2, D3+ from count-of-counts (Chen & Goodman 1999, eq. 26).

    Falls back to 0.75 for all three when the estimate is undefined or outside (0, k): that
    happens at low orders of a 65-symbol vocabulary, where every type is seen many times.
    """
    n = np.array([np.count_nonzero(a == k) for k in (1, 2, 3, 4)], dtype=np.float64)
    if fixed is not None:
        return (fixed, fixed, fixed), n
    if (n > 0).all():
        y = n[0] / (n[0] + 2 * n[1])
        d = (1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2])
        if all(0 < dk < k for k, dk in zip((1, 2, 3), d, strict=True)):
            return (float(d[0]), float(d[1]), float(d[2])), n
    return (0.75, 0.75, 0.75), n


class KneserNeyLM(_Base):
    """Interpolated modified Kneser-Ney n-gram model over token ids (Chen & Goodman 1999).

    Estimated as in KenLM: the highest order uses raw counts, lower orders use continuation
    counts N1+(. w) (how many distinct tokens precede the n-gram), except n-grams that begin with
    `<BOS_CDS>`, which cannot be extended to the left and keep their raw counts. The history of a
    gene starts at its single `<BOS_CDS>` (the first target c1 is predicted given `<BOS_CDS>`);
    near the start the context is just shorter, rather than repeated BOS padding, so no order
    learns spurious BOS-BOS n-grams. Each order interpolates with the next lower one and the
    unigram with the uniform distribution over the 65 outcomes, so every probability is > 0 and
    each context's distribution sums to 1, seen or not.

    `discount=None` estimates D1, D2, D3+ per order from count-of-counts (modified KN); a float
    uses one discount everywhere (interpolated KN). N-grams are packed into int64 keys (base 68
    digits, target least significant), so fit and score are a few sorts and binary searches.
    """

    def __init__(self, order: int = 3, discount: float | None = None):
        if not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order must be in 1..{MAX_ORDER}")
        if discount is not None and not 0 < discount < 1:
            raise ValueError("a fixed discount must be in (0, 1)")
        self.order = order
        self.discount = discount

    # -- fitting

    def fit(self, genes: Sequence[np.ndarray], groups: Sequence[Hashable] | None = None) -> KneserNeyLM:
        """Count n-grams of orders 1..order over all targets; `groups` is ignored."""
        tok, pos, _ = _concat(genes)
        n = self.order
        # ngram key of order m at target j: tokens j-m+1..j as base-68 digits, valid when pos[j] >= m-1
        key = tok.copy()
        uniq: list[np.ndarray] = []
        raw: list[np.ndarray] = []
        for m in range(1, n + 1):
            if m > 1:
                prev = key
                key = np.zeros_like(prev)
                key[1:] = prev[:-1] * _BASE + tok[1:]
            valid = pos >= max(m - 1, 1)
            u, c = np.unique(key[valid], return_counts=True)
            uniq.append(u)
            raw.append(c.astype(np.float64))
        del key
        self.tables_: list[_OrderTable] = []
        for m in range(1, n + 1):
            u, a = uniq[m - 1], raw[m - 1]
            if m < n:
                # continuation counts: distinct left extensions, read off the unique (m+1)-grams
                suffix = uniq[m] % (_BASE**m)
                su, sc = np.unique(suffix, return_counts=True)
                cont = np.zeros_like(a)
                cont[np.searchsorted(u, su)] = sc
                starts_bos = (u // (_BASE ** (m - 1))) == BOS if m > 1 else np.zeros(u.size, dtype=bool)
                a = np.where(starts_bos, a, cont)
            d3, coc = _estimate_discounts(a, self.discount)
            d = np.where(a == 1, d3[0], np.where(a == 2, d3[1], d3[2]))
            d = np.minimum(d, a)
            t = _OrderTable()
            t.keys, t.num, t.discounts, t.count_of_counts = u, a - d, d3, coc
            ctx = u // _BASE
            t.ctx, first = np.unique(ctx, return_index=True)
            total = np.add.reduceat(a, first)
            t.inv_total = 1.0 / total
            t.gamma = np.add.reduceat(d, first) / total
            self.tables_.append(t)
        self.discounts_ = [t.discounts for t in self.tables_]
        return self

    # -- probabilities

    def _probs(self, ctx: np.ndarray, ctx_len: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """P(target | context) for rows of a right-aligned context matrix (width order-1)."""
        p = np.full(targets.size, 1.0 / N_OUTCOMES)
        ck = np.zeros(targets.size, dtype=np.int64)
        for m, t in enumerate(self.tables_, start=1):
            if m > 1:
                ck = ck + ctx[:, -(m - 1)] * (_BASE ** (m - 2))
            rows = np.flatnonzero(ctx_len >= m - 1) if m > 1 else np.arange(targets.size)
            if rows.size == 0:
                break
            c = ck[rows]
            i = np.minimum(np.searchsorted(t.ctx, c), t.ctx.size - 1)
            seen = t.ctx[i] == c
            rows, c, i = rows[seen], c[seen], i[seen]
            k = c * _BASE + targets[rows]
            j = np.minimum(np.searchsorted(t.keys, k), t.keys.size - 1)
            num = np.where(t.keys[j] == k, t.num[j], 0.0)
            p[rows] = num * t.inv_total[i] + t.gamma[i] * p[rows]
        return p

    def _logp_concat(self, tok, pos, lengths, groups, chunk: int = 1 << 20):
        out = np.zeros(tok.size)
        width = max(self.order - 1, 1)
        targets = np.flatnonzero(pos > 0)
        for s in range(0, targets.size, chunk):  # chunks bound the context matrix's memory
            idx = targets[s : s + chunk]
            p_idx = pos[idx]
            ctx = np.zeros((idx.size, width), dtype=np.int64)
            for k in range(1, width + 1):
                ok = p_idx >= k  # contexts stop at the gene's own <BOS_CDS>
                ctx[ok, width - k] = tok[idx[ok] - k]
            out[idx] = np.log(self._probs(ctx, np.minimum(p_idx, width), tok[idx]))
        return out

    def next_probs(self, context: np.ndarray) -> np.ndarray:
        """Distribution over `TARGET_IDS` after `context` (a gene prefix starting with `<BOS_CDS>`)."""
        context = np.asarray(context, dtype=np.int64)
        if context.ndim != 1 or context.size < 1 or context[0] != BOS or not _IS_TARGET[context[1:]].all():
            raise ValueError("context must start with <BOS_CDS> followed by codons")
        width = max(self.order - 1, 1)
        ctx = np.zeros(width, dtype=np.int64)
        tail = context[-width:]
        ctx[width - tail.size :] = tail
        L = min(context.size, width)
        return self._probs(np.tile(ctx, (N_OUTCOMES, 1)), np.full(N_OUTCOMES, L), TARGET_IDS)
