"""Disk-backed columns and a streaming NPZ writer: prepare's memory stays flat however big the corpus."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

_FLUSH_BYTES = 32 << 20


class Spill:
    """Append-only array of fixed-shape rows, buffered in memory and spilled to a raw file."""

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...] = ()):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.rows = 0
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"")

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if arr.shape[1:] != self.row_shape:
            raise ValueError(f"row shape {arr.shape[1:]} != {self.row_shape}")
        self._buffer.append(arr)
        self._buffered += arr.nbytes
        self.rows += arr.shape[0]
        if self._buffered >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            with open(self.path, "ab") as fh:
                for arr in self._buffer:
                    fh.write(arr.tobytes())
        self._buffer, self._buffered = [], 0

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, *self.row_shape)

    def chunks(self, rows_per_chunk: int = 1 << 16) -> Iterator[np.ndarray]:
        self.flush()
        if self.rows == 0:
            return
        data = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        for i in range(0, self.rows, rows_per_chunk):
            yield np.asarray(data[i : i + rows_per_chunk])


class TextSpill:
    """Append-only list of strings on disk (one per line)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows = 0
        self.path.write_text("")
        self._fh = open(self.path, "a")  # noqa: SIM115 - closed in read()

    def append(self, items: Iterable[str]) -> None:
        for s in items:
            self._fh.write(s.replace("\n", " ") + "\n")
            self.rows += 1

    def read(self) -> np.ndarray:
        self._fh.flush()
        lines = self.path.read_text().splitlines()
        return np.array(lines, dtype=str) if lines else np.array([], dtype="<U1")


def write_npz_streaming(path: Path, columns: dict[str, tuple[np.dtype, tuple[int, ...], Iterable[np.ndarray]]]) -> None:
    """Write an uncompressed .npz whose arrays arrive as chunks; atomic (temp file + rename).

    `columns` maps name -> (dtype, full shape, iterable of row chunks). np.load reads the result.
    """
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, (dtype, shape, chunks) in columns.items():
                dtype = np.dtype(dtype)
                with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                    np.lib.format.write_array_header_2_0(fh, header)
                    written = 0
                    for chunk in chunks:
                        chunk = np.ascontiguousarray(chunk, dtype=dtype)
                        fh.write(chunk.tobytes())
                        written += chunk.shape[0] if chunk.ndim else 1
                    expected = shape[0] if shape else 1
                    if written != expected:
                        raise RuntimeError(f"{name}: wrote {written} rows, header says {expected}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def whole(arr: np.ndarray) -> tuple[np.dtype, tuple[int, ...], list[np.ndarray]]:
    """A column for write_npz_streaming from an in-memory array."""
    return arr.dtype, arr.shape, [arr] if arr.ndim else [arr.reshape(1)]
