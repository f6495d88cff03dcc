"""GenBank -> CDS: read records with gb-io and extract protein-coding genes as codon token ids.

Every CDS feature ends in exactly one place: kept, or dropped under a named reason
(`DROP_REASONS`), so nothing is lost silently.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import NamedTuple

import gb_io
import numpy as np
from Bio.SeqUtils import seq1

from codonlm.data.codons import NOT_A_CODON, VOCAB_SIZE, genetic_code, in_frame_codon_ids, reverse_complement
from codonlm.errors import UserError
from codonlm.io import open_binary

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


class Segment(NamedTuple):  # a NamedTuple: one is built per CDS, and dataclass construction costs more
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
    gene_calls: list[dict] = field(default_factory=list)  # provenance of each genome whose genes were called

    def merge(self, other: ExtractionStats) -> None:
        for name in ("records", "records_without_sequence", "cds_features", "kept", "kept_codons", "noncanonical_start"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dropped.update(other.dropped)
        self.warnings.extend(other.warnings)
        self.gene_calls.extend(other.gene_calls)

    def as_dict(self) -> dict:
        called = {"gene_calling": self.gene_calls} if self.gene_calls else {}
        return {
            "records": self.records,
            "records_without_sequence": self.records_without_sequence,
            "cds_features": self.cds_features,
            "kept": self.kept,
            "kept_codons": self.kept_codons,
            "noncanonical_start": self.noncanonical_start,
            "dropped": {r: int(self.dropped.get(r, 0)) for r in DROP_REASONS},
            "dropped_total": int(sum(self.dropped.values())),
            **called,
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


_USED_QUALIFIERS = frozenset(
    ("pseudo", "pseudogene", "codon_start", "transl_table", "transl_except", "locus_tag", "protein_id", "gene",
     "translation")
)


def _used_qualifiers(feature) -> dict[str, list[gb_io.Qualifier]]:
    """The gb-io Qualifier objects of the keys extraction reads, by key, in file order.

    Values are read on use (_first): gb-io builds a new str at every .value, and most values
    (/translation, say) are never needed on the way to codon ids.
    """
    out: dict[str, list[gb_io.Qualifier]] = {}
    for q in feature.qualifiers:
        key = q.key
        if key in _USED_QUALIFIERS:
            if key in out:
                out[key].append(q)
            else:
                out[key] = [q]
    return out


def _first(quals: dict[str, list[gb_io.Qualifier]], key: str, default: str | None = None) -> str | None:
    """The value of the first `key` qualifier, or default when there is none."""
    found = quals.get(key)
    return found[0].value if found else default


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


@dataclass
class RecordCDS:
    """The kept CDS of one record with their codon ids laid end to end: what prepare streams."""

    record_id: str
    ids: np.ndarray  # uint8: codon ids of every kept CDS, concatenated (stop codons included)
    offsets: list[int]  # CDS i is ids[offsets[i]:offsets[i + 1]]
    names: list[str]
    segments: list[list[Segment]]
    transl_tables: list[int]
    aa_exceptions: list[tuple[tuple[int, str], ...]]
    translations: list[gb_io.Qualifier | None]  # the /translation of each CDS, read when cds() is called

    def __len__(self) -> int:
        return len(self.names)

    def gene(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def cds(self, i: int) -> CDS:
        segs = self.segments[i]
        translation = self.translations[i].value if self.translations[i] is not None else None
        return CDS(
            record_id=self.record_id,
            name=self.names[i],
            location=_format_location(segs),
            strand=segs[0].strand,
            ids=self.gene(i),
            transl_table=self.transl_tables[i],
            aa_exceptions=self.aa_exceptions[i],
            translation=translation.replace(" ", "") if translation else None,
        )

    def proteins(self) -> list[str]:
        """CDS.protein of every CDS, translated in one numpy pass when the record uses one genetic code."""
        if len(set(self.transl_tables)) != 1:
            return [self.cds(i).protein for i in range(len(self))]  # none, or mixed genetic codes
        code = genetic_code(self.transl_tables[0])
        aa = code.aa[self.ids]
        starts = np.array(self.offsets[:-1])
        aa[starts[code.is_start[self.ids[starts]]]] = ord("M")  # initiator, as GeneticCode.translate
        for i, exceptions in enumerate(self.aa_exceptions):
            for index, letter in exceptions:
                if 0 <= index < self.offsets[i + 1] - self.offsets[i]:
                    aa[self.offsets[i] + index] = ord(letter)
        text = aa.tobytes().decode("ascii")
        return [text[a : b - 1] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


class _Candidate(NamedTuple):
    """A CDS that passed the annotation checks; the sequence checks (_screen) decide whether it is kept."""

    name: str
    segs: list[Segment]
    table_id: int | None  # None: unknown /transl_table
    aa_exceptions: tuple[tuple[int, str], ...]
    translation: gb_io.Qualifier | None
    codons: int  # how many, stop included (its in-frame DNA is 3 times as long)


def _spliced_dna(seq: bytes, segs: list[Segment], record, number: int, source: str) -> bytes | None:
    """The CDS sequence in transcription order, or None when a segment lies outside the record."""
    n = len(seq)
    pieces = []
    for s in segs:
        if s.start > s.end and record.circular and s.start < n:
            piece = seq[s.start :] + seq[: s.end]  # origin-spanning range written as one interval
        elif 0 <= s.start <= s.end <= n:
            piece = seq[s.start : s.end]
        else:
            if any(x.start > x.end for x in segs) and not record.circular:
                raise UserError(
                    f"{source}: record {record.name}, CDS #{number}: location {_format_location(segs)} "
                    "ends before it starts on a linear record; fix the feature"
                )
            return None
        pieces.append(piece if s.strand == 1 else reverse_complement(piece))
    return b"".join(pieces)


@cache
def _table_id(table_txt: str | None, default_table: int) -> int | None:
    """The genetic code to translate with, or None when /transl_table is not a known NCBI table."""
    try:
        table_id = int(table_txt) if table_txt else default_table
        genetic_code(table_id)
    except ValueError:
        return None
    return table_id


@cache
def _stop_lookup(table_id: int) -> np.ndarray:
    """is_stop over every byte value, so that codon ids holding NOT_A_CODON can index it."""
    lookup = np.zeros(256, dtype=bool)
    lookup[:VOCAB_SIZE] = genetic_code(table_id).is_stop
    return lookup


def _screen(candidates: list[_Candidate], ids: np.ndarray, lengths: np.ndarray, min_len: int) -> list[str | None]:
    """Drop reason (None: kept) of each candidate, from its codons: one numpy pass per genetic code.

    ids: the candidates' codon ids laid end to end, lengths: how many each. A candidate fails
    the first of: ambiguous_bases, unknown_transl_table, no_stop_codon, internal_stop (unless
    /transl_except reads every one through), too_short.
    """
    reasons: list[str | None] = [None] * len(candidates)
    tables = [c.table_id for c in candidates]
    distinct = list(dict.fromkeys(tables))  # usually one
    for table_id in distinct:
        if len(distinct) == 1:
            members, group_ids, group_lengths = list(range(len(candidates))), ids, lengths
        else:
            in_group = np.array([t == table_id for t in tables])
            members = np.flatnonzero(in_group).tolist()
            group_ids, group_lengths = ids[np.repeat(in_group, lengths)], lengths[in_group]
        for j, reason in _screen_one_code(group_ids, group_lengths, table_id, min_len, candidates, members):
            reasons[members[j]] = reason
    return reasons


def _screen_one_code(ids: np.ndarray, lengths: np.ndarray, table_id: int | None, min_len: int,
                     candidates: list[_Candidate], members: list[int]) -> Iterator[tuple[int, str | None]]:
    """(index into members, reason) for the failing members of one genetic code; see _screen."""
    ends = np.cumsum(lengths)
    last = ends[lengths > 0] - 1  # last codon of each CDS that has codons
    ambiguous = np.zeros(len(lengths), dtype=bool)
    ambiguous[_owners(ends, np.flatnonzero(ids == NOT_A_CODON))] = True
    ends_with_stop = np.zeros(len(lengths), dtype=bool)
    internal = np.zeros(len(lengths), dtype=bool)
    internal_stops = np.empty(0, dtype=np.int64)
    if table_id is not None:
        is_stop = _stop_lookup(table_id)[ids]
        ends_with_stop[lengths > 0] = is_stop[last]
        is_stop[last] = False  # what is left: internal stops
        internal_stops = np.flatnonzero(is_stop)
        internal[_owners(ends, internal_stops)] = True
    ok = ~ambiguous & ends_with_stop & ~internal & (lengths - 1 >= min_len)
    for j in np.flatnonzero(~ok).tolist():  # few: spell out why
        if ambiguous[j]:
            yield j, "ambiguous_bases"
        elif table_id is None:
            yield j, "unknown_transl_table"
        elif not ends_with_stop[j]:
            yield j, "no_stop_codon"
        elif internal[j] and not set(
            (internal_stops[_owners(ends, internal_stops) == j] - (ends[j] - lengths[j])).tolist()
        ) <= {k for k, aa in candidates[members[j]].aa_exceptions if aa != "*"}:
            yield j, "internal_stop"
        elif lengths[j] - 1 < min_len:
            yield j, "too_short"
        else:
            yield j, None  # every internal stop is read through (/transl_except: Sec, Pyl)


def _owners(ends: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For positions in concatenated codon ids, the index of the CDS holding each (ends: running lengths)."""
    return np.searchsorted(ends, positions, side="right")


