"""Gene-level quality metrics for generated versus real coding sequences.

A generated gene is judged the way a real CDS is: nucleotide composition (GC, GC3), codon and
amino-acid usage against the real genes (KL / Jensen-Shannon divergence, with the split-half
real-vs-real value as the floor that sampling noise alone gives), codon adaptation (CAI),
codon-usage bias (ENC), reading-frame sanity (ORF checks) and, for memorisation, the identity of
its protein to the nearest real protein.

Every function takes a gene as a DNA string (str or bytes, length a multiple of 3) or as token ids
(numpy array; `<BOS_CDS>`, `<EOS_CDS>`, `<PAD>` and `<SEP>` are dropped, so NPZ `gene_tokens` slices
work as they are). Codons are token ids 4..67 throughout (`codonlm.data.codons`); "codon index"
means token id - 4, the position in the 64-vector `codon_usage` returns (AAA, AAC, ..., TTT).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cache

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from codonlm.data.codons import CODON_OFFSET, CODONS, Gene, as_codon_ids, genetic_code

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
"""The 20 standard amino acids, in the order `aa_composition` counts them."""

_CODON_BASES = np.array([[b"ACGT".index(x.encode()) for x in c] for c in CODONS], dtype=np.int64)  # [64, 3]
_IS_GC_BASE = np.array([False, True, True, False])  # A C G T


# --------------------------------------------------------------------------- composition


def gc(seq: Gene) -> float:
    """Fraction of G+C over all bases of the gene (nan for an empty gene)."""
    if isinstance(seq, str | bytes):
        s = seq.upper() if isinstance(seq, bytes) else seq.upper().encode("ascii", "replace")
        n = sum(s.count(b) for b in (b"A", b"C", b"G", b"T", b"U"))
        return (s.count(b"G") + s.count(b"C")) / n if n else float("nan")
    bases = _CODON_BASES[as_codon_ids(seq) - CODON_OFFSET]
    return float(_IS_GC_BASE[bases].mean()) if bases.size else float("nan")


def gc3(seq: Gene) -> float:
    """Fraction of G+C at third codon positions: the position most free of protein constraints,
    so it tracks genome GC and mutational bias most directly (e.g. Sueoka 1988)."""
    bases = _CODON_BASES[as_codon_ids(seq) - CODON_OFFSET, 2]
    return float(_IS_GC_BASE[bases].mean()) if bases.size else float("nan")


def codon_usage(genes: Iterable[Gene]) -> np.ndarray:
    """Counts of the 64 codons (AAA..TTT, stops included) summed over genes."""
    counts = np.zeros(64, dtype=np.int64)
    for g in genes:
        counts += np.bincount(as_codon_ids(g) - CODON_OFFSET, minlength=64)
    return counts


def sense_codons(table_id: int = 11) -> np.ndarray:
    """Boolean mask over the 64 codon indices: True for codons that encode an amino acid."""
    return ~genetic_code(table_id).is_stop[CODON_OFFSET:]


def aa_composition(genes: Iterable[Gene], table_id: int = 11) -> np.ndarray:
    """Counts of the 20 standard amino acids (`AMINO_ACIDS` order) over genes; stops not counted.

    A start codon in first position counts as M (initiator), as in translation.
    """
    code = genetic_code(table_id)
    letters = np.full(256, -1, dtype=np.int64)
    letters[np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)] = np.arange(20)
    counts = np.zeros(20, dtype=np.int64)
    for g in genes:
        ids = as_codon_ids(g)
        if not ids.size:
            continue
        aa = code.aa[ids].astype(np.int64)
        if code.is_start[ids[0]]:
            aa[0] = ord("M")
        idx = letters[aa]
        counts += np.bincount(idx[idx >= 0], minlength=20)
    return counts


# --------------------------------------------------------------------------- divergences


def _restrict(x: np.ndarray, table_id: int, sense_only: bool) -> np.ndarray:
    return x[sense_codons(table_id)] if sense_only and x.size == 64 else x


def _smoothed(x: np.ndarray, pseudocount: float) -> np.ndarray:
    total = x.sum()
    if not np.isfinite(total) or total <= 0 or (x < 0).any():
        raise ValueError("a usage vector must be non-negative with a positive sum")
    p = x / total + pseudocount
    return p / p.sum()


def _pair(p, q, table_id: int, sense_only: bool, pseudocount: float) -> tuple[np.ndarray, np.ndarray]:
    """Both usage vectors restricted (sense codons) and smoothed, as kl/js divergence use them."""
    p = _smoothed(_restrict(np.asarray(p, dtype=np.float64), table_id, sense_only), pseudocount)
    q = _smoothed(_restrict(np.asarray(q, dtype=np.float64), table_id, sense_only), pseudocount)
    if p.shape != q.shape:
        raise ValueError(f"usage vectors differ in length: {p.size} vs {q.size}")
    return p, q


def kl_divergence(p: np.ndarray, q: np.ndarray, *, table_id: int = 11, sense_only: bool = True,
                  pseudocount: float = 1e-4, base: float = 2.0) -> float:
    """KL(p || q) between two usage vectors (counts or frequencies), in bits by default.

    A 64-vector is restricted to the sense codons of `table_id` (stop usage is one per gene and
    says little about codon choice). Each vector is normalised, `pseudocount` is added to every
    frequency and it is renormalised, so that a codon absent from q gives a large but finite value;
    working on frequencies makes counts and frequencies give the same answer.
    """
    p, q = _pair(p, q, table_id, sense_only, pseudocount)
    return float(entropy(p, q, base=base))


def js_divergence(p: np.ndarray, q: np.ndarray, *, table_id: int = 11, sense_only: bool = True,
                  pseudocount: float = 1e-4, base: float = 2.0) -> float:
    """Jensen-Shannon divergence (Lin 1991): symmetric, 0 for identical usage, at most 1 bit.

    Same conventions as `kl_divergence`: JS = KL(p||m)/2 + KL(q||m)/2 with m = (p+q)/2, the
    square of scipy's Jensen-Shannon distance.
    """
    p, q = _pair(p, q, table_id, sense_only, pseudocount)
    with np.errstate(invalid="ignore"):  # a sum rounded below 0 for near-equal p, q: sqrt gives nan
        distance = jensenshannon(p, q, base=base)
    return 0.0 if np.isnan(distance) else float(distance) ** 2


def codon_js_divergence(genes_a: Iterable[Gene], genes_b: Iterable[Gene], table_id: int = 11) -> float:
    """JS divergence (bits) between the sense-codon usage of two gene sets."""
    return js_divergence(codon_usage(genes_a), codon_usage(genes_b), table_id=table_id)


def aa_js_divergence(genes_a: Iterable[Gene], genes_b: Iterable[Gene], table_id: int = 11) -> float:
    """JS divergence (bits) between the amino-acid composition of two gene sets."""
    return js_divergence(aa_composition(genes_a, table_id), aa_composition(genes_b, table_id))


def split_half_floor(
    genes: Sequence[Gene],
    rng: np.random.Generator,
    kind: str = "codon",
    n_repeats: int = 1,
    table_id: int = 11,
) -> float:
    """Mean JS divergence between two random halves of real genes: the real-vs-real floor.

    A generated set can only be judged against what sampling alone gives, and that depends on
    set size: compare it with generated sets of about len(genes) / 2 genes. `kind` is "codon" or "aa".
    """
    if kind not in ("codon", "aa"):
        raise ValueError("kind must be 'codon' or 'aa'")
    if len(genes) < 2:
        raise ValueError("need at least two genes to split")
    metric = codon_js_divergence if kind == "codon" else aa_js_divergence
    vals = []
    for _ in range(n_repeats):
        perm = rng.permutation(len(genes))
        half = len(genes) // 2
        vals.append(metric([genes[i] for i in perm[:half]], [genes[i] for i in perm[half:]], table_id))
    return float(np.mean(vals))


# --------------------------------------------------------------------------- CAI and ENC


def _synonymous_families(table_id: int, split_boxes: bool, stops: bool = False) -> list[np.ndarray]:
    """Codon indices of each amino acid's synonymous family (split by first two bases if asked);
    with `stops`, the stop codons as one more family."""
    code = genetic_code(table_id)
    fams: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(CODONS):
        tid = i + CODON_OFFSET
        if code.is_stop[tid] and not stops:
            continue
        key = (chr(code.aa[tid]), c[:2] if split_boxes else "")
        fams.setdefault(key, []).append(i)
    return [np.array(v) for v in fams.values()]


CAI_CONVENTIONS = ("sharp-li", "biopython", "codonbias")
"""`CAIReference(convention=...)`: Sharp & Li 1987 (ours), Biopython 1.88, codon-bias 0.5."""


class CAIReference:
    """Codon Adaptation Index (Sharp & Li 1987, Nucleic Acids Res 15:1281).

    `fit` takes reference genes (classically highly expressed ones; any real set gives a
    "similarity to host usage" score) and sets the relative adaptiveness of each codon,
    w = x_codon / x_most-used-synonym. `cai(gene)` is the geometric mean of w over the gene's
    countable codons (the start codon counts as the amino acid it codes elsewhere, e.g. GTG as Val).

    `convention` chooses what the tools users compare with do; all three agree on everything else:

    - "sharp-li" (default, as the paper): a codon absent from the reference gets count
      `pseudocount` (default 0.5, their suggestion) so one rare codon does not zero a gene's CAI;
      codons of single-codon amino acids (Met ATG, Trp TGG in the standard code) and stops are
      left out of the mean, their w being 1 by construction.
    - "biopython": Biopython 1.88's `Bio.SeqUtils.CodonAdaptationIndex`. Same weights, but the
      stop codons form one more family (w = count / count of the most used stop) and
      `calculate` keeps a gene's stop codon in the mean: it skips only ATG and TGG (so this
      matches it for codes whose single-codon amino acids are those two, e.g. 1 and 11). One
      rare stop (TAG: w about 0.1 on E. coli genes) lowers a 100-codon gene's CAI by about 2%.
    - "codonbias": codon-bias 0.5's `codonbias.scores.CodonAdaptationIndex`. `pseudocount`
      (default 1) is added to every codon's count, not only to absent ones, and Met and Trp
      (w = 1) stay in the mean, so log CAI shrinks by their share of the gene's codons.
    """

    def __init__(self, pseudocount: float | None = None, convention: str = "sharp-li"):
        if convention not in CAI_CONVENTIONS:
            raise ValueError(f"convention must be one of {CAI_CONVENTIONS}, not {convention!r}")
        self.convention = convention
        self.pseudocount = pseudocount

    def _counted(self, table_id: int) -> np.ndarray:
        """Mask of the 64 codons whose w enters the geometric mean under the convention."""
        sense = sense_codons(table_id)
        if self.convention == "codonbias":
            return sense
        single = np.zeros(64, dtype=bool)
        for fam in _synonymous_families(table_id, split_boxes=False):
            single[fam] = fam.size == 1
        return ~single if self.convention == "biopython" else sense & ~single

    def fit(self, reference_genes: Iterable[Gene], table_id: int = 11) -> CAIReference:
        self.table_id_ = table_id
        self.counts_ = codon_usage(reference_genes)
        x = self.counts_.astype(np.float64)
        if self.convention == "codonbias":
            x += 1.0 if self.pseudocount is None else self.pseudocount
        else:
            x[x == 0] = 0.5 if self.pseudocount is None else self.pseudocount
        w = np.empty(64)
        for fam in _synonymous_families(table_id, split_boxes=False, stops=True):
            w[fam] = x[fam] / x[fam].max()
        self.weights_ = np.where(self._counted(table_id), w, np.nan)  # nan: codon not counted in CAI
        return self

    @classmethod
    def from_weights(
        cls, weights: Mapping[str, float], table_id: int = 11, convention: str = "sharp-li"
    ) -> CAIReference:
        """A reference from a published table of w by codon (e.g. Sharp & Li 1987, Table 1).

        Codons the table lacks, or that the convention does not count, get no weight.
        """
        ref = cls(convention=convention)
        ref.table_id_ = table_id
        w = np.full(64, np.nan)
        for codon, value in weights.items():
            w[CODONS.index(codon.upper().replace("U", "T"))] = value
        ref.weights_ = np.where(ref._counted(table_id), w, np.nan)
        return ref

    def cai(self, gene: Gene) -> float:
        """Geometric mean of w over the gene's counted codons (nan if none, where Biopython divides by 0)."""
        w = self.weights_[as_codon_ids(gene) - CODON_OFFSET]
        w = w[~np.isnan(w)]
        return float(np.exp(np.log(w).mean())) if w.size else float("nan")

    def cai_many(self, genes: Iterable[Gene]) -> np.ndarray:
        return np.array([self.cai(g) for g in genes])


