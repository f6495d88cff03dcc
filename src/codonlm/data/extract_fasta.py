"""Kept CDS as FASTA, so anyone can audit what the pipeline extracted."""

from __future__ import annotations

from pathlib import Path

from codonlm.data.genbank import ExtractionStats, extract_file
from codonlm.io import atomic_path


def write_cds_fasta(files: list[str], out: str | Path, min_len: int = 1, transl_table: int = 11) -> ExtractionStats:
    """Header: record id, locus_tag (or protein_id/gene), 1-based location, strand. Atomic write."""
    stats = ExtractionStats()
    with atomic_path(out) as tmp:
        with open(tmp, "w") as fh:
            for path in files:
                for cds in extract_file(path, min_len, transl_table, stats):
                    strand = "+" if cds.strand == 1 else "-"
                    fh.write(f">{cds.record_id} {cds.name} {cds.location} {strand}\n")
                    dna = cds.dna()
                    for i in range(0, len(dna), 60):
                        fh.write(dna[i : i + 60] + "\n")
    return stats
