"""Genes -> fixed-length windows (pack_mode multi or single) with per-CDS segment ids and positions.

A window is `block_size + 1` tokens. Genes longer than a window are cut into chunks that
overlap by one token, so each codon is a prediction target exactly once. A continuation chunk
always opens a window (position 0 is never a target), so no target is ever predicted across
a <SEP> from another gene's context.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from codonlm.data.codons import BOS, EOS, PAD, SEP


@dataclass
class Piece:
    tokens: np.ndarray  # uint8
    first_position: int  # position of tokens[0] within its CDS
    continuation: bool  # True for chunks after the first: must open a window


@dataclass
class WindowBatch:
    tokens: np.ndarray  # uint8 [n, W]
    segment_ids: np.ndarray  # int16 [n, W]
    positions: np.ndarray  # int32 [n, W]


def gene_tokens(codon_ids: np.ndarray) -> np.ndarray:
    out = np.empty(codon_ids.size + 2, dtype=np.uint8)
    out[0], out[-1] = BOS, EOS
    out[1:-1] = codon_ids
    return out


def chunk_gene(tokens: np.ndarray, window: int, max_chunks: int | None) -> tuple[list[Piece], int]:
    """Cut one gene into pieces of at most `window` tokens; returns (pieces, targets lost to max_chunks)."""
    pieces: list[Piece] = []
    start = 0
    while start + 1 < tokens.size or start == 0:
        if max_chunks is not None and len(pieces) == max_chunks:
            return pieces, int(tokens.size - 1 - start)
        pieces.append(Piece(tokens[start : start + window], start, continuation=start > 0))
        start += window - 1
    return pieces, 0


class WindowPacker:
    """Best-fit packing over a bounded pool of open windows, so memory stays flat while streaming."""

    def __init__(self, window: int, multi: bool, pool_size: int = 32):
        self.window = window
        self.multi = multi
        self.pool_size = pool_size
        self._open: list[list[Piece]] = []  # pieces per open window
        self._used: list[int] = []

    def add(self, piece: Piece) -> Iterator[list[Piece]]:
        """Place a piece; yields windows (lists of pieces) that are closed as a result."""
        size = piece.tokens.size
        if not self.multi or size == self.window:
            yield [piece]
            return
        if not piece.continuation:
            best, best_room = -1, self.window + 1
            for i, used in enumerate(self._used):
                room = self.window - used - 1  # one <SEP> before the new piece
                if size <= room < best_room:
                    best, best_room = i, room
            if best >= 0:
                self._open[best].append(piece)
                self._used[best] += 1 + size
                return
        self._open.append([piece])
        self._used.append(size)
        if len(self._open) > self.pool_size:
            fullest = int(np.argmax(self._used))
            self._used.pop(fullest)
            yield self._open.pop(fullest)

    def flush(self) -> Iterator[list[Piece]]:
        yield from self._open
        self._open, self._used = [], []


def render(windows: list[list[Piece]], window: int) -> WindowBatch:
    """Lay pieces out as token / segment / position rows, <SEP> between pieces, <PAD> after."""
    n = len(windows)
    tokens = np.full((n, window), PAD, dtype=np.uint8)
    segments = np.zeros((n, window), dtype=np.int16)
    positions = np.zeros((n, window), dtype=np.int32)
    for row, pieces in enumerate(windows):
        col = 0
        for seg, piece in enumerate(pieces, 1):
            if seg > 1:
                tokens[row, col] = SEP
                segments[row, col] = seg - 1
                positions[row, col] = positions[row, col - 1] + 1
                col += 1
            size = piece.tokens.size
            tokens[row, col : col + size] = piece.tokens
            segments[row, col : col + size] = seg
            positions[row, col : col + size] = np.arange(piece.first_position, piece.first_position + size)
            col += size
    return WindowBatch(tokens, segments, positions)