def cds_name(quals: dict[str, list[gb_io.Qualifier]], number: int) -> str:
    """A CDS's name in prepared data (record_id|name): locus_tag, else protein_id, else gene, else cds<number>."""
    return _first(quals, "locus_tag") or _first(quals, "protein_id") or _first(quals, "gene") or f"cds{number}"


def cds_products(path: str | Path) -> dict[str, str]:
    """'record_id|name' (as prepared data names genes) -> /product of every CDS feature that has one."""
    wanted = ("locus_tag", "protein_id", "gene", "product")
    products: dict[str, str] = {}
    for record in iter_records(path):
        for number, feat in enumerate((f for f in record.features if f.kind == "CDS"), 1):
            quals: dict[str, list[gb_io.Qualifier]] = {}
            for q in feat.qualifiers:
                if q.key in wanted:
                    quals.setdefault(q.key, []).append(q)
            if "product" in quals:
                products[f"{record.name}|{cds_name(quals, number)}"] = str(_first(quals, "product"))
    return products


def extract_record_cds(record, min_len: int, default_table: int, stats: ExtractionStats, source: str) -> RecordCDS:
    """The kept CDS of one gb-io record as one RecordCDS; counts every drop in stats.

    Per feature, only the annotation is read in Python and the CDS's in-frame DNA sliced out (reverse
    complemented on the minus strand); the codon ids of all of them are computed in one pass, and the
    sequence checks run once per record (_screen).
    """
    stats.records += 1
    seq = bytes(record.sequence)
    cds_features = [f for f in record.features if f.kind == "CDS"]
    candidates: list[_Candidate] = []
    coding: list[bytes] = []  # each candidate's in-frame DNA, in transcription order
    if not seq:
        if cds_features:
            stats.records_without_sequence += 1
            stats.warnings.append(
                f"{source}: record {record.name} has {len(cds_features)} CDS features but no sequence "
                "(a CON/contig record?); skipped"
            )
        return _keep(record.name, candidates, coding, min_len, stats)
    n = len(seq)
    for number, feat in enumerate(cds_features, 1):
        stats.cds_features += 1
        quals = _used_qualifiers(feat)
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
        start, end, strand = segs[0].start, segs[0].end, segs[0].strand
        simple = len(segs) == 1 and 0 <= start <= end <= n  # one interval inside the record: sliced from it
        dna = None if simple else _spliced_dna(seq, segs, record, number, source)
        if not simple and dna is None:
            stats.dropped["location_out_of_bounds"] += 1
            continue
        codon_start = _first(quals, "codon_start", "1") or "1"
        if codon_start not in ("1", "2", "3"):
            stats.dropped["bad_codon_start"] += 1
            continue
        trim = int(codon_start) - 1
        length = max(0, (end - start if simple else len(dna)) - trim)
        if length % 3:
            stats.dropped["length_not_multiple_of_3"] += 1
            continue
        if not simple:
            coding.append(dna[trim:])
        elif strand == 1:
            coding.append(seq[start + trim : start + trim + length])
        else:  # the trimmed bases sit at the end of the interval: the 5' end on this strand
            coding.append(reverse_complement(seq[start : start + length]))
        name = cds_name(quals, number)
        transl_except = [q.value for q in quals.get("transl_except", ())]
        candidates.append(
            _Candidate(
                name,
                segs,
                _table_id(_first(quals, "transl_table"), default_table),
                _exception_codons(transl_except, segs, trim) if transl_except else (),
                quals["translation"][0] if "translation" in quals else None,
                length // 3,
            )
        )
    return _keep(record.name, candidates, coding, min_len, stats)


