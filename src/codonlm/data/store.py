"""Disk mechanics of prepared data: disk-backed columns, a streaming NPZ writer and reader, and
all-or-nothing publication of a folder (its lock: codonlm.io.folder_lock). prepare's memory stays flat however big the corpus."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import threading
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from codonlm.io import atomic_path

_FLUSH_BYTES = 32 << 20
_CHUNK_BYTES = 16 << 20  # at most this much is read back from disk at a time
_HASH_CHUNK = 4 << 20


class Spill:
    """Append-only array of fixed-shape rows, buffered in memory and spilled to a raw file.

    The file is only written once the buffer passes _FLUSH_BYTES: a column that stays small
    never touches the disk.
    """

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...] = ()):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.rows = 0
        self._rows_on_disk = 0
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if arr.shape[1:] != self.row_shape:
            raise ValueError(f"row shape {arr.shape[1:]} != {self.row_shape}")
        self._buffer.append(arr)
        self._buffered += arr.nbytes
        self.rows += arr.shape[0]
        if self._buffered >= _FLUSH_BYTES:
            self._spill()

    def _spill(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab" if self._rows_on_disk else "wb") as fh:
            for arr in self._buffer:
                fh.write(arr.reshape(-1).view(np.uint8))
        self._rows_on_disk = self.rows
        self._buffer, self._buffered = [], 0

    def flush(self) -> None:
        """Nothing to do while everything fits the buffer; once part of the column is on disk, write the rest."""
        if self._rows_on_disk and self._buffer:
            self._spill()

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, *self.row_shape)

    def chunks(self, rows_per_chunk: int = 1 << 16) -> Iterator[np.ndarray]:
        if not self._rows_on_disk:
            yield from self._buffer  # never spilled: the column is still in memory
            return
        self.flush()
        row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        rows_per_chunk = min(rows_per_chunk, max(1, _CHUNK_BYTES // max(row_bytes, 1)))
        yield from _read_rows(self.path, 0, self.dtype, self.shape, rows_per_chunk)

    def release(self) -> None:
        """Drop the rows (memory and file); the row count stays."""
        self._buffer, self._buffered = [], 0
        if self._rows_on_disk:
            self.path.unlink(missing_ok=True)


class TextSpill:
    """Append-only list of strings, kept in memory up to _FLUSH_BYTES and spilled to disk (one per line)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows = 0
        self._lines: list[str] = []
        self._buffered = 0
        self._on_disk = False

    def append(self, items: Iterable[str]) -> None:
        lines = [s.replace("\n", " ") + "\n" for s in items]
        self._lines.extend(lines)
        self.rows += len(lines)
        self._buffered += sum(map(len, lines))
        if self._buffered >= _FLUSH_BYTES:
            self._spill()

    def _spill(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a" if self._on_disk else "w", encoding="utf-8") as fh:
            fh.write("".join(self._lines))
        self._on_disk = True
        self._lines, self._buffered = [], 0

    def read(self) -> np.ndarray:
        if self._on_disk:
            self._spill()
            lines = self.path.read_text(encoding="utf-8").splitlines()
        else:
            lines = "".join(self._lines).splitlines()  # as read back from the file
        return np.array(lines, dtype=str) if lines else np.array([], dtype="<U1")

    def release(self) -> None:
        self._lines, self._buffered = [], 0
        if self._on_disk:
            self.path.unlink(missing_ok=True)


def write_npz_streaming(path: Path, columns: dict[str, tuple[np.dtype, tuple[int, ...], Iterable[np.ndarray]]]) -> dict:
    """Write an uncompressed .npz whose arrays arrive as chunks; atomic (temp file + rename).

    `columns` maps name -> (dtype, full shape, iterable of row chunks). np.load reads the result.
    Returns its {"sha256", "bytes"}, hashed while it is written (_TrailingHash).
    """
    with atomic_path(path) as tmp, _TrailingHash(tmp) as hasher:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, (dtype, shape, chunks) in columns.items():
                dtype = np.dtype(dtype)
                with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                    np.lib.format.write_array_header_2_0(fh, header)
                    written = 0
                    for chunk in chunks:
                        chunk = np.ascontiguousarray(chunk, dtype=dtype)
                        fh.write(chunk.reshape(-1).view(np.uint8))  # the raw bytes, without a copy
                        written += chunk.shape[0] if chunk.ndim else 1
                    expected = shape[0] if shape else 1
                    if written != expected:
                        raise RuntimeError(f"{name}: wrote {written} rows, header says {expected}")
                # the member is closed: its header holds the final sizes and CRC, and the file is flushed
                hasher.advance(zf.fp.tell())
        size = tmp.stat().st_size
        return {"sha256": hasher.hexdigest(size), "bytes": size}


class _TrailingHash:
    """sha256 of a file while it is being written: a thread hashes the bytes the writer has finished
    (`advance`), so the hashing overlaps the writing instead of reading the whole file again after it."""

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_RDONLY)
        self._sha = hashlib.sha256()
        self._hashed = self._ready = 0
        self._end: int | None = None  # the final size, once known
        self._failed: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="npz-sha256", daemon=True)

    def __enter__(self) -> _TrailingHash:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._changed:
            if self._end is None:
                self._end = -1  # the writer failed: stop
            self._changed.notify()
        self._thread.join()
        os.close(self._fd)

    def advance(self, final_up_to: int) -> None:
        """Bytes before this offset will not change any more."""
        with self._changed:
            self._ready = max(self._ready, final_up_to)
            self._changed.notify()

    def hexdigest(self, size: int) -> str:
        """The hash of the whole file, `size` bytes, once the writer is done."""
        with self._changed:
            self._ready, self._end = size, size
            self._changed.notify()
        self._thread.join()
        if self._failed is not None:
            raise self._failed
        return self._sha.hexdigest()

    def _run(self) -> None:
        buffer = bytearray(_HASH_CHUNK)
        try:
            while True:
                with self._changed:
                    while self._hashed >= self._ready and self._end is None:
                        self._changed.wait()
                    ready, end = self._ready, self._end
                if end == -1:
                    return
                while self._hashed < ready:
                    view = memoryview(buffer)[: min(_HASH_CHUNK, ready - self._hashed)]
                    n = os.preadv(self._fd, [view], self._hashed)
                    if n <= 0:
                        raise EOFError("file shorter than written")
                    self._sha.update(view[:n])
                    self._hashed += n
                if end is not None and self._hashed >= end:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the writer by hexdigest
            self._failed = exc