ENC_CONVENTIONS = ("sun", "codonbias")
"""`enc(convention=...)`: Sun, Yang & Xia 2013 as published (ours), codon-bias 0.5."""


def enc(gene: Gene, table_id: int = 11, split_sixfold: bool = False, convention: str = "sun") -> float:
    """Effective number of codons with the estimator of Sun, Yang & Xia 2013 (Mol Biol Evol 30:191).

    Why Sun et al. and not Wright's 1990 original: Wright's per-family homozygosity is undefined
    when an amino acid is missing or seen once and his Nc can exceed 61 on short genes, both
    common in generated genes. Per synonymous family of m codons seen n times in all,
    F = sum_i ((n_i + 1) / (n + m))^2 (one pseudocount per codon); per degeneracy class k the
    mean F_k weighted by each family's n; ENC = sum_k K_k / F_k with K_k families in class k.

    Families are Wright's (the six-fold Leu, Ser, Arg kept whole), so the standard code gives the
    familiar range: 61 for uniform synonym use, 20 as the limit of one codon per amino acid (the
    pseudocount keeps short genes above it: 50 codons per amino acid give about 21.6).
    `split_sixfold=True` splits them into their two- and four-codon boxes as Sun et al. propose;
    the floor is then 23. A class with no codon in the gene takes F = 1/k, its pseudocount-only
    value (our choice for a case Sun et al. leave open). Stops are ignored; nan with no sense codon.

    `convention="codonbias"` gives codon-bias 0.5's `EffectiveNumberOfCodons()` (its defaults:
    robust, pseudocount 1, mean="weighted"): the same F, but it weights each family by its
    pseudocounted total n + m, not by n (Sun et al.'s eq. 5). So an amino acid absent from the
    gene still enters its class's mean, with F = 1/m and weight m, which pulls ENC of short genes
    up (by up to about 4 on E. coli genes).
    """
    if convention not in ENC_CONVENTIONS:
        raise ValueError(f"convention must be one of {ENC_CONVENTIONS}, not {convention!r}")
    counts = np.bincount(as_codon_ids(gene) - CODON_OFFSET, minlength=64).astype(np.float64)
    if counts[sense_codons(table_id)].sum() == 0:
        return float("nan")
    by_class: dict[int, list[tuple[float, float]]] = {}
    for fam in _synonymous_families(table_id, split_boxes=split_sixfold):
        m, c = fam.size, counts[fam]
        n = c.sum()
        f = 1.0 if m == 1 else float(np.sum(((c + 1) / (n + m)) ** 2))
        by_class.setdefault(m, []).append((n + m if convention == "codonbias" else n, f))
    total = 0.0
    for fams in by_class.values():
        n = np.array([x[0] for x in fams])
        f = np.array([x[1] for x in fams])
        f_avg = float((n * f).sum() / n.sum()) if n.sum() > 0 else float(f.mean())
        total += len(fams) / f_avg
    return total


