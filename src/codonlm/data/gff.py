"""FASTA + GFF3 in: the CDS features of a GFF3 (NCBI, Prokka, Bakta) as gb-io records.

Lines are parsed by gffutils (column checks, percent-decoding of attributes); the CDS lines that
share an ID are joined into one feature (multi-exon and origin-spanning CDS), and the attributes the
GenBank extraction reads become qualifiers: locus_tag (from the parent gene when the CDS has none),
protein_id, gene, transl_table, transl_except, pseudo, codon_start (from the phase), and partial ends
(start_range/end_range, partial=true). codonlm.data.genbank then extracts them as it does GenBank
features, so the same genome given both ways yields the same CDS.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import gb_io
from gffutils.iterators import DataIterator

from codonlm.data.assembly import Contig, checked_contigs, read_contigs
from codonlm.errors import UserError
from codonlm.io import read_fasta_text, read_text

FASTA_DIRECTIVE = "##FASTA"
_COPIED = ("locus_tag", "protein_id", "gene", "transl_table")
_TRUE = ("true", "yes", "1")


@dataclass
class _GffCDS:
    """The lines of one CDS (those sharing an ID), in file order."""

    seqid: str
    name: str
    strand: str
    attributes: dict[str, list[str]]
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # 0-based start, end, phase


def split_embedded_fasta(text: str) -> tuple[str, str | None]:
    """The annotation lines of a GFF3 text, and the FASTA after its ##FASTA line (None when it has none)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.strip() == FASTA_DIRECTIVE:
            return "\n".join(lines[:i]) + "\n", "\n".join(lines[i + 1 :])
    return text, None


def _gff_lines(annotation: str, path: str) -> list:
    """gffutils Features of the annotation text; a line gffutils cannot read is a one-line UserError."""
    if not annotation.strip():
        return []
    try:
        return list(DataIterator(annotation, from_string=True))
    except Exception as exc:  # gffutils raises bare ValueError/IndexError/AttributeError for malformed lines
        raise UserError(f"{path}: not a valid GFF3 file ({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__}); "
                        "give a GFF3 (9 tab-separated columns)") from None


def _cds_of(lines: list, path: str) -> tuple[list[_GffCDS], set[str]]:
    """The CDS (lines grouped by seqid and ID, locus_tag/pseudo inherited from the parent gene), and the
    seqids a region line marks as circular."""
    parents: dict[str, dict[str, list[str]]] = {}
    circular: set[str] = set()
    grouped: dict[tuple[str, str], _GffCDS] = {}
    for number, line in enumerate(lines, 1):
        attrs = dict(line.attributes)
        if line.featuretype == "region" and attrs.get("Is_circular", [""])[0].lower() in _TRUE:
            circular.add(line.seqid)
        if line.featuretype != "CDS":
            if "ID" in attrs:
                parents[attrs["ID"][0]] = attrs
            continue
        if line.start is None or line.end is None or line.start < 1 or line.end < line.start:
            raise UserError(f"{path}: CDS line {number} spans {line.start}..{line.end}, not a range; fix the feature")
        name = attrs.get("ID", [f"line{number}"])[0]
        cds = grouped.get((line.seqid, name))
        if cds is None:
            parent = parents.get(attrs.get("Parent", [""])[0], {})
            inherited = {k: v for k, v in parent.items() if k in ("locus_tag", "gene", "pseudo", "pseudogene")}
            cds = grouped[(line.seqid, name)] = _GffCDS(line.seqid, name, line.strand, {**inherited, **attrs})
        cds.spans.append((line.start - 1, line.end, line.frame))
    return list(grouped.values()), circular


