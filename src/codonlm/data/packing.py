"""Genes -> fixed-length windows (pack_mode multi or single) with per-CDS segment ids and positions.

A window is `block_size + 1` tokens. Genes longer than a window are cut into chunks that
overlap by one token, so each codon is a prediction target exactly once. A continuation chunk
always opens a window (position 0 is never a target), so no target is ever predicted across
a <SEP> from another gene's context.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from codonlm.data.codons import PAD, SEP


class Piece(NamedTuple):  # a NamedTuple: cheap to build, one or more per gene
    tokens: np.ndarray  # uint8
    first_position: int  # position of tokens[0] within its CDS
    continuation: bool  # True for chunks after the first: must open a window


@dataclass
class WindowBatch:
    tokens: np.ndarray  # uint8 [n, W]
    segment_ids: np.ndarray  # int16 [n, W]
    positions: np.ndarray  # int32 [n, W]


def chunk_gene(tokens: np.ndarray, window: int, max_chunks: int | None) -> tuple[list[Piece], int]:
    """Cut one gene into pieces of at most `window` tokens; returns (pieces, targets lost to max_chunks)."""
    if tokens.size <= window and max_chunks != 0:  # the common case: the whole gene fits one window
        return [Piece(tokens, 0, continuation=False)], 0
    pieces: list[Piece] = []
    start = 0
    while start + 1 < tokens.size or start == 0:
        if max_chunks is not None and len(pieces) == max_chunks:
            return pieces, int(tokens.size - 1 - start)
        pieces.append(Piece(tokens[start : start + window], start, continuation=start > 0))
        start += window - 1
    return pieces, 0


class WindowPacker:
    """Best-fit packing over a bounded pool of open windows, so memory stays flat while streaming.

    Open windows are kept oldest first, and indexed by a sorted list of (tokens used, -age) keys:
    bisection finds the best fit for a piece (the fullest window with room for it, the oldest on
    ties) and the window to close when the pool overflows (the fullest, the oldest on ties).
    """

    def __init__(self, window: int, multi: bool, pool_size: int = 32):
        self.window = window
        self.multi = multi
        self.pool_size = pool_size
        self._open: dict[int, list[Piece]] = {}  # age -> pieces of an open window, oldest first
        self._by_fill: list[tuple[int, int]] = []  # sorted (tokens used, -age) of the open windows
        self._age = 0

    def add(self, piece: Piece) -> Iterator[list[Piece]]:
        """Place a piece; yields windows (lists of pieces) that are closed as a result."""
        closed = self.place(piece)
        if closed is not None:
            yield closed

    def place(self, piece: Piece) -> list[Piece] | None:
        """Place a piece; returns the window it closed, if any (add without the generator, for hot loops)."""
        size = piece.tokens.size
        if not self.multi or size == self.window:
            return [piece]
        if not piece.continuation:
            # the last key with used <= window - 1 - size (room for a <SEP> and the piece)
            best = bisect.bisect_right(self._by_fill, (self.window - 1 - size, 1)) - 1
            if best >= 0:
                used, neg_age = self._by_fill.pop(best)
                self._open[-neg_age].append(piece)
                bisect.insort(self._by_fill, (used + 1 + size, neg_age))
                return None
        self._age += 1
        self._open[self._age] = [piece]
        bisect.insort(self._by_fill, (size, -self._age))
        if len(self._open) > self.pool_size:
            _, neg_age = self._by_fill.pop()
            return self._open.pop(-neg_age)
        return None

    def flush(self) -> Iterator[list[Piece]]:
        yield from self._open.values()
        self._open, self._by_fill = {}, []


def render(windows: list[list[Piece]], window: int) -> WindowBatch:
    """Lay pieces out as token / segment / position rows, <SEP> between pieces, <PAD> after.

    A row is a run of tokens per piece, each run but the row's last ending in a <SEP> (which
    takes the piece's segment id and next position), then <PAD>s. The runs of all rows are
    laid end to end once, then dropped into the rows' non-<PAD> cells with one masked
    assignment per array (row-major order is the runs' order).
    """
    n = len(windows)
    tokens = np.full((n, window), PAD, dtype=np.uint8)
    segments = np.zeros((n, window), dtype=np.int16)
    positions = np.zeros((n, window), dtype=np.int32)
    pieces = [piece for row in windows for piece in row]
    if not pieces:
        return WindowBatch(tokens, segments, positions)
    piece_tokens, first_positions, _ = zip(*pieces, strict=True)
    per_row = np.fromiter(map(len, windows), dtype=np.int64, count=n)
    sizes = np.fromiter(map(len, piece_tokens), dtype=np.int64, count=len(pieces))
    row_first = np.cumsum(per_row) - per_row  # index of each row's first piece
    seg = np.arange(1, len(pieces) + 1) - np.repeat(row_first, per_row)  # 1, 2, ... within the row
    has_sep = np.ones(len(pieces), dtype=bool)
    has_sep[(row_first + per_row - 1)[per_row > 0]] = False  # a row's last piece has no <SEP>
    run_sizes = sizes + has_sep
    bounds = np.concatenate(([0], np.cumsum(run_sizes)))  # run i is stream[bounds[i]:bounds[i + 1]]
    filled = np.arange(window) < (bounds[row_first + per_row] - bounds[row_first])[:, None]
    tokens[filled] = np.insert(np.concatenate(piece_tokens), np.cumsum(sizes)[has_sep], SEP)  # the stream
    segments[filled] = np.repeat(seg.astype(np.int16), run_sizes)
    stream_positions = np.repeat((np.array(first_positions) - bounds[:-1]).astype(np.int32), run_sizes)
    stream_positions += np.arange(stream_positions.size, dtype=np.int32)
    positions[filled] = stream_positions
    return WindowBatch(tokens, segments, positions)
