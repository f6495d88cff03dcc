"""A dataset's input files, whatever their kind, as CDS: GenBank (annotated), a bare assembly (genes
called by pyrodigal) or GFF3 + FASTA. Every kind ends in gb-io records that codonlm.data.genbank
extracts the same way."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from codonlm.config import DatasetSpec
from codonlm.data.genbank import (
    ExtractionStats,
    RecordCDS,
    check_genbank_path,
    extract_file_records,
    extract_record_cds,
)
from codonlm.errors import UserError

WHAT = {"gbff": "GenBank file", "fasta": "FASTA file", "gff": "GFF3 file"}


@dataclass(frozen=True)
class InputFile:
    """One genome's file: its kind, and for GFF3 the FASTA beside it (None: embedded after ##FASTA)."""

    kind: str  # gbff, fasta or gff
    path: str
    fasta: str | None = None
    gene_calling: str = "auto"  # fasta: the mode asked for (DatasetSpec.gene_calling)
    gene_calls: str | None = None  # fasta: the folder where called genes are kept (None: call every time)


def dataset_input_files(spec: DatasetSpec, gene_calls: str | None = None) -> list[InputFile]:
    """The dataset's files; `gene_calls`: the folder that keeps the genes called in its FASTA files."""
    return [InputFile(spec.kind, path, fasta, spec.gene_calling, gene_calls)
            for path, fasta in zip(spec.files, spec.companions, strict=True)]


def check_input_path(path: str | Path, kind: str) -> Path:
    """The path of an existing, non-empty file, or a one-line UserError naming the config key to fix."""
    if kind == "gbff":
        return check_genbank_path(path)
    path, what = Path(path), WHAT[kind]
    if not path.exists():
        raise UserError(f"{what} not found: {path}; check data.datasets[].{kind} in the config")
    if not path.is_file():
        raise UserError(f"not a file: {path}; data.datasets[].{kind} must name {what}s")
    if path.stat().st_size == 0:
        raise UserError(f"{what} is empty: {path}; give the genome's {what} or remove it from the config")
    return path


def dataset_paths(spec: DatasetSpec) -> list[Path]:
    """Every file of a dataset, checked: its main files, then the FASTA files beside its GFF3 files."""
    main = [check_input_path(f, spec.kind) for f in spec.files]
    return main + [check_input_path(f, "fasta") for f in spec.companions if f is not None]


def _records(source: InputFile, default_table: int, stats: ExtractionStats) -> Iterable:
    """gb-io records of a FASTA (genes called, provenance in stats.gene_calls) or a GFF3 + FASTA."""
    if source.kind == "gff":
        from codonlm.data.gff import gff_records

        return gff_records(source.path, source.fasta)
    from codonlm.data.assembly import call_genes

    records, provenance = call_genes(source.path, source.gene_calling, default_table, stats.warnings,
                                     source.gene_calls)
    stats.gene_calls.append(provenance)
    return records


def extract_input_records(source: InputFile, min_len: int = 1, default_table: int = 11,
                          stats: ExtractionStats | None = None) -> Iterator[RecordCDS]:
    """Stream the kept CDS of one input file, one RecordCDS per record (contig)."""
    stats = stats if stats is not None else ExtractionStats()
    if source.kind == "gbff":
        yield from extract_file_records(source.path, min_len, default_table, stats)
        return
    kept_before = stats.kept
    for record in _records(source, default_table, stats):
        yield extract_record_cds(record, min_len, default_table, stats, source.path)
    if source.kind == "fasta":
        stats.gene_calls[-1]["kept"] = stats.kept - kept_before


def cli_input_files(genbank: list[str], fasta: list[str], gff: list[str], gene_calling: str) -> list[InputFile]:
    """The input files of a command line (GenBank paths, --fasta, --gff), checked as a config dataset's are."""
    from codonlm.config import validate

    sources = [InputFile("gbff", str(check_input_path(f, "gbff"))) for f in genbank]
    if fasta or gff:
        entry = {"name": "command_line", "fasta": fasta or None, "gff": gff or None, "gene_calling": gene_calling}
        spec = validate(DatasetSpec, entry, "--fasta/--gff")
        dataset_paths(spec)
        sources += dataset_input_files(spec)
    if not sources:
        raise UserError("no input: give GenBank files, --fasta FILE (genes called), or --gff FILE [--fasta FILE]")
    return sources