def _location(cds: _GffCDS, length: int, circular: bool):
    """The gb-io location of a CDS: its spans in genome order (rotated when it runs across the origin of a
    circular sequence), partial ends marked, complemented on the minus strand."""
    spans = sorted(cds.spans)
    if circular and len(spans) > 1 and spans[0][0] == 0 and spans[-1][1] == length:
        gaps = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
        cut = gaps.index(max(gaps)) + 1  # the origin lies in the widest gap on the other side
        spans = spans[cut:] + spans[:cut]
    attrs = cds.attributes
    partial = attrs.get("partial", [""])[0].lower() in _TRUE
    left = "start_range" in attrs or (partial and "end_range" not in attrs)
    right = "end_range" in attrs
    ranges = [gb_io.Range(a, b, before=left and i == 0, after=right and i == len(spans) - 1)
              for i, (a, b, _) in enumerate(spans)]
    location = ranges[0] if len(ranges) == 1 else gb_io.Join(ranges)
    phase = spans[0][2] if cds.strand != "-" else spans[-1][2]  # the 5'-most line's phase
    return (location if cds.strand != "-" else gb_io.Complement(location)), phase


def _feature(cds: _GffCDS, length: int, circular: bool) -> gb_io.Feature:
    location, phase = _location(cds, length, circular)
    attrs = cds.attributes
    quals = [gb_io.Qualifier(key, attrs[key][0]) for key in _COPIED if key in attrs]
    if not any(key in attrs for key in ("locus_tag", "protein_id", "gene")):
        quals.append(gb_io.Qualifier("locus_tag", cds.name))
    if "transl_except" in attrs:
        quals.append(gb_io.Qualifier("transl_except", ",".join(attrs["transl_except"])))
    if attrs.get("pseudo", [""])[0].lower() in _TRUE or "pseudogene" in attrs:
        quals.append(gb_io.Qualifier("pseudo"))
    if phase in ("0", "1", "2"):
        quals.append(gb_io.Qualifier("codon_start", str(int(phase) + 1)))
    return gb_io.Feature(kind="CDS", location=location, qualifiers=quals)


def _sequences(path: str, fasta: str | None, embedded: str | None) -> tuple[list[Contig], str]:
    """The contigs the GFF3 annotates (the FASTA file beside it, else the one after ##FASTA) and their source."""
    if fasta is not None:
        return read_contigs(fasta), fasta
    if embedded is None:
        raise UserError(f"{path}: no sequence: the GFF3 has no {FASTA_DIRECTIVE} section; give the genome's "
                        "FASTA as fasta: beside gff:")
    return checked_contigs(read_fasta_text(embedded, path), path), path


def gff_records(path: str, fasta: str | None) -> list[gb_io.Record]:
    """One gb-io record per sequence, in FASTA order, with the GFF3's CDS as features; a CDS on a sequence
    the FASTA lacks, or running past its end, is a one-line UserError."""
    annotation, embedded = split_embedded_fasta(read_text(path, "GFF3 file"))
    contigs, source = _sequences(path, fasta, embedded)
    lengths = {c.name: len(c.seq) for c in contigs}
    cds_list, circular = _cds_of(_gff_lines(annotation, path), path)
    if not cds_list:
        raise UserError(f"{path}: no CDS lines (column 3 'CDS'); is this a GFF3 file? give the genome's GFF3 "
                        "annotation, or its FASTA alone (fasta:) to call its genes")
    features: dict[str, list[gb_io.Feature]] = defaultdict(list)
    for cds in cds_list:
        if cds.seqid not in lengths:
            raise UserError(f"{path}: CDS {cds.name} is on sequence '{cds.seqid}', which {source} does not have "
                            f"(it has {', '.join(list(lengths)[:3])}{' ...' if len(lengths) > 3 else ''}); "
                            "give the FASTA the GFF3 was made from")
        end = max(b for _, b, _ in cds.spans)
        if end > lengths[cds.seqid]:
            raise UserError(f"{path}: CDS {cds.name} ends at {end}, past the end of {cds.seqid} "
                            f"({lengths[cds.seqid]} bp in {source}); fix the feature or give the matching FASTA")
        features[cds.seqid].append(_feature(cds, lengths[cds.seqid], cds.seqid in circular))
    return [gb_io.Record(c.seq, name=c.name, circular=c.name in circular, features=features[c.name])
            for c in contigs]
