"""A user's genes, however they come: a FASTA file, a table (CSV, or TSV by its name or its header line)
with an id and a sequence column, a DNA string, or stdin. The one reader of every command that reads a
user's sequences (eval-perplexity, query, extract-embeddings, train-regressor, the classifier inputs), so a
table and the same records as FASTA give the same numbers.

Checked before anything is computed or written, each a one-line UserError naming the file (and its row or
record): a missing file, an empty one, a table without the sequence column (its columns listed), an empty
id, a repeated id (unless `dedupe: first`, which keeps the first record and counts the rest), a record that
is not DNA (`codons.clean_sequences`: RNA and lower case are accepted; `skip_invalid` skips and counts).
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from codonlm.data.codons import clean_sequences
from codonlm.errors import UserError
from codonlm.io import fasta_body, read_fasta_text, read_text
from codonlm.log import warn

if TYPE_CHECKING:
    import pandas as pd

DEDUPE = ("error", "first")  # what a repeated id does to sequences; a regression target can also be averaged
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")


@dataclass
class UserRecords:
    """Clean records of one input: ids, DNA (upper case, T), where they came from, how many were skipped."""

    ids: list[str]
    seqs: list[str]
    source: str
    skipped: int = 0  # records dropped by skip_invalid

    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.ids, self.seqs, strict=True))


def is_table(path: str | Path) -> bool:
    """Whether a sequence file is a table (by its name: .csv, .tsv, .tab, .txt, gzipped or not), else FASTA."""
    name = Path(path).name.lower().removesuffix(".gz")
    return name.endswith(TABLE_SUFFIXES)


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A CSV or TSV (tab-separated when the name ends .tsv/.tab or the header line has tabs and no commas),
    plain or gzipped, as strings (no NA guessing: a gene called 'NA' stays 'NA')."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}; check the path")
    text = read_text(path, what)
    header = text.split("\n", 1)[0]
    tabs = Path(path.name.lower().removesuffix(".gz")).suffix in (".tsv", ".tab") or ("\t" in header
                                                                                    and "," not in header)
    try:
        table = pd.read_csv(_io.StringIO(text), dtype=str, keep_default_na=False, sep="\t" if tabs else ",")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0][:100]}); fix the file") from None
    if table.empty:
        raise UserError(f"{path}: no rows; the {what} needs at least one row")
    return table


def table_ids(table: pd.DataFrame, path: str | Path, id_column: str = "id") -> list[str] | None:
    """The id column (unique, non-empty), or None when the table has none (rows then match by order)."""
    if id_column not in table.columns:
        return None
    ids = row_ids(table, path, id_column)
    keep_first(ids, "error", str(path), table_rows=True)
    return ids


def row_ids(table: pd.DataFrame, path: str | Path, id_column: str = "id") -> list[str]:
    """Each row's id (none empty; repeats allowed), or row1, row2, ... when the table has no id column."""
    if id_column not in table.columns:
        return [f"row{i + 1}" for i in range(len(table))]
    ids = table[id_column].tolist()
    empty = next((i for i, v in enumerate(ids) if not v), None)
    if empty is not None:
        raise UserError(f"{path}: row {empty + 2} has an empty '{id_column}'; give every row an id")
    return ids


def first_duplicate(values: list[str]) -> str | None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def keep_first(ids: list[str], dedupe: str, source: str, table_rows: bool) -> np.ndarray:
    """Indices of the records to keep under `dedupe`: error refuses a repeated id in one line naming both of
    its rows (records); first keeps each id's first record and warns how many it dropped."""
    first_at: dict[str, int] = {}
    keep = []
    for i, name in enumerate(ids):
        if name not in first_at:
            first_at[name] = i
            keep.append(i)
        elif dedupe == "error":
            where = (lambda r: f"row {r + 2}") if table_rows else (lambda r: f"record {r + 1}")
            raise UserError(f"{source}: id '{name}' appears twice ({where(first_at[name])} and {where(i)}); ids "
                            "must be unique: fix the file, or pass --dedupe first to keep each id's first record")
    if len(keep) < len(ids):
        warn(f"{source}: {len(ids) - len(keep)} record(s) of repeated ids dropped, each id's first record kept "
             f"(first repeated: '{first_duplicate(ids)}')")
    return np.array(keep, dtype=np.int64)