# --------------------------------------------------------------------------- reading frame


def orf_report(codon_ids: Gene, table_id: int = 11) -> dict[str, bool | int]:
    """Reading-frame sanity of one gene: a valid ORF starts with a start codon of the table, ends
    with a stop and has no stop before it (in-frame premature stops)."""
    ids = as_codon_ids(codon_ids)
    code = genetic_code(table_id)
    n = int(ids.size)
    starts = bool(n and code.is_start[ids[0]])
    ends = bool(n and code.is_stop[ids[-1]])
    internal = int(code.is_stop[ids[:-1]].sum()) if n else 0
    return {
        "starts_with_start": starts,
        "ends_with_stop": ends,
        "internal_stops": internal,
        "valid_orf": starts and ends and internal == 0 and n >= 2,
        "n_codons": n,
    }


# --------------------------------------------------------------------------- protein identity


@cache
def _aligner():
    from Bio.Align import PairwiseAligner, substitution_matrices

    aligner = PairwiseAligner(mode="global")
    aligner.substitution_matrix = substitution_matrices.load("BLOSUM62")
    aligner.open_gap_score = -10.0  # EMBOSS needle defaults
    aligner.extend_gap_score = -0.5
    return aligner


_ALIGN_ALPHABET = set("ARNDCQEGHILKMFPSTWYVBZX")


