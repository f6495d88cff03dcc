"""Our CAI and ENC beside the tools users know, on real E. coli K-12 genes: max |ours - theirs|.

    .venv/bin/python bench/metrics_reference.py [--raw data/raw] [--genes 400]

Genes: `--genes` CDS evenly spaced over the kept CDS of data/raw/Escherichia_coli_K12_MG1655.gbk.gz
(genetic code 11); the CAI reference set is those same genes. For each reference tool it prints
our default convention (what `CAIReference()` / `enc()` give) and the convention that follows
that tool, and says in one line what makes the difference.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
from Bio.Data import CodonTable
from Bio.SeqUtils import CodonAdaptationIndex as BiopythonCAI

from codonlm.data.genbank import extract_file
from codonlm.evaluate.seqmetrics import CAIReference, enc

ECOLI = "Escherichia_coli_K12_MG1655.gbk.gz"


def codonbias_scores():
    """codon-bias's `scores` module. Its package imports pandarallel (for `codonbias.random`, unused
    here), and pandarallel 1.6.5 fails to import under pandas 3: an empty stand-in lets it load."""
    try:
        import pandarallel  # noqa: F401
    except ImportError:
        sys.modules["pandarallel"] = types.ModuleType("pandarallel")
        sys.modules["pandarallel"].pandarallel = None
    from codonbias import scores

    return scores


def ecoli_genes(raw: Path, n: int) -> list[str]:
    cds = list(extract_file(raw / ECOLI, default_table=11))
    return [cds[i].dna() for i in np.linspace(0, len(cds) - 1, n).round().astype(int)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--genes", type=int, default=400)
    args = ap.parse_args()
    genes = ecoli_genes(args.raw, args.genes)
    scores = codonbias_scores()

    bio = BiopythonCAI(genes, CodonTable.unambiguous_dna_by_id[11])
    cb_cai = scores.CodonAdaptationIndex(genes, genetic_code=11)
    theirs = {
        "biopython": np.array([bio.calculate(g) for g in genes]),
        "codonbias": cb_cai.get_score(genes),
    }
    why = {
        "biopython": "Biopython keeps the stop codon in the mean (w among TAA/TAG/TGA)",
        "codonbias": "codon-bias keeps Met/Trp (w=1) in the mean and adds 1 to every count",
    }
    print(f"{len(genes)} E. coli K-12 genes ({sum(len(g) for g in genes) // 3} codons), reference = the same genes")
    default_cai = CAIReference().fit(genes).cai_many(genes)
    for tool, values in theirs.items():
        matched = CAIReference(convention=tool).fit(genes).cai_many(genes)
        print(f"CAI vs {tool:9s}: default sharp-li {np.abs(default_cai - values).max():.6f}, "
              f"convention={tool!r} {np.abs(matched - values).max():.2e}  ({why[tool]})")

    cb_enc = scores.EffectiveNumberOfCodons(genetic_code=11).get_score(genes)
    default_enc = np.array([enc(g) for g in genes])
    matched_enc = np.array([enc(g, convention="codonbias") for g in genes])
    print(f"ENC vs codonbias: default sun {np.abs(default_enc - cb_enc).max():.4f}, "
          f"convention='codonbias' {np.abs(matched_enc - cb_enc).max():.2e}  "
          "(codon-bias weights each family by n + m, pseudocounts included; Sun et al. by n)")


if __name__ == "__main__":
    main()