def read_sequences(fasta: str | Path | None = None, csv: str | Path | None = None, id_column: str = "id",
                   seq_column: str = "seq", dedupe: str = "error") -> tuple[list[str], list[str], str, list[str] | None]:
    """(ids, raw sequences, source, the row of each record of a table, e.g. 'row 7'; None for FASTA) from a
    FASTA file or a table with a sequence column (and an id column when present: else ids row1, row2, ...);
    a repeated id refused, or with dedupe first its first record kept (`keep_first`)."""
    if (fasta is None) == (csv is None):
        raise UserError("give one input: --fasta FILE or --csv FILE")
    if fasta is not None:
        records = fasta_records(read_text(fasta, "FASTA file"), str(fasta))
        ids, seqs, source = [name for name, _ in records], [seq for _, seq in records], str(fasta)
    else:
        table = read_table(csv, "sequence table")
        if seq_column not in table.columns:
            raise UserError(f"{csv}: no '{seq_column}' column (columns: {', '.join(table.columns)}); name the DNA "
                            "column with --seq-column")
        ids, seqs, source = row_ids(table, csv, id_column), table[seq_column].tolist(), str(csv)
    ids, seqs, where = unique_records(ids, seqs, dedupe, source, table_rows=csv is not None)
    return ids, seqs, source, where


def unique_records(ids: list[str], seqs: list[str], dedupe: str, source: str,
                   table_rows: bool) -> tuple[list[str], list[str], list[str] | None]:
    """(ids, sequences, a table's row of each) of the records `keep_first` keeps (FASTA records go by their
    ids: no rows)."""
    kept = keep_first(ids, dedupe, source, table_rows)
    where = [f"row {r + 2}" for r in kept] if table_rows else None
    return [ids[r] for r in kept], [seqs[r] for r in kept], where


def fasta_records(text: str, source: str) -> list[tuple[str, str]]:
    """(id, sequence) pairs of FASTA text, or one record seq1 of bare DNA; none is a one-line UserError."""
    body, _ = fasta_body(text)
    records = read_fasta_text(text, source) if ">" in body else [("seq1", body)] if body.strip() else []
    if not records:
        raise UserError(f"{source}: no sequences found (empty, or only comments); give FASTA records or bare DNA")
    return records


def read_records(fasta: str | Path | None = None, csv: str | Path | None = None, *, dna: str | None = None,
                 stdin_text: str | None = None, id_column: str = "id", seq_column: str = "seq",
                 dedupe: str = "error", skip_invalid: bool = False, stops_table: int | None = 11) -> UserRecords:
    """A user's genes from one of: a FASTA file, a table (`csv`), a DNA string, stdin text; repeated ids by
    `dedupe` (error or first), each record cleaned by `clean_sequences` (bad ones named by their row, or with
    skip_invalid skipped and counted; internal stop codons of `stops_table` flagged, or skipped)."""
    if dedupe not in DEDUPE:
        raise UserError(f"--dedupe {dedupe}: sequences can only be deduplicated by {' or '.join(DEDUPE)} (mean "
                        "averages a value column, which only train-regressor reads)")
    if fasta is not None or csv is not None:
        ids, raw, source, where = read_sequences(fasta, csv, id_column, seq_column, dedupe)
    elif dna is not None or stdin_text is not None:
        source = "--dna" if dna is not None else "stdin"
        records = [("seq1", dna)] if dna is not None else fasta_records(stdin_text, source)
        ids, raw, where = unique_records([name for name, _ in records], [seq for _, seq in records], dedupe, source,
                                         table_rows=False)
    else:
        raise UserError("no input: pass --dna SEQ, --fasta FILE, --csv FILE, or pipe DNA on stdin")
    kept, clean, skipped = clean_sequences(ids, raw, source, skip_invalid, stops_table, where=where)
    return UserRecords(kept, clean, source, skipped=len(skipped))


def align(wanted: list[str], have: list[str], wanted_src: str, have_src: str) -> np.ndarray:
    """Row index in `have` of each id in `wanted`; one line naming the first missing id."""
    index = {v: i for i, v in enumerate(have)}
    missing = [v for v in wanted if v not in index]
    if missing:
        raise UserError(
            f"{len(missing)} id(s) of {wanted_src} are missing from {have_src} (first: '{missing[0]}'); "
            "embed or list those sequences too, or drop them from the labels"
        )
    return np.array([index[v] for v in wanted], dtype=np.int64)
