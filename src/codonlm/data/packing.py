"""Genes -> fixed-length windows (pack_mode multi or single) with per-CDS segment ids and positions.

A window is `block_size + 1` tokens. Genes longer than a window are cut into chunks that
overlap by one token, so each codon is a prediction target exactly once. A continuation chunk
always opens a window (position 0 is never a target), so no target is ever predicted across
a <SEP> from another gene's context.

Pieces (whole genes or chunks) are rows of a table (`Pieces`) over a token stream, computed for
many genes at once; the packer only sees their sizes and ids, and `render` lays out many windows
in a few numpy passes.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from codonlm.data.codons import PAD, SEP


class Pieces(NamedTuple):
    """A table of pieces over a token stream: piece i is stream[start[i] : start[i] + size[i]]."""

    start: np.ndarray  # int64
    size: np.ndarray  # int64
    first_position: np.ndarray  # int64: position of the piece's first token within its CDS
    continuation: np.ndarray  # bool: a chunk after the first; must open a window

    @property
    def count(self) -> int:
        return self.start.size

    @staticmethod
    def concatenate(tables: list[Pieces]) -> Pieces:
        return Pieces(*(np.concatenate(column) for column in zip(*tables, strict=True)))

    def take(self, stream: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, Pieces]:
        """Pieces `ids` as a stream of their own (their tokens laid end to end) and its table."""
        sizes = self.size[ids]
        ends = np.cumsum(sizes)
        starts = ends - sizes
        tokens = stream[np.repeat(self.start[ids] - starts, sizes) + np.arange(ends[-1] if ends.size else 0)]
        return tokens, Pieces(starts, sizes, self.first_position[ids], self.continuation[ids])


@dataclass
class WindowBatch:
    tokens: np.ndarray  # uint8 [n, W]
    segment_ids: np.ndarray  # int16 [n, W]
    positions: np.ndarray  # int32 [n, W]


def chunk_genes(lengths: np.ndarray, window: int, max_chunks: int | None) -> tuple[Pieces, int]:
    """Cut genes laid end to end (framed, `lengths` tokens each) into pieces of at most `window` tokens.

    Chunk j of a gene starts at token j * (window - 1); a gene has as many chunks as it takes for
    every token after the first to be a target once, at most max_chunks. Returns the pieces, in
    gene order, and the targets lost to max_chunks.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    step = window - 1
    chunks = np.maximum(1, -(-(lengths - 1) // step))  # ceil((length - 1) / step)
    kept = chunks if max_chunks is None else np.minimum(chunks, max_chunks)
    lost = int(np.maximum(lengths - 1 - kept * step, 0)[kept < chunks].sum())
    gene = np.repeat(np.arange(lengths.size), kept)
    index = np.arange(gene.size) - np.repeat(np.cumsum(kept) - kept, kept)  # chunk number within its gene
    first_position = index * step
    start = (np.cumsum(lengths) - lengths)[gene] + first_position
    size = np.minimum(window, lengths[gene] - first_position)
    return Pieces(start, size, first_position, index > 0), lost


class WindowPacker:
    """Best-fit packing over a bounded pool of open windows, so memory stays flat while streaming.

    A window is a list of piece ids. Open windows are kept oldest first, and indexed by a sorted
    list of (tokens used, -age) keys: bisection finds the best fit for a piece (the fullest window
    with room for it, the oldest on ties) and the window to close when the pool overflows (the
    fullest, the oldest on ties).
    """

    def __init__(self, window: int, multi: bool, pool_size: int = 32):
        self.window = window
        self.multi = multi
        self.pool_size = pool_size
        self._open: dict[int, list[int]] = {}  # age -> piece ids of an open window, oldest first
        self._by_fill: list[tuple[int, int]] = []  # sorted (tokens used, -age) of the open windows
        self._age = 0

    def pack(self, sizes: list[int], continuation: list[bool], first_id: int) -> list[list[int]]:
        """Place pieces first_id, first_id + 1, ... in order; returns the windows they closed."""
        window, pool_size, by_fill, open_windows = self.window, self.pool_size, self._by_fill, self._open
        if not self.multi:
            return [[first_id + i] for i in range(len(sizes))]
        closed = []
        for piece, (size, cont) in enumerate(zip(sizes, continuation, strict=True), first_id):
            if size == window:
                closed.append([piece])
                continue
            if not cont:
                # the last key with used <= window - 1 - size (room for a <SEP> and the piece)
                best = bisect.bisect_right(by_fill, (window - 1 - size, 1)) - 1
                if best >= 0:
                    used, neg_age = by_fill.pop(best)
                    open_windows[-neg_age].append(piece)
                    bisect.insort(by_fill, (used + 1 + size, neg_age))
                    continue
            self._age += 1
            open_windows[self._age] = [piece]
            bisect.insort(by_fill, (size, -self._age))
            if len(open_windows) > pool_size:
                _, neg_age = by_fill.pop()
                closed.append(open_windows.pop(-neg_age))
        return closed

    def open_pieces(self) -> list[int]:
        """Ids of the pieces in open windows."""
        return [piece for pieces in self._open.values() for piece in pieces]

    def renumber(self, new_id: dict[int, int]) -> None:
        """Give the pieces of open windows new ids (the caller moved them to a new table)."""
        self._open = {age: [new_id[p] for p in pieces] for age, pieces in self._open.items()}

    def flush(self) -> list[list[int]]:
        """Close every open window, oldest first."""
        windows = list(self._open.values())
        self._open, self._by_fill = {}, []
        return windows


def render(windows: list[list[int]], pieces: Pieces, stream: np.ndarray, window: int) -> WindowBatch:
    """Lay windows (piece ids into `pieces` over `stream`) out as token / segment / position rows.

    A row is a run of tokens per piece, <SEP> between pieces (which takes the piece's segment id
    and next position), then <PAD>s. The runs of all rows are laid end to end once, then dropped
    into the rows' non-<PAD> cells with one masked assignment per array (row-major order is the
    runs' order).
    """
    n = len(windows)
    tokens = np.full((n, window), PAD, dtype=np.uint8)
    segments = np.zeros((n, window), dtype=np.int16)
    positions = np.zeros((n, window), dtype=np.int32)
    order = np.fromiter(itertools.chain.from_iterable(windows), dtype=np.int64)
    if not order.size:
        return WindowBatch(tokens, segments, positions)
    per_row = np.fromiter(map(len, windows), dtype=np.int64, count=n)
    piece_tokens, laid = pieces.take(stream, order)
    sizes = laid.size
    row_first = np.cumsum(per_row) - per_row  # index of each row's first piece
    seg = np.arange(1, order.size + 1) - np.repeat(row_first, per_row)  # 1, 2, ... within the row
    has_sep = np.ones(order.size, dtype=bool)
    has_sep[(row_first + per_row - 1)[per_row > 0]] = False  # a row's last piece has no <SEP>
    run_sizes = sizes + has_sep
    bounds = np.concatenate(([0], np.cumsum(run_sizes)))  # run i is the stream's [bounds[i]:bounds[i + 1]]
    filled = np.arange(window) < (bounds[row_first + per_row] - bounds[row_first])[:, None]
    tokens[filled] = np.insert(piece_tokens, (laid.start + sizes)[has_sep], SEP)
    segments[filled] = np.repeat(seg.astype(np.int16), run_sizes)
    stream_positions = np.repeat((laid.first_position - bounds[:-1]).astype(np.int32), run_sizes)
    stream_positions += np.arange(stream_positions.size, dtype=np.int32)
    positions[filled] = stream_positions
    return WindowBatch(tokens, segments, positions)