def whole(arr: np.ndarray) -> tuple[np.dtype, tuple[int, ...], list[np.ndarray]]:
    """A column for write_npz_streaming from an in-memory array."""
    return arr.dtype, arr.shape, [arr] if arr.ndim else [arr.reshape(1)]


def _read_rows(path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...], rows_per_chunk: int):
    """Rows of a raw C-order array stored at `offset` in a file, read `rows_per_chunk` at a time.

    Every chunk is a view of one buffer, valid until the next is read: the consumers write each
    chunk out at once, and a reused buffer keeps the heap from growing with the number of chunks.
    """
    row_items = int(np.prod(shape[1:], dtype=np.int64))
    buffer = np.empty(min(rows_per_chunk, shape[0]) * row_items, dtype=dtype)
    with open(path, "rb") as fh:
        fh.seek(offset)
        for start in range(0, shape[0], rows_per_chunk):
            rows = min(rows_per_chunk, shape[0] - start)
            chunk = buffer[: rows * row_items]
            if fh.readinto(chunk.view(np.uint8)) != chunk.nbytes:
                raise EOFError(f"{path}: ends inside an array")
            yield chunk.reshape(rows, *shape[1:])


class NpzReader:
    """Arrays of an uncompressed .npz (as write_npz_streaming writes), read chunk by chunk.

    np.load reads a whole array into memory; this reads the member's bytes in place, a chunk at
    a time, so a large array is never in memory whole (and the zip layer's CRC pass is skipped).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with zipfile.ZipFile(self.path) as zf:
            self._members = {info.filename: info for info in zf.infolist()}

    def header(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        dtype, shape, _ = self.locate(name)
        return dtype, shape

    def chunks(self, name: str) -> Iterator[np.ndarray]:
        dtype, shape, offset = self.locate(name)
        row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        yield from _read_rows(self.path, offset, dtype, shape, max(1, _CHUNK_BYTES // max(row_bytes, 1)))

    def locate(self, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
        """dtype, shape and file offset of the array data of member name.npy (rows can be read in place)."""
        info = self._members[f"{name}.npy"]
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{self.path}: {name} is compressed; NpzReader maps stored arrays only")
        with open(self.path, "rb") as fh:
            fh.seek(info.header_offset)
            local_header = fh.read(30)  # fixed part of the zip local file header; then name and extra field
            name_len, extra_len = struct.unpack("<HH", local_header[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{self.path}: {name} is .npy format {version}; NpzReader reads 1.0 and 2.0")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read(fh)
            if fortran_order or not shape:
                raise ValueError(f"{self.path}: {name}: NpzReader reads C-order arrays of at least one dimension")
            return dtype, shape, fh.tell()


# --------------------------------------------------------------------------- folders


def staging_dir(final: Path) -> Path:
    """A fresh temporary folder beside `final` (same file system, so publishing it is one rename)."""
    path = final.parent / f".tmp-{final.name}-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def remove_stale_staging(final: Path) -> None:
    """Delete temporary and half-deleted folders of `final` left by killed runs (hold final's lock)."""
    for pattern in (f".tmp-{final.name}-*", f".trash-{final.name}-*"):
        for stale in final.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def publish_dir(staging: Path, final: Path) -> bool:
    """Rename a complete staging folder to `final`: readers see all of it or nothing.

    Returns False (and removes the staging folder) when `final` already exists: another process
    published the same content first.
    """
    try:
        os.rename(staging, final)
        return True
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return False


def discard_dir(path: Path) -> None:
    """Remove a published folder: first renamed away (one step, readers never see half of it), then deleted."""
    trash = path.parent / f".trash-{path.name}-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no extra disk), or a copy where the file system has none."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
