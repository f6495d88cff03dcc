"""The one home of file I/O: atomic writes, folder locks, JSON, sha256, plain or gzipped user files, FASTA
(Bio.SeqIO), a prepared split's genes.

Everything a stage writes goes through `atomic_path`/`atomic_write`: the data lands in a temporary
file beside the target (same folder, so the rename is atomic) and replaces the target only when
complete. An interrupted stage therefore never leaves a half-written file, and a re-run overwrites
cleanly.
"""

from __future__ import annotations

import fcntl
import hashlib
import io as _io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from isal import igzip, isal_zlib

from codonlm.errors import UserError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary name keeps the target's suffix (``.x.tmp123.png``), so writers that pick a format
    from the suffix (matplotlib, numpy) still do the right thing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def folder_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on the directory `path` (created if needed) for the block.

    A directory rather than a lock file: it leaves no file behind. The kernel drops the lock when
    the holder dies (even by SIGKILL), so a killed process never blocks the next one. `on_wait` is
    called once if another process holds the lock and this one has to wait (it may raise instead:
    then this process does not wait).
    """
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    """The parsed file, or `default` when it does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def write_csv(df, path: str | Path) -> None:
    """A pandas DataFrame as CSV, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# --------------------------------------------------------------------------- reading user files

GZIP_MAGIC = b"\x1f\x8b"
FASTA_COMMENTS = ("#", ";")


@contextmanager
def open_binary(path: str | Path) -> Iterator[BinaryIO]:
    """A file's bytes; gzip (known by its magic bytes, whatever the name) inflated by ISA-L, which takes
    about half zlib's time (bench/prepare_throughput.py). A truncated or corrupt gzip is a one-line UserError."""
    path = Path(path)
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == GZIP_MAGIC
    fh = igzip.open(path, "rb") if gzipped else open(path, "rb")
    try:
        yield fh
    except (EOFError, isal_zlib.error, OSError) as exc:  # OSError: gzip.BadGzipFile too
        if not gzipped:
            raise
        raise UserError(f"{path}: truncated or corrupt gzip ({exc}); re-download the file or gzip it again") from None
    finally:
        fh.close()


def read_text(path: str | Path, what: str) -> str:
    """A plain or gzipped UTF-8 text file (a byte-order mark dropped, CRLF and CR line ends read as LF);
    one line when it is missing, a corrupt gzip, or not text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}; check the path")
    with open_binary(path) as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file (byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8); "
                        f"give the {what} as plain or gzipped text") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------- FASTA


def fasta_body(text: str) -> tuple[str, int]:
    """FASTA text from its first line that is neither blank nor a comment ('#', ';'), and that line's number.

    Biopython's parser refuses such lines before the first record; many tools write a '# ...' header."""
    lines = text.split("\n")
    n = 0
    while n < len(lines) and (not lines[n].strip() or lines[n].lstrip().startswith(FASTA_COMMENTS)):
        n += 1
    return "\n".join(lines[n:]), n + 1


def read_fasta_text(text: str, source: str) -> list[tuple[str, str]]:
    """(id, sequence) pairs of FASTA text, parsed by Biopython's SeqIO (sequences as written). Blank and
    comment lines before the first record are skipped; any other line there is a one-line UserError."""
    from Bio import SeqIO

    body, first = fasta_body(text)
    if body and not body.startswith(">"):
        raise UserError(f"{source}: line {first} is neither a FASTA header ('>ID') nor a comment ('#', ';'); "
                        "start the file with a '>' record")
    return [(rec.id or f"seq{i + 1}", str(rec.seq)) for i, rec in enumerate(SeqIO.parse(_io.StringIO(body), "fasta"))]


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """(id, sequence) pairs of a plain or gzipped FASTA file (see read_text, read_fasta_text)."""
    return read_fasta_text(read_text(path, "FASTA file"), str(path))


def write_fasta(path: str | Path, records: Iterable[tuple[str, str]], descriptions: Iterable[str] | None = None) -> int:
    """Write (id, sequence) pairs as FASTA (60 columns, Biopython's writer), atomically; returns the count."""
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqRecord import SeqRecord

    descs = iter(descriptions) if descriptions is not None else None
    recs = (SeqRecord(Seq(seq), id=name, description=next(descs) if descs else "") for name, seq in records)
    with atomic_path(path) as tmp:
        return SeqIO.write(recs, tmp, "fasta")


# --------------------------------------------------------------------------- prepared splits

SPLIT_GENE_ARRAYS = ("gene_tokens", "gene_offsets", "gene_dataset", "gene_names", "dataset_names")


@dataclass
class SplitGenes:
    """The whole genes of one prepared split (see docs/data_format.md)."""

    path: Path
    genes: list[np.ndarray]  # each <BOS_CDS> c1 .. cn <EOS_CDS>, uint8
    groups: np.ndarray  # dataset index of each gene
    names: list[str]  # record_id|locus_tag
    dataset_names: list[str]

    def codons(self, g: int) -> np.ndarray:
        """Codon ids of gene g (the framing tokens dropped)."""
        return self.genes[g][1:-1]

    def of_dataset(self, d: int) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.groups == d)]


def read_npz(path: str | Path, required: tuple[str, ...], missing_hint: str, wrong_hint: str,
             unreadable_hint: str) -> dict[str, np.ndarray]:
    """Every array of an NPZ (never unpickled), or a one-line UserError: no file, an array missing, unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{missing_hint.format(path=path)}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in required if k not in data]
            if missing:
                raise UserError(f"{path}: no '{missing[0]}' array; {wrong_hint}")
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: unreadable ({str(exc)[:100]}); {unreadable_hint}") from None


def read_split_genes(path: str | Path) -> SplitGenes:
    """The genes of a prepared split NPZ; one line naming the file and what to run when it is unusable."""
    path = Path(path)
    arrays = read_npz(path, SPLIT_GENE_ARRAYS,
                      "prepared data not found: {path}; run 'codonlm prepare -c CONFIG' for this run's config",
                      "prepared by an older version; re-run 'codonlm prepare --force'",
                      "re-run 'codonlm prepare'")
    tokens, offsets = arrays["gene_tokens"], arrays["gene_offsets"]
    genes = [tokens[offsets[g] : offsets[g + 1]] for g in range(len(offsets) - 1)]
    return SplitGenes(path=path, genes=genes, groups=np.asarray(arrays["gene_dataset"]),
                      names=[str(n) for n in arrays["gene_names"]],
                      dataset_names=[str(n) for n in arrays["dataset_names"]])
