"""Generation-quality metrics: hand-computed values on toy genes and the expected limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from codonlm.data.codons import BOS, CODONS, EOS, STOI, as_codon_ids, decode, genetic_code, translate
from codonlm.evaluate.seqmetrics import (
    AMINO_ACIDS,
    CAIReference,
    ProteinIndex,
    aa_composition,
    aa_js_divergence,
    codon_js_divergence,
    codon_usage,
    enc,
    gc,
    gc3,
    js_divergence,
    kl_divergence,
    nearest_identity,
    orf_report,
    protein_identity,
    sense_codons,
    split_half_floor,
)


def _tokens(dna: str) -> np.ndarray:
    return np.array([BOS, *(STOI[dna[i : i + 3]] for i in range(0, len(dna), 3)), EOS], dtype=np.uint8)


def _random_cds(rng, n_codons: int, code=None) -> str:
    code = code or genetic_code(11)
    sense = [c for c in CODONS if not code.is_stop[STOI[c]] and c not in ("ATG",)]
    return "ATG" + "".join(rng.choice(sense, size=n_codons)) + "TAA"


# --------------------------------------------------------------------------- conversions, GC


def test_conversions_round_trip():
    dna = "ATGGCTAAATAA"
    tok = _tokens(dna)
    assert decode(tok) == dna
    assert decode(dna.lower()) == dna
    np.testing.assert_array_equal(as_codon_ids(dna), as_codon_ids(tok))
    assert translate(tok) == "MAK" and translate(dna, keep_stop=True) == "MAK*"
    assert translate("GTGAAA") == "MK"  # alternative start read as M
    with pytest.raises(ValueError):
        as_codon_ids("ATGA")
    with pytest.raises(ValueError):
        as_codon_ids("ATGNNN")


def test_gc_and_gc3_hand_values():
    dna = "ATGGCCAAGTAA"  # ATG GCC AAG TAA
    assert gc(dna) == pytest.approx(5 / 12)
    assert gc(_tokens(dna)) == pytest.approx(5 / 12)
    assert gc3(dna) == pytest.approx(3 / 4)  # G, C, G, A
    assert gc3(_tokens(dna)) == pytest.approx(3 / 4)
    assert math.isnan(gc3(""))


def test_codon_usage_and_aa_composition():
    genes = ["ATGGCCGCCTAA", _tokens("GTGGCATGA")]
    u = codon_usage(genes)
    assert u.shape == (64,) and u.sum() == 7
    assert u[CODONS.index("GCC")] == 2 and u[CODONS.index("TAA")] == 1
    aa = aa_composition(genes)
    assert aa[AMINO_ACIDS.index("A")] == 3
    assert aa[AMINO_ACIDS.index("M")] == 2  # GTG start counts as initiator Met
    assert aa.sum() == 5  # stops not counted
    assert sense_codons(11).sum() == 61


# --------------------------------------------------------------------------- divergences


def test_divergences_symmetric_zero_and_positive():
    rng = np.random.default_rng(0)
    p, q = rng.integers(0, 100, 64), rng.integers(0, 100, 64)
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p))
    assert 0 < js_divergence(p, q) <= 1
    assert kl_divergence(p, q) > 0 and kl_divergence(p, q) != pytest.approx(kl_divergence(q, p))
    # counts and frequencies agree; stop codons are ignored
    assert js_divergence(p, q) == pytest.approx(js_divergence(p / p.sum(), q / q.sum()))
    q2 = q.copy()
    q2[CODONS.index("TAA")] += 1000
    assert js_divergence(p, q2) == pytest.approx(js_divergence(p, q))
    # disjoint support: finite, close to the 1-bit maximum
    a, b = np.zeros(64), np.zeros(64)
    a[CODONS.index("GCC")] = b[CODONS.index("AAA")] = 1
    assert 0.99 < js_divergence(a, b) <= 1.0
    assert np.isfinite(kl_divergence(a, b))


def test_divergences_hand_values():
    # p = (3/4, 1/4), q = (1/4, 3/4), m = (1/2, 1/2); no pseudocount
    p, q = np.array([3, 1]), np.array([1, 3])
    assert kl_divergence(p, q, pseudocount=0) == pytest.approx(0.5 * math.log2(3))
    js = 0.75 * math.log2(1.5) + 0.25 * math.log2(0.5)  # KL(p||m) = KL(q||m)
    assert js_divergence(p, q, pseudocount=0) == pytest.approx(js)
    assert js_divergence(p, q, pseudocount=0, base=math.e) == pytest.approx(js * math.log(2))
    # near-equal vectors: rounding must not turn the tiny divergence into nan
    near = np.array([1.0, 1.0 + 1e-15])
    assert js_divergence(near, np.array([1.0, 1.0]), pseudocount=0) == pytest.approx(0.0, abs=1e-12)


def test_split_half_floor_is_small_compared_with_a_shifted_set():
    rng = np.random.default_rng(1)
    real = [_random_cds(rng, 100) for _ in range(200)]
    floor = split_half_floor(real, np.random.default_rng(2), n_repeats=3)
    gc_rich = [g.replace("A", "G").replace("T", "C") for g in real[:100]]
    assert 0 <= floor < 0.01
    assert codon_js_divergence(real[100:], gc_rich) > 10 * floor
    assert split_half_floor(real, np.random.default_rng(2), kind="aa") < aa_js_divergence(real, gc_rich)


# --------------------------------------------------------------------------- CAI


def test_cai_on_toy_reference():
    # Phe: TTT x3, TTC x1; Lys: AAA x2, AAG x0 -> 0.5; Met/Trp/stops not counted
    ref = CAIReference().fit(["ATGTTTTTTTTTTTCAAAAAATGGTAA"])
    w = ref.weights_
    assert w[CODONS.index("TTT")] == 1.0
    assert w[CODONS.index("TTC")] == pytest.approx(1 / 3)
    assert w[CODONS.index("AAG")] == pytest.approx(0.25)
    assert np.isnan(w[CODONS.index("ATG")]) and np.isnan(w[CODONS.index("TGG")])
    assert np.isnan(w[CODONS.index("TAA")])
    assert w[CODONS.index("GCC")] == 1.0  # an unseen family: every codon 0.5, all w = 1
    assert ref.cai("ATGTTCAAGTGGTAA") == pytest.approx(math.sqrt(1 / 3 * 1 / 4))
    assert ref.cai(_tokens("ATGTTTAAATAA")) == pytest.approx(1.0)
    assert math.isnan(ref.cai("ATGTGGTAA"))
    np.testing.assert_allclose(ref.cai_many(["ATGTTTTAA", "TTCTTC"]), [1.0, 1 / 3])


# --------------------------------------------------------------------------- ENC


def test_enc_limits():
    code = genetic_code(11)
    sense = [c for c in CODONS if not code.is_stop[STOI[c]]]
    assert enc("".join(sense * 20)) == pytest.approx(61.0)  # every synonym equally used
    one_per_aa: dict[str, str] = {}
    for c in sense:
        one_per_aa.setdefault(chr(code.aa[STOI[c]]), c)
    e = enc("".join(list(one_per_aa.values()) * 1000))
    assert 20 <= e < 20.2
    # the pseudocount pulls short genes up: 50 of each gives ~21.6
    assert 21 < enc("".join(list(one_per_aa.values()) * 50)) < 22
    # Sun et al.'s split of the six-fold families: 23 subfamilies, so the floor is 23
    assert 23 <= enc("".join(list(one_per_aa.values()) * 1000), split_sixfold=True) < 23.2
    assert enc("".join(sense * 20), split_sixfold=True) == pytest.approx(61.0)
    # a real-looking random gene sits in between, and within bounds
    e2 = enc(_random_cds(np.random.default_rng(3), 300))
    assert 40 < e2 <= 61
    assert math.isnan(enc("TAA"))


def test_enc_is_invariant_to_order_and_uses_tokens():
    dna = _random_cds(np.random.default_rng(4), 200)
    codons = [dna[i : i + 3] for i in range(0, len(dna), 3)]
    shuffled = "".join(np.random.default_rng(5).permutation(codons))
    assert enc(dna) == pytest.approx(enc(shuffled))
    assert enc(_tokens(dna)) == pytest.approx(enc(dna))


# --------------------------------------------------------------------------- ORF


@pytest.mark.parametrize(
    "dna,expected",
    [
        ("ATGAAATAA", (True, True, 0, True, 3)),
        ("GTGAAATGA", (True, True, 0, True, 3)),  # GTG is a start in table 11
        ("AAAAAATAA", (False, True, 0, False, 3)),
        ("ATGAAAGGG", (True, False, 0, False, 3)),
        ("ATGTAGAAATAA", (True, True, 1, False, 4)),
        ("ATGTAATAGTAA", (True, True, 2, False, 4)),
        ("", (False, False, 0, False, 0)),
    ],
)
def test_orf_report(dna, expected):
    r = orf_report(dna)
    keys = ("starts_with_start", "ends_with_stop", "internal_stops", "valid_orf", "n_codons")
    assert tuple(r[k] for k in keys) == expected
    if dna:
        assert orf_report(_tokens(dna)) == r


def test_orf_report_follows_the_table():
    # TGA is Trp in table 4 (Mycoplasma), a stop in table 11
    assert orf_report("ATGTGAAAATAA", table_id=11)["internal_stops"] == 1
    assert orf_report("ATGTGAAAATAA", table_id=4)["valid_orf"]


# --------------------------------------------------------------------------- protein identity


def _mutate(p: str, frac: float, rng) -> str:
    s = list(p)
    for i in rng.choice(len(s), size=int(frac * len(s)), replace=False):
        s[i] = "W" if s[i] != "W" else "A"
    return "".join(s)


def test_protein_identity():
    rng = np.random.default_rng(6)
    p = "".join(rng.choice(list(AMINO_ACIDS), size=200))
    assert protein_identity(p, p) == 1.0
    assert protein_identity(p + "*", p) == 1.0  # stop ignored
    m10, m40 = _mutate(p, 0.1, rng), _mutate(p, 0.4, rng)
    assert protein_identity(p, m10) == pytest.approx(0.9)
    assert protein_identity(p, m40) < protein_identity(p, m10) < 1.0
    frag = p[50:150]
    assert protein_identity(frag, p) < 0.6
    assert protein_identity(frag, p, denominator="shorter") == 1.0
    assert protein_identity("", p) == 0.0
    assert protein_identity("MKUO", "MKUO") == 1.0  # letters outside BLOSUM62 are X


def test_nearest_identity_finds_the_source_among_many():
    rng = np.random.default_rng(7)
    refs = ["".join(rng.choice(list(AMINO_ACIDS), size=rng.integers(80, 400))) for _ in range(3000)]
    index = ProteinIndex(refs, k=3)
    for target in (5, 1234, 2999):
        ident, idx = nearest_identity(_mutate(refs[target], 0.2, rng), index)
        assert idx == target and ident == pytest.approx(0.8, abs=0.02)
    ident, idx = nearest_identity(refs[42], refs[:100])  # from a plain list too
    assert (ident, idx) == (1.0, 42)
    novel = "".join(rng.choice(list(AMINO_ACIDS), size=250))
    assert nearest_identity(novel, index)[0] < 0.4
    assert index.nearest("MK") == (0.0, -1)  # shorter than k: no candidates
