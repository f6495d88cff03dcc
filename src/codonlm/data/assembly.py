"""Assemblies in: nucleotide contigs (FASTA) checked, and their genes called with pyrodigal (Prodigal).

The called genes become CDS features of gb-io records, so that the GenBank extraction
(codonlm.data.genbank.extract_record_cds) screens and counts them exactly as annotated ones: a gene
Prodigal ran off a contig edge carries a partial location and is dropped as `partial`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gb_io
import pyrodigal

from codonlm.errors import UserError
from codonlm.io import read_fasta

CALLER = "pyrodigal"
# Prodigal's guidance: single-genome training wants 100 kb of sequence, and refuses less than 20 kb
SINGLE_MIN_BASES = pyrodigal.IDEAL_SINGLE_GENOME
TRAINABLE_BASES = pyrodigal.MIN_SINGLE_GENOME
_NUCLEOTIDES = re.compile(r"[^ACGTUNRYKMSWBDHV]")  # IUPAC nucleotide codes (upper case)
_UNAMBIGUOUS = re.compile(r"[^N]")


@dataclass(frozen=True)
class Contig:
    name: str
    seq: bytes  # upper case


def read_contigs(path: str) -> list[Contig]:
    """The contigs of a nucleotide FASTA file, plain or gzipped (see checked_contigs)."""
    return checked_contigs(read_fasta(path), path)


def checked_contigs(records: list[tuple[str, str]], path: str) -> list[Contig]:
    """FASTA records as contigs (soft-masked lower case accepted), or a one-line UserError naming the file
    and record: no records, a duplicate id, an empty or all-N contig, a letter that is no nucleotide (protein)."""
    if not records:
        raise UserError(f"{path}: no FASTA records; give the genome's contigs as nucleotide FASTA ('>id' lines)")
    seen: set[str] = set()
    contigs = []
    for name, text in records:
        if name in seen:
            raise UserError(f"{path}: contig id '{name}' appears twice; give every contig its own id")
        seen.add(name)
        seq = text.upper()
        bad = _NUCLEOTIDES.search(seq)
        if bad:
            raise UserError(f"{path}: record {name}: '{bad.group()}' at position {bad.start() + 1} is not a nucleotide "
                            "code (a protein FASTA?); fasta: takes nucleotide contigs")
        if not _UNAMBIGUOUS.search(seq):
            raise UserError(f"{path}: record {name} is {'empty' if not seq else 'all N'}; remove it from the file")
        contigs.append(Contig(name, seq.replace("U", "T").encode("ascii")))
    return contigs


def _meta_bins(table: int, path: str) -> pyrodigal.MetagenomicBins:
    """Prodigal's pre-trained metagenome models that use genetic code `table`."""
    bins = [b for b in pyrodigal.METAGENOMIC_BINS if b.training_info.translation_table == table]
    if not bins:
        tables = sorted({b.training_info.translation_table for b in pyrodigal.METAGENOMIC_BINS})
        raise UserError(f"{path}: metagenome gene calling has models for genetic codes {tables} only, not "
                        f"transl_table {table}; give 100 kb of contigs for single mode, or annotate the genome (gff:)")
    return pyrodigal.MetagenomicBins(bins)


def gene_finder(contigs: list[Contig], setting: str, table: int, path: str,
                warnings: list[str]) -> tuple[pyrodigal.GeneFinder, str]:
    """A GeneFinder for these contigs and the mode it runs in: single (trained on the contigs) when they
    total SINGLE_MIN_BASES or `setting` asks for it, meta otherwise; single on too little falls back to meta."""
    total = sum(len(c.seq) for c in contigs)
    mode = "meta" if setting == "meta" or (setting == "auto" and total < SINGLE_MIN_BASES) else "single"
    if mode == "single" and total < TRAINABLE_BASES:
        warnings.append(f"{path}: {total} bp of contigs are too few to train Prodigal (it needs {TRAINABLE_BASES}); "
                        "genes called in metagenome mode instead (set gene_calling: meta to silence this)")
        mode = "meta"
    if mode == "meta":
        return pyrodigal.GeneFinder(meta=True, metagenomic_bins=_meta_bins(table, path), mask=True), mode
    finder = pyrodigal.GeneFinder(meta=False, mask=True)
    finder.train(*(c.seq for c in contigs), translation_table=table)
    return finder, mode


def called_records(contigs: list[Contig], finder: pyrodigal.GeneFinder) -> list[gb_io.Record]:
    """One linear gb-io record per contig, its called genes as CDS features named <contig>_<n> (Prodigal's ids)."""
    records = []
    for contig in contigs:
        features = []
        for n, gene in enumerate(finder.find_genes(contig.seq), 1):
            span = gb_io.Range(gene.begin - 1, gene.end, before=gene.partial_begin, after=gene.partial_end)
            features.append(gb_io.Feature(
                kind="CDS", location=span if gene.strand == 1 else gb_io.Complement(span),
                qualifiers=[gb_io.Qualifier("locus_tag", f"{contig.name}_{n}"),
                            gb_io.Qualifier("transl_table", str(gene.translation_table))]))
        records.append(gb_io.Record(contig.seq, name=contig.name, circular=False, features=features))
    return records


def call_genes(path: str, setting: str, table: int, warnings: list[str]) -> tuple[list[gb_io.Record], dict]:
    """The contigs of `path` with their called genes, and the provenance of the calls (caller, version,
    mode, contigs, bases, called, partial)."""
    contigs = read_contigs(path)
    finder, mode = gene_finder(contigs, setting, table, path, warnings)
    records = called_records(contigs, finder)
    locations = [f.location for r in records for f in r.features]
    spans = [loc.location if isinstance(loc, gb_io.Complement) else loc for loc in locations]
    provenance = {
        "path": path, "caller": CALLER, "version": pyrodigal.__version__, "prodigal": pyrodigal.PRODIGAL_VERSION,
        "mode": mode, "requested": setting, "transl_table": table, "contigs": len(contigs),
        "bases": sum(len(c.seq) for c in contigs), "called": len(spans),
        "partial": sum(1 for s in spans if s.before or s.after),
    }  # fmt: skip
    return records, provenance