def _clean_protein(p: str) -> str:
    p = p.upper().rstrip("*")
    return "".join(ch if ch in _ALIGN_ALPHABET else "X" for ch in p)


def protein_identity(a: str, b: str, denominator: str = "alignment") -> float:
    """Identity of a global alignment (BLOSUM62, gap open 10 / extend 0.5 as EMBOSS needle).

    Identical positions divided by the alignment length including gaps (`denominator="alignment"`,
    as BLAST's pident; 1.0 only for identical proteins) or by the shorter protein ("shorter": a
    copied fragment scores 1.0). Trailing stops are ignored; letters outside BLOSUM62 count as X.
    """
    a, b = _clean_protein(a), _clean_protein(b)
    if not a or not b:
        return 0.0
    aln = _aligner().align(a, b)[0]
    ident = aln.counts().identities
    if denominator == "alignment":
        return ident / aln.length
    if denominator == "shorter":
        return ident / min(len(a), len(b))
    raise ValueError("denominator must be 'alignment' or 'shorter'")


class ProteinIndex:
    """k-mer inverted index over reference proteins, to find near copies without aligning to all.

    Candidates are ranked by shared distinct k-mers / max(k-mer count of query, of reference),
    which favours references of similar length and content; only the best few are aligned.
    """

    def __init__(self, reference_proteins: Sequence[str], k: int = 3):
        if k < 1 or 26**k >= 2**62:
            raise ValueError("k out of range")
        self.k = k
        self.proteins = [_clean_protein(p) for p in reference_proteins]
        per_ref = [self._kmers(p) for p in self.proteins]
        self.n_kmers = np.array([x.size for x in per_ref], dtype=np.int64)
        kmers = np.concatenate(per_ref) if per_ref else np.zeros(0, dtype=np.int64)
        refs = np.repeat(np.arange(len(per_ref)), self.n_kmers)
        order = np.argsort(kmers, kind="stable")
        self._kmers_sorted, self._refs = kmers[order], refs[order]

    def _kmers(self, protein: str) -> np.ndarray:
        """Distinct k-mers of a protein as integers (base 26 digits of its letters)."""
        if len(protein) < self.k:
            return np.zeros(0, dtype=np.int64)
        codes = np.frombuffer(protein.encode("ascii"), dtype=np.uint8).astype(np.int64) - ord("A")
        key = np.zeros(len(protein) - self.k + 1, dtype=np.int64)
        for i in range(self.k):
            key = key * 26 + codes[i : i + key.size]
        return np.unique(key)

    def candidates(self, query_protein: str, n: int) -> np.ndarray:
        """Indices of the n references sharing most k-mers with the query (relative to size)."""
        q = self._kmers(_clean_protein(query_protein))
        if not q.size or not self._kmers_sorted.size:
            return np.zeros(0, dtype=np.int64)
        lo = np.searchsorted(self._kmers_sorted, q, side="left")
        hi = np.searchsorted(self._kmers_sorted, q, side="right")
        lens = hi - lo
        if lens.sum() == 0:
            return np.zeros(0, dtype=np.int64)
        # gather all postings: positions lo[i] .. hi[i]-1 for every query k-mer
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        postings = self._refs[starts + np.arange(lens.sum())]
        shared = np.bincount(postings, minlength=len(self.proteins)).astype(np.float64)
        score = shared / np.maximum(np.maximum(self.n_kmers, q.size), 1)
        hits = np.flatnonzero(shared > 0)
        best = hits[np.argsort(-score[hits], kind="stable")[:n]]
        return best

    def nearest(
        self, query_protein: str, n_align: int = 5, denominator: str = "alignment"
    ) -> tuple[float, int]:
        """(best identity, reference index) over the n_align top candidates; (0.0, -1) if none shares a k-mer."""
        best, arg = 0.0, -1
        for i in self.candidates(query_protein, n_align):
            ident = protein_identity(query_protein, self.proteins[i], denominator)
            if ident > best:
                best, arg = ident, int(i)
        return best, arg


def nearest_identity(
    query_protein: str,
    reference_proteins: Sequence[str] | ProteinIndex,
    k: int = 3,
    n_align: int = 5,
    denominator: str = "alignment",
) -> tuple[float, int]:
    """Identity to the nearest reference protein and its index: the memorisation check.

    Build a `ProteinIndex` once and pass it when checking many queries.
    """
    index = (
        reference_proteins
        if isinstance(reference_proteins, ProteinIndex)
        else ProteinIndex(reference_proteins, k)
    )
    return index.nearest(query_protein, n_align, denominator)
