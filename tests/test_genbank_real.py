"""Acceptance on real data: E. coli K-12 CDS translate to their /translation; DNA equals Biopython's."""

from __future__ import annotations

import pytest
from Bio import SeqIO

from codonlm.data.genbank import ExtractionStats, extract_file
from codonlm.io import open_binary

pytestmark = pytest.mark.integration


def test_ecoli_translations_match_annotation(raw_corpus):
    path = raw_corpus / "Escherichia_coli_K12_MG1655.gbk.gz"
    stats = ExtractionStats()
    kept = list(extract_file(path, min_len=1, default_table=11, stats=stats))
    with_translation = [c for c in kept if c.translation]
    assert len(with_translation) > 4000
    agree = sum(c.protein == c.translation for c in with_translation)
    assert agree / len(with_translation) >= 0.999, f"{agree}/{len(with_translation)}"
    # nothing lost silently
    assert stats.kept + sum(stats.dropped.values()) == stats.cds_features
    assert stats.dropped["pseudo"] > 0  # E. coli K-12 annotates pseudogenes


def test_ecoli_dna_equals_biopython_extract(raw_corpus):
    path = raw_corpus / "Escherichia_coli_K12_MG1655.gbk.gz"
    ours = {(c.record_id, c.name): c.dna() for c in extract_file(path, min_len=1)}
    checked = 0
    with open_binary(path) as fh:
        import io

        for rec in SeqIO.parse(io.TextIOWrapper(fh), "genbank"):
            for f in rec.features:
                tag = f.qualifiers.get("locus_tag", [None])[0]
                if f.type != "CDS" or (rec.name, tag) not in ours:
                    continue
                start = int(f.qualifiers.get("codon_start", ["1"])[0]) - 1
                assert str(f.extract(rec.seq))[start:].upper() == ours[(rec.name, tag)], tag
                checked += 1
    assert checked == len(ours) > 4000


def test_selenoproteins_and_pyrrolysine_kept(raw_corpus):
    """fdhF/fdnG/fdoG (Sec, TGA) in E. coli and Pyl (TAG) proteins in M. acetivorans survive."""
    ecoli = {c.name: c for c in extract_file(raw_corpus / "Escherichia_coli_K12_MG1655.gbk.gz")}
    sec = [c for c in ecoli.values() if "U" in c.protein]
    assert len(sec) >= 3 and all(c.protein == c.translation for c in sec)
    ma = list(extract_file(raw_corpus / "Methanosarcina_acetivorans_C2A.gbk.gz"))
    assert sum(bool(c.aa_exceptions) for c in ma) >= 3
