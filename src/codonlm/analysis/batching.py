"""Batched model inputs for the analysis steps: gene pieces of similar length padded into one batch,
and seeded draws of the prepared windows (the packed layout the model trained on).

One forward pass per batch, never one per gene: pieces are sorted by length so that a batch pads
little, and each row carries the segment ids and per-CDS positions that TinyGPT.forward expects
(1 on the piece, 0 on the <PAD> tail, which then attends only to itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from codonlm.data.codons import PAD


@dataclass
class PieceBatch:
    """Rows `rows` (indices into the pieces given) as model inputs, <PAD> after each piece."""

    rows: list[int]
    idx: Tensor  # [B, W] int64
    segment_ids: Tensor  # [B, W]: 1 on the piece, 0 on padding
    positions: Tensor  # [B, W]: the piece's own positions (default 0..n-1), 0 on padding
    lengths: Tensor  # [B]


def pad_pieces(pieces: list[np.ndarray], starts: list[int] | None = None,
               device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(idx, segment_ids, positions, lengths) for token pieces; `starts` gives each piece's first
    position in its CDS (a gene's tail keeps its true positions; RoPE is relative, so this only
    matters for what the hooks record)."""
    lengths = torch.tensor([p.size for p in pieces], dtype=torch.long)
    width = int(lengths.max())
    idx = torch.full((len(pieces), width), PAD, dtype=torch.long)
    for r, piece in enumerate(pieces):
        idx[r, : piece.size] = torch.from_numpy(piece.astype(np.int64))
    inside = torch.arange(width)[None, :] < lengths[:, None]
    first = torch.tensor(starts or [0] * len(pieces), dtype=torch.long)
    positions = (torch.arange(width)[None, :] + first[:, None]) * inside
    return idx.to(device), inside.long().to(device), positions.to(device), lengths.to(device)


def length_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped shortest first so that rows x longest row <= max_tokens (at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def piece_batches(pieces: list[np.ndarray], starts: list[int] | None = None, max_tokens: int = 8192,
                  device: str | torch.device = "cpu") -> Iterator[PieceBatch]:
    """Batches of similar-length pieces, each one forward pass of at most ~max_tokens tokens."""
    for rows in length_batches([p.size for p in pieces], max_tokens):
        first = [starts[r] for r in rows] if starts is not None else None
        idx, seg, pos, lengths = pad_pieces([pieces[r] for r in rows], first, device)
        yield PieceBatch(rows, idx, seg, pos, lengths)


@dataclass
class Windows:
    """Prepared windows (NPZ layout, `block_size + 1` tokens): inputs are [:, :-1], targets [:, 1:]."""

    tokens: Tensor  # [N, block_size + 1] int64
    segment_ids: Tensor
    positions: Tensor
    rows: np.ndarray  # window indices in the split NPZ
    packed: np.ndarray  # bool: the window holds more than one CDS piece

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, size: int) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """(inputs, targets, segment_ids, positions) of consecutive windows, `size` at a time."""
        for a in range(0, len(self), size):
            tok, seg, pos = self.tokens[a : a + size], self.segment_ids[a : a + size], self.positions[a : a + size]
            yield tok[:, :-1], tok[:, 1:], seg[:, :-1], pos[:, :-1]


def draw_windows(split_npz: str | Path, n_packed: int, n_other: int, seed: int, salt: int = 0,
                 device: str | torch.device = "cpu") -> Windows:
    """A seeded draw of up to `n_packed` windows holding several CDS pieces (where genes could see
    each other) and `n_other` of the rest, from a prepared split NPZ (the run's: `ctx.split_path`)."""
    with np.load(split_npz) as z:
        tokens, segment_ids, positions = z["tokens"], z["segment_ids"], z["positions"]
    packed = segment_ids.max(axis=1) >= 2
    rng = np.random.default_rng([seed, salt])
    rows = []
    for pool, n in ((np.flatnonzero(packed), n_packed), (np.flatnonzero(~packed), n_other)):
        rows += rng.choice(pool, size=min(n, pool.size), replace=False).tolist()
    rows_arr = np.array(sorted(rows), dtype=np.int64)
    as_t = lambda a: torch.from_numpy(a[rows_arr].astype(np.int64)).to(device)  # noqa: E731
    return Windows(as_t(tokens), as_t(segment_ids), as_t(positions), rows_arr, packed[rows_arr])
