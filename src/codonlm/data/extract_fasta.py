"""Kept CDS as FASTA, so anyone can audit what the pipeline extracted (or which genes it called)."""

from __future__ import annotations

from pathlib import Path

from codonlm.data.genbank import ExtractionStats
from codonlm.data.inputs import InputFile, extract_input_records
from codonlm.io import atomic_path


def write_cds_fasta(sources: list[str | InputFile], out: str | Path, min_len: int = 1,
                    transl_table: int = 11) -> ExtractionStats:
    """Header: record id, locus_tag (or protein_id/gene; <contig>_<n> for called genes), 1-based location,
    strand. A plain path is a GenBank file. Atomic write."""
    stats = ExtractionStats()
    with atomic_path(out) as tmp:
        with open(tmp, "w") as fh:
            for source in sources:
                source = source if isinstance(source, InputFile) else InputFile("gbff", str(source))
                for batch in extract_input_records(source, min_len, transl_table, stats):
                    for i in range(len(batch)):
                        cds = batch.cds(i)
                        strand = "+" if cds.strand == 1 else "-"
                        fh.write(f">{cds.record_id} {cds.name} {cds.location} {strand}\n")
                        dna = cds.dna()
                        for j in range(0, len(dna), 60):
                            fh.write(dna[j : j + 60] + "\n")
    return stats
