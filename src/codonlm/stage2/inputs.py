"""Reading what a user hands stage 2: sequences (FASTA or CSV) and label tables, checked with one-line errors
(the sequences are cleaned by `codonlm.data.codons.clean_sequences`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from codonlm.errors import UserError
from codonlm.io import read_fasta


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A CSV (a TSV when the name ends .tsv) as strings (no NA guessing: a gene called 'NA' stays 'NA')."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}; check the path")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0][:100]}); fix the file") from None
    if table.empty:
        raise UserError(f"{path}: no rows; the {what} needs at least one row")
    return table


def table_ids(table: pd.DataFrame, path: str | Path, id_column: str = "id") -> list[str] | None:
    """The id column (unique, non-empty), or None when the table has none (rows then match by order)."""
    if id_column not in table.columns:
        return None
    ids = table[id_column].tolist()
    empty = [i for i, v in enumerate(ids) if not v]
    if empty:
        raise UserError(f"{path}: row {empty[0] + 2} has an empty '{id_column}'; give every row an id")
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        raise UserError(f"{path}: id '{duplicate}' appears twice; ids must be unique")
    return ids


def first_duplicate(values: list[str]) -> str | None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def read_sequences(fasta: str | Path | None = None, csv: str | Path | None = None, id_column: str = "id",
                   seq_column: str = "seq") -> tuple[list[str], list[str], str]:
    """(ids, raw sequences, source) from a FASTA file or a CSV (.tsv: tab-separated) with a sequence column
    (and an id column when present)."""
    if (fasta is None) == (csv is None):
        raise UserError("give exactly one of --fasta FILE or --csv FILE")
    if fasta is not None:
        records = read_fasta(fasta)
        if not records:
            raise UserError(f"{fasta}: no sequences found (empty FASTA); give a file with '>' records")
        ids = [name for name, _ in records]
        duplicate = first_duplicate(ids)
        if duplicate is not None:
            raise UserError(f"{fasta}: record id '{duplicate}' appears twice; ids must be unique")
        return ids, [seq for _, seq in records], str(fasta)
    table = read_table(csv, "sequence CSV")
    if seq_column not in table.columns:
        raise UserError(f"{csv}: no '{seq_column}' column (columns: {', '.join(table.columns)}); name the DNA "
                        "column with --seq-column")
    ids = table_ids(table, csv, id_column) or [f"row{i + 1}" for i in range(len(table))]
    return ids, table[seq_column].tolist(), str(csv)


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
