"""GenBank -> CDS: read records with gb-io and extract protein-coding genes as codon token ids.

Every CDS feature ends in exactly one place: kept, or dropped under a named reason
(`DROP_REASONS`), so nothing is lost silently.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gb_io
import numpy as np
from Bio.SeqUtils import seq1

from codonlm.data.codons import codon_ids, genetic_code, reverse_complement
from codonlm.errors import UserError

GENBANK_SUFFIXES = (".gb", ".gbk", ".gbff", ".genbank")

DROP_REASONS = (
    "pseudo",  # /pseudo or /pseudogene
    "partial",  # < or > on the 5' or 3' end
    "unsupported_location",  # external reference, between-base, bond, one-of
    "location_out_of_bounds",
    "bad_codon_start",
    "length_not_multiple_of_3",
    "ambiguous_bases",  # IUPAC codes other than A/C/G/T
    "no_stop_codon",
    "internal_stop",
    "unknown_transl_table",
    "too_short",  # fewer than min_len sense codons
)

_TRANSL_EXCEPT = re.compile(r"pos:\s*(complement\()?\s*<?(\d+)\s*(?:\.\.\s*>?(\d+))?\)?\s*,\s*aa:\s*([A-Za-z]+)")


@dataclass(frozen=True)
class Segment:
    start: int  # 0-based, inclusive
    end: int  # 0-based, exclusive
    strand: int  # +1 or -1
    partial_5: bool
    partial_3: bool


@dataclass
class CDS:
    record_id: str
    name: str  # locus_tag, else protein_id, else gene, else feature number
    location: str  # 1-based, GenBank-like, in transcription order
    strand: int
    ids: np.ndarray  # codon token ids, stop codon included
    transl_table: int
    aa_exceptions: tuple[tuple[int, str], ...] = ()  # (codon index, amino acid) from /transl_except
    translation: str | None = None  # the /translation qualifier, if any

    @property
    def protein(self) -> str:
        """Translation without the terminal stop (as in /translation)."""
        return genetic_code(self.transl_table).translate(self.ids, self.aa_exceptions)[:-1]

    def dna(self) -> str:
        from codonlm.data.codons import ITOS

        return "".join(ITOS[i] for i in self.ids)


@dataclass
class ExtractionStats:
    records: int = 0
    records_without_sequence: int = 0
    cds_features: int = 0
    kept: int = 0
    kept_codons: int = 0
    noncanonical_start: int = 0  # kept, but first codon is not a start codon of the table
    dropped: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def merge(self, other: ExtractionStats) -> None:
        for name in ("records", "records_without_sequence", "cds_features", "kept", "kept_codons", "noncanonical_start"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dropped.update(other.dropped)
        self.warnings.extend(other.warnings)

    def as_dict(self) -> dict:
        return {
            "records": self.records,
            "records_without_sequence": self.records_without_sequence,
            "cds_features": self.cds_features,
            "kept": self.kept,
            "kept_codons": self.kept_codons,
            "noncanonical_start": self.noncanonical_start,
            "dropped": {r: int(self.dropped.get(r, 0)) for r in DROP_REASONS},
            "dropped_total": int(sum(self.dropped.values())),
        }


class MalformedLocation(Exception):
    pass


def _segments(loc, strand: int = 1) -> list[Segment]:
    """Flatten a gb-io location into segments in transcription order."""
    if isinstance(loc, gb_io.Range):
        if strand == 1:
            return [Segment(loc.start, loc.end, 1, loc.before, loc.after)]
        return [Segment(loc.start, loc.end, -1, loc.after, loc.before)]
    if isinstance(loc, gb_io.Complement):
        return _segments(loc.location, -strand)
    if isinstance(loc, gb_io.Join | gb_io.Order):
        parts = [s for sub in loc.locations for s in _segments(sub, strand)]
        return parts if strand == 1 else parts[::-1]
    if isinstance(loc, gb_io.External) and loc.location is None:
        # gb-io keeps location text it cannot parse as External(text) with no inner location
        raise MalformedLocation(loc.accession)
    raise NotImplementedError(type(loc).__name__)


def _format_location(segs: list[Segment]) -> str:
    parts = [f"{s.start + 1}..{s.end}" for s in segs]
    body = parts[0] if len(parts) == 1 else f"join({','.join(parts)})"
    return body


def _qualifiers(feature) -> dict[str, list[str | None]]:
    out: dict[str, list[str | None]] = {}
    for q in feature.qualifiers:
        out.setdefault(q.key, []).append(q.value)
    return out


def _genome_to_cds_offset(segs: list[Segment], pos0: int) -> int | None:
    """Offset (nt) within the spliced CDS of 0-based genome position pos0, or None."""
    offset = 0
    for s in segs:
        if s.start <= pos0 < s.end:
            return offset + (pos0 - s.start if s.strand == 1 else s.end - 1 - pos0)
        offset += s.end - s.start
    return None


def _exception_codons(values: list, segs: list[Segment], trim: int) -> tuple[tuple[int, str], ...]:
    """(codon index, one-letter amino acid) for each /transl_except (Sec -> U, Pyl -> O, TERM -> *)."""
    found = []
    for v in values:
        m = _TRANSL_EXCEPT.search(v or "")
        if not m:
            continue
        first = int(m.group(2)) - 1
        last = int(m.group(3) or m.group(2)) - 1
        five_prime = last if m.group(1) else first
        off = _genome_to_cds_offset(segs, five_prime)
        if off is None or off < trim:
            continue
        aa = m.group(4)
        special = {"TERM": "*", "OTHER": "X"}
        letter = special.get(aa.upper()) or (seq1(aa, undef_code="X") if len(aa) == 3 else aa.upper()[:1])
        found.append(((off - trim) // 3, letter))
    return tuple(found)


def extract_record(record, min_len: int, default_table: int, stats: ExtractionStats, source: str) -> Iterator[CDS]:
    """Yield kept CDS of one gb-io record; count every drop in stats."""
    stats.records += 1
    seq = bytes(record.sequence)
    cds_features = [f for f in record.features if f.kind == "CDS"]
    if not seq:
        if cds_features:
            stats.records_without_sequence += 1
            stats.warnings.append(
                f"{source}: record {record.name} has {len(cds_features)} CDS features but no sequence "
                "(a CON/contig record?); skipped"
            )
        return
    n = len(seq)
    for number, feat in enumerate(cds_features, 1):
        stats.cds_features += 1
        quals = _qualifiers(feat)
        if "pseudo" in quals or "pseudogene" in quals:
            stats.dropped["pseudo"] += 1
            continue
        try:
            segs = _segments(feat.location)
        except MalformedLocation as exc:
            raise UserError(
                f"{source}: record {record.name}, CDS #{number}: malformed location '{exc}'; "
                "fix the feature or remove it from the file"
            ) from None
        except NotImplementedError:
            stats.dropped["unsupported_location"] += 1
            continue
        if segs[0].partial_5 or segs[-1].partial_3:
            stats.dropped["partial"] += 1
            continue
        pieces = []
        bad_bounds = False
        for s in segs:
            if s.start > s.end and record.circular and s.start < n:
                piece = seq[s.start :] + seq[: s.end]  # origin-spanning range written as one interval
            elif 0 <= s.start <= s.end <= n:
                piece = seq[s.start : s.end]
            else:
                bad_bounds = True
                break
            pieces.append(piece if s.strand == 1 else reverse_complement(piece))
        if bad_bounds:
            if any(s.start > s.end for s in segs) and not record.circular:
                raise UserError(
                    f"{source}: record {record.name}, CDS #{number}: location {_format_location(segs)} "
                    "ends before it starts on a linear record; fix the feature"
                )
            stats.dropped["location_out_of_bounds"] += 1
            continue
        dna = b"".join(pieces)
        codon_start = quals.get("codon_start", ["1"])[0] or "1"
        if codon_start not in ("1", "2", "3"):
            stats.dropped["bad_codon_start"] += 1
            continue
        trim = int(codon_start) - 1
        dna = dna[trim:]
        if len(dna) % 3:
            stats.dropped["length_not_multiple_of_3"] += 1
            continue
        ids = codon_ids(dna)
        if ids is None:
            stats.dropped["ambiguous_bases"] += 1
            continue
        table_txt = quals.get("transl_table", [None])[0]
        try:
            table_id = int(table_txt) if table_txt else default_table
            code = genetic_code(table_id)
        except ValueError:
            stats.dropped["unknown_transl_table"] += 1
            continue
        if ids.size == 0 or not code.is_stop[ids[-1]]:
            stats.dropped["no_stop_codon"] += 1
            continue
        aa_exceptions = _exception_codons(quals.get("transl_except", []), segs, trim)
        stops = np.flatnonzero(code.is_stop[ids[:-1]])
        if stops.size and not set(stops.tolist()) <= {i for i, aa in aa_exceptions if aa != "*"}:
            stats.dropped["internal_stop"] += 1
            continue
        if ids.size - 1 < min_len:
            stats.dropped["too_short"] += 1
            continue
        if not code.is_start[ids[0]]:
            stats.noncanonical_start += 1
        name = next(
            (quals[k][0] for k in ("locus_tag", "protein_id", "gene") if quals.get(k) and quals[k][0]),
            f"cds{number}",
        )
        stats.kept += 1
        stats.kept_codons += int(ids.size)
        translation = quals.get("translation", [None])[0]
        yield CDS(
            record_id=record.name,
            name=name,
            location=_format_location(segs),
            strand=segs[0].strand,
            ids=ids,
            transl_table=table_id,
            aa_exceptions=aa_exceptions,
            translation=translation.replace(" ", "") if translation else None,
        )


def _open_binary(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def check_genbank_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"GenBank file not found: {path}; check data.datasets[].gbff in the config or run 'codonlm fetch-data'"
        )
    if not path.is_file():
        raise UserError(f"not a file: {path}; data.datasets[].gbff must name GenBank files (.gb/.gbk/.gbff[.gz])")
    if path.stat().st_size == 0:
        raise UserError(f"GenBank file is empty: {path}; re-download it or remove it from the config")
    return path


def iter_records(path: str | Path) -> Iterator:
    """Stream gb-io records from a plain or gzipped file, turning parser failures into one-line errors."""
    path = check_genbank_path(path)
    fh = _open_binary(path)
    try:
        yield from gb_io.iter(fh)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        raise UserError(f"{path}: truncated or corrupt gzip ({exc}); re-download the file") from None
    except (RuntimeError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:120]
        raise UserError(
            f"{path}: not a valid GenBank file ({detail}); check the format (.gb/.gbk/.gbff) or re-download it"
        ) from None
    finally:
        fh.close()


def extract_file(
    path: str | Path, min_len: int = 1, default_table: int = 11, stats: ExtractionStats | None = None
) -> Iterator[CDS]:
    """Stream the kept CDS of every record in a GenBank file."""
    stats = stats if stats is not None else ExtractionStats()
    n_records = 0
    for record in iter_records(path):
        n_records += 1
        yield from extract_record(record, min_len, default_table, stats, str(path))
    if n_records == 0:
        raise UserError(f"{path}: no GenBank records found (no LOCUS line); is this a GenBank file?")