def _keep(record_id: str, candidates: list[_Candidate], coding: list[bytes], min_len: int,
          stats: ExtractionStats) -> RecordCDS:
    """Screen the candidates of one record and lay the kept ones out as a RecordCDS."""
    ids = in_frame_codon_ids(b"".join(coding))
    lengths = np.array([c.codons for c in candidates], dtype=np.int64)
    reasons = _screen(candidates, ids, lengths, min_len)
    kept = [c for c, reason in zip(candidates, reasons, strict=True) if reason is None]
    if len(kept) < len(candidates):
        stats.dropped.update(reason for reason in reasons if reason is not None)
        ids = ids[np.repeat(np.array([reason is None for reason in reasons]), lengths)]
    stats.kept += len(kept)
    stats.kept_codons += ids.size
    batch = RecordCDS(
        record_id=record_id,
        ids=ids,
        offsets=[0, *itertools.accumulate(c.codons for c in kept)],
        names=[c.name for c in kept],
        segments=[c.segs for c in kept],
        transl_tables=[c.table_id for c in kept],
        aa_exceptions=[c.aa_exceptions for c in kept],
        translations=[c.translation for c in kept],
    )
    first_codons = ids[batch.offsets[:-1]]
    for table_id in set(batch.transl_tables):  # usually one
        in_table = [t == table_id for t in batch.transl_tables]
        stats.noncanonical_start += int((~genetic_code(table_id).is_start[first_codons[in_table]]).sum())
    return batch


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
    try:
        with open_binary(path) as fh:  # a corrupt gzip: a UserError from open_binary
            yield from gb_io.iter(fh)
    except (RuntimeError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:120]
        raise UserError(
            f"{path}: not a valid GenBank file ({detail}); check the format (.gb/.gbk/.gbff) or re-download it"
        ) from None


def extract_file_records(
    path: str | Path, min_len: int = 1, default_table: int = 11, stats: ExtractionStats | None = None
) -> Iterator[RecordCDS]:
    """Stream the kept CDS of a GenBank file, one RecordCDS per record."""
    stats = stats if stats is not None else ExtractionStats()
    n_records = 0
    for record in iter_records(path):
        n_records += 1
        yield extract_record_cds(record, min_len, default_table, stats, str(path))
    if n_records == 0:
        raise UserError(f"{path}: no GenBank records found (no LOCUS line); is this a GenBank file?")


def extract_file(
    path: str | Path, min_len: int = 1, default_table: int = 11, stats: ExtractionStats | None = None
) -> Iterator[CDS]:
    """Stream the kept CDS of every record in a GenBank file."""
    for batch in extract_file_records(path, min_len, default_table, stats):
        for i in range(len(batch)):
            yield batch.cds(i)
