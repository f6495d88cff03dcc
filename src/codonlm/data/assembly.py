"""Assemblies in: nucleotide contigs (FASTA) checked, and their genes called with pyrodigal (Prodigal).

The called genes become CDS features of gb-io records, so that the GenBank extraction
(codonlm.data.genbank.extract_record_cds) screens and counts them exactly as annotated ones: a gene
Prodigal ran off a contig edge carries a partial location and is dropped as `partial`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import gb_io
import pyrodigal

from codonlm.errors import UserError
from codonlm.io import read_fasta, read_json, sha256_file, write_json

CALLER = "pyrodigal"
CALLS_FORMAT = 1  # of the cached calls (calls_cache_path): a change here makes every cache entry stale
_THIS_FILE = "{fasta}"  # stands for the FASTA's path in cached warnings (the same content may sit elsewhere)
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


def find_genes(contigs: list[Contig], finder: pyrodigal.GeneFinder) -> list[list[int]]:
    """Each called gene as [contig index, begin (1-based), end, strand, partial begin, partial end, transl_table]."""
    return [[i, gene.begin, gene.end, gene.strand, int(gene.partial_begin), int(gene.partial_end),
             gene.translation_table]
            for i, contig in enumerate(contigs) for gene in finder.find_genes(contig.seq)]


def called_records(contigs: list[Contig], genes: list[list[int]]) -> list[gb_io.Record]:
    """One linear gb-io record per contig, its called genes as CDS features named <contig>_<n> (Prodigal's ids)."""
    features: list[list[gb_io.Feature]] = [[] for _ in contigs]
    for i, begin, end, strand, partial_begin, partial_end, table in genes:
        span = gb_io.Range(begin - 1, end, before=bool(partial_begin), after=bool(partial_end))
        features[i].append(gb_io.Feature(
            kind="CDS", location=span if strand == 1 else gb_io.Complement(span),
            qualifiers=[gb_io.Qualifier("locus_tag", f"{contigs[i].name}_{len(features[i]) + 1}"),
                        gb_io.Qualifier("transl_table", str(table))]))
    return [gb_io.Record(c.seq, name=c.name, circular=False, features=f) for c, f in zip(contigs, features, strict=True)]


def calls_cache_path(cache_dir: str | Path, path: str, setting: str, table: int) -> Path:
    """Where the calls of this FASTA file's content are kept, for this caller version, mode asked for and code."""
    what = f"{CALLS_FORMAT}:{sha256_file(path)}:{pyrodigal.__version__}:{setting}:{table}"
    return Path(cache_dir) / f"{hashlib.blake2b(what.encode(), digest_size=16).hexdigest()}.json"


def _cached_or_called(contigs: list[Contig], path: str, setting: str, table: int, cache: Path | None) -> dict:
    """{"mode", "warnings", "genes"} of the contigs: read from `cache` when there, else called (and saved)."""
    saved = read_json(cache) if cache is not None else None
    if saved is not None and saved.get("format") == CALLS_FORMAT:  # warnings name the file they are about
        return {**saved, "warnings": [w.replace(_THIS_FILE, path) for w in saved["warnings"]]}
    notes: list[str] = []
    finder, mode = gene_finder(contigs, setting, table, path, notes)
    calls = {"format": CALLS_FORMAT, "mode": mode, "warnings": notes, "genes": find_genes(contigs, finder)}
    if cache is not None:
        write_json(cache, {**calls, "warnings": [w.replace(path, _THIS_FILE) for w in notes]})
    return calls


def call_genes(path: str, setting: str, table: int, warnings: list[str],
               cache_dir: str | None = None) -> tuple[list[gb_io.Record], dict]:
    """The contigs of `path` with their called genes, and the provenance of the calls (caller, version,
    mode, contigs, bases, called, partial). With `cache_dir`, genes are called once per file content
    (and caller version, mode asked for, code): later calls, such as prepare's cluster pass then its
    units, or a prepare with other split settings, read them back."""
    contigs = read_contigs(path)
    cache = calls_cache_path(cache_dir, path, setting, table) if cache_dir is not None else None
    calls = _cached_or_called(contigs, path, setting, table, cache)
    warnings.extend(calls["warnings"])
    genes = calls["genes"]
    provenance = {
        "path": path, "caller": CALLER, "version": pyrodigal.__version__, "prodigal": pyrodigal.PRODIGAL_VERSION,
        "mode": calls["mode"], "requested": setting, "transl_table": table, "contigs": len(contigs),
        "bases": sum(len(c.seq) for c in contigs), "called": len(genes),
        "partial": sum(1 for g in genes if g[4] or g[5]),
    }  # fmt: skip
    return called_records(contigs, genes), provenance
