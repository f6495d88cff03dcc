"""N-gram baselines: proper distributions, agreement with a slow reference KN, Markov structure found."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from codonlm.data.codons import BOS, EOS, SEP, loss_mask
from codonlm.evaluate.ngram import (
    N_OUTCOMES,
    TARGET_IDS,
    KneserNeyLM,
    PerGroupUnigramLM,
    UnigramLM,
)


def _gene(codons) -> np.ndarray:
    return np.array([BOS, *codons, EOS], dtype=np.uint8)


def _random_genes(rng, n, alphabet, lo=3, hi=40) -> list[np.ndarray]:
    return [_gene(rng.choice(alphabet, size=rng.integers(lo, hi))) for _ in range(n)]


def _markov_genes(rng, n, order=2, n_codons=20, conc=0.05, chain_seed=0) -> list[np.ndarray]:
    """Genes from a sparse order-2 Markov chain (fixed by chain_seed) over a few codons."""
    codons = np.arange(4, 4 + n_codons)
    trans = np.random.default_rng(chain_seed).dirichlet(np.full(n_codons, conc), size=(n_codons + 1,) * order)
    genes = []
    for _ in range(n):
        hist, out = [n_codons] * order, []  # index n_codons stands for "before the start"
        while len(out) < 5 or rng.random() > 0.02:
            c = rng.choice(n_codons, p=trans[tuple(hist)])
            out.append(codons[c])
            hist = hist[1:] + [c]
        genes.append(_gene(out))
    return genes


# --------------------------------------------------------------------------- a slow reference KN


def _reference_kn(genes, order, fixed=None):
    """Interpolated modified KN straight from the definitions, with dicts; returns P(w | history)."""
    raw = [defaultdict(float) for _ in range(order + 1)]
    for g in genes:
        g = [int(x) for x in g]
        for j in range(1, len(g)):
            for m in range(1, order + 1):
                if j >= m - 1:
                    raw[m][tuple(g[j - m + 1 : j + 1])] += 1
    adj = [None] * (order + 1)
    for m in range(1, order + 1):
        if m == order:
            adj[m] = dict(raw[m])
            continue
        left = defaultdict(set)
        for ng in raw[m + 1]:
            left[ng[1:]].add(ng[0])
        adj[m] = {ng: (c if ng[0] == BOS else float(len(left[ng]))) for ng, c in raw[m].items()}
    disc = [None] * (order + 1)
    for m in range(1, order + 1):
        vals = list(adj[m].values())
        n1, n2, n3, n4 = (sum(v == k for v in vals) for k in (1, 2, 3, 4))
        d = (0.75, 0.75, 0.75)
        if fixed is not None:
            d = (fixed,) * 3
        elif min(n1, n2, n3, n4) > 0:
            y = n1 / (n1 + 2 * n2)
            est = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
            if 0 < est[0] < 1 and 0 < est[1] < 2 and 0 < est[2] < 3:
                d = est
        disc[m] = d

    def prob(w, hist):
        p = 1.0 / N_OUTCOMES
        for m in range(1, order + 1):
            if len(hist) < m - 1:
                break
            h = tuple(hist[len(hist) - (m - 1) :]) if m > 1 else ()
            entries = {ng[-1]: a for ng, a in adj[m].items() if ng[:-1] == h}
            if not entries:
                continue
            total = sum(entries.values())
            dd = {x: min(disc[m][min(int(a), 3) - 1], a) for x, a in entries.items()}
            gamma = sum(dd.values()) / total
            a = entries.get(w, 0.0)
            p = (a - dd.get(w, 0.0)) / total + gamma * p
        return p

    return prob


@pytest.mark.parametrize("order,fixed", [(1, None), (2, None), (3, None), (3, 0.6), (4, None)])
def test_kn_matches_reference(order, fixed):
    rng = np.random.default_rng(order)
    genes = _markov_genes(rng, 60, n_codons=6, conc=0.3)
    lm = KneserNeyLM(order, discount=fixed).fit(genes)
    ref = _reference_kn(genes, order, fixed)
    for m, d in enumerate(lm.discounts_, start=1):
        assert all(v > 0 for v in d), (m, d)
    test = _markov_genes(np.random.default_rng(99), 5, n_codons=6, conc=0.3) + [_gene([60, 61, 4, 5])]
    for g in test:
        got = lm.log_probs(g)
        want = [np.log(ref(int(g[j]), [int(x) for x in g[:j]])) for j in range(1, len(g))]
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_modified_discounts_are_estimated_where_counts_allow():
    genes = _markov_genes(np.random.default_rng(1), 400, n_codons=20, conc=0.1)
    lm = KneserNeyLM(3).fit(genes)
    d1, d2, d3 = lm.discounts_[-1]
    assert (d1, d2, d3) != (0.75, 0.75, 0.75)
    assert 0 < d1 < 1 and 0 < d2 < 2 and 0 < d3 < 3


# --------------------------------------------------------------------------- proper distributions


@pytest.mark.parametrize("order", [1, 2, 3, 5])
@pytest.mark.parametrize("discount", [None, 0.75])
def test_kn_sums_to_one_on_seen_and_unseen_contexts(order, discount):
    rng = np.random.default_rng(0)
    train = _random_genes(rng, 200, np.arange(4, 24))  # only codons 4..23 are ever seen
    lm = KneserNeyLM(order, discount=discount).fit(train)
    contexts = [np.array([BOS])]
    contexts += [train[i][: rng.integers(1, 10)] for i in range(10)]  # seen
    contexts += [np.array([BOS, *rng.integers(4, 68, size=rng.integers(1, 9))]) for _ in range(15)]
    contexts += [np.array([BOS, 60, 61, 62, 63, 64, 65])]  # certainly unseen
    for c in contexts:
        p = lm.next_probs(c)
        assert p.shape == (N_OUTCOMES,)
        assert (p > 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_unigram_models_sum_to_one_and_hand_values():
    genes = [_gene([4, 4, 5]), _gene([4])]  # targets: 4 x3, 5 x1, EOS x2 -> 6 targets
    lm = UnigramLM(alpha=1.0).fit(genes)
    p = lm.next_probs()
    assert p.sum() == pytest.approx(1.0)
    idx = {int(t): i for i, t in enumerate(TARGET_IDS)}
    assert p[idx[4]] == pytest.approx(4 / (6 + 65))
    assert p[idx[EOS]] == pytest.approx(3 / (6 + 65))
    assert p[idx[67]] == pytest.approx(1 / (6 + 65))
    np.testing.assert_allclose(lm.log_probs(_gene([5])), np.log([2 / 71, 3 / 71]))


def test_targets_are_what_loss_mask_counts():
    assert TARGET_IDS.size == 65
    mask = loss_mask(np.arange(68))
    assert set(np.flatnonzero(mask).tolist()) == set(TARGET_IDS.tolist())


# --------------------------------------------------------------------------- API behaviour


def test_log_probs_agree_with_next_probs_and_score():
    rng = np.random.default_rng(3)
    train = _markov_genes(rng, 100)
    test = _markov_genes(rng, 10)
    lm = KneserNeyLM(3).fit(train)
    g = test[0]
    lp = lm.log_probs(g)
    assert lp.shape == (len(g) - 1,)
    pos = {int(t): i for i, t in enumerate(TARGET_IDS)}
    for j in range(1, len(g)):
        assert lp[j - 1] == pytest.approx(np.log(lm.next_probs(g[:j])[pos[int(g[j])]]), rel=1e-12)
    s = lm.score(test)
    all_lp = np.concatenate([lm.log_probs(x) for x in test])
    assert s["n_tokens"] == all_lp.size == sum(len(x) - 1 for x in test)
    assert s["nll"] == pytest.approx(-all_lp.mean())
    assert s["perplexity"] == pytest.approx(np.exp(s["nll"]))
    # chunked scoring gives the same numbers as one pass
    tok = np.concatenate([x.astype(np.int64) for x in test])
    pos_in = np.concatenate([np.arange(len(x)) for x in test])
    lengths = np.array([len(x) for x in test])
    np.testing.assert_allclose(
        lm._logp_concat(tok, pos_in, lengths, None, chunk=7), lm._logp_concat(tok, pos_in, lengths, None)
    )


def test_kn_beats_unigram_on_markov_data():
    rng = np.random.default_rng(7)
    train, test = _markov_genes(rng, 400), _markov_genes(rng, 100)
    ppl = {
        name: m.fit(train).score(test)["perplexity"]
        for name, m in {"uni": UnigramLM(), "kn2": KneserNeyLM(2), "kn3": KneserNeyLM(3)}.items()
    }
    assert ppl["kn3"] < 0.3 * ppl["uni"]
    assert ppl["kn3"] < ppl["kn2"] < ppl["uni"]


def test_per_group_unigram_uses_group_and_falls_back():
    rng = np.random.default_rng(5)
    a = _random_genes(rng, 50, np.arange(4, 14))
    b = _random_genes(rng, 50, np.arange(40, 50))
    genes, groups = a + b, ["a"] * 50 + ["b"] * 50
    per = PerGroupUnigramLM().fit(genes, groups)
    glob = UnigramLM().fit(genes)
    test_a = _random_genes(rng, 10, np.arange(4, 14))
    assert per.score(test_a, ["a"] * 10)["perplexity"] < 0.7 * glob.score(test_a)["perplexity"]
    # an unseen group is scored with the global unigram
    np.testing.assert_allclose(per.log_probs(test_a[0], "zzz"), glob.log_probs(test_a[0]))
    assert per.next_probs(group="b").sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        PerGroupUnigramLM().fit(genes)
    with pytest.raises(ValueError):
        per.score(test_a)


@pytest.mark.parametrize("bad", [np.array([4, 5, EOS]), np.array([BOS, 4, SEP, 5, EOS]), np.array([BOS])])
def test_bad_genes_raise(bad):
    lm = KneserNeyLM(2).fit([_gene([4, 5])])
    with pytest.raises(ValueError):
        lm.log_probs(bad)
