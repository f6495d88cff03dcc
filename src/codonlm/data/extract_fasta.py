"""Kept CDS as FASTA, so anyone can audit what the pipeline extracted."""

from __future__ import annotations

import os
from pathlib import Path

from codonlm.data.genbank import ExtractionStats, extract_file


def write_cds_fasta(files: list[str], out: str | Path, min_len: int = 1, transl_table: int = 11) -> ExtractionStats:
    """Header: record id, locus_tag (or protein_id/gene), 1-based location, strand. Atomic write."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    stats = ExtractionStats()
    try:
        with open(tmp, "w") as fh:
            for path in files:
                for cds in extract_file(path, min_len, transl_table, stats):
                    strand = "+" if cds.strand == 1 else "-"
                    fh.write(f">{cds.record_id} {cds.name} {cds.location} {strand}\n")
                    dna = cds.dna()
                    for i in range(0, len(dna), 60):
                        fh.write(dna[i : i + 60] + "\n")
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return stats
