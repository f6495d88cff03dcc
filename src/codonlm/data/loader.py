"""Prepared windows -> torch batches, read from disk a batch at a time, with a resumable, rank-aware order.

Nothing of the size of the corpus is held in memory: a batch's rows are read from the NPZ in
their stored dtypes (uint8 tokens, int16 segment ids, int32 positions) with positioned reads
(os.preadv, one per run of consecutive rows) and converted to int64 for that batch only. Not an
mmap: pages a process has mapped count in its resident memory, so an mmap'd corpus looks like a
growing process; the kernel's page cache keeps hot rows in RAM either way.
"""

from __future__ import annotations

import os
import signal
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from codonlm.config import Config
from codonlm.data.codons import loss_mask
from codonlm.data.store import NpzReader
from codonlm.errors import UserError

WINDOW_ARRAYS = ("tokens", "segment_ids", "positions")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class WindowDataset(Dataset):
    """Windows of one split, read from disk on demand; a batch is (tokens, segment_ids, positions), int64 [B, W]."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"prepared data not found: {self.path}; run 'codonlm prepare -c CONFIG' first")
        try:
            reader = NpzReader(self.path)
            self._arrays = {name: reader.locate(name) for name in WINDOW_ARRAYS}  # dtype, shape, byte offset
            with np.load(self.path, allow_pickle=False) as z:
                self.dataset_names = [str(n) for n in z["dataset_names"]]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"{self.path}: unreadable prepared data ({str(exc)[:100]}); re-run 'codonlm prepare'") from None
        self.n, width = self._arrays["tokens"][1]
        self.block_size = width - 1
        for name, (dtype, shape, offset) in self._arrays.items():
            if shape != (self.n, width) or offset + dtype.itemsize * self.n * width > self.path.stat().st_size:
                raise UserError(f"{self.path}: '{name}' is truncated or malformed; re-run 'codonlm prepare'")
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._scored: int | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(t[0] for t in self.__getitems__([i]))

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """The windows at `indices` as one batch (DataLoader calls this once per batch)."""
        idx = np.asarray(indices, dtype=np.int64)
        return tuple(torch.from_numpy(self.rows(name, idx).astype(np.int64)) for name in WINDOW_ARRAYS)

    def rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` of one window array in its stored dtype, read with one pread per run of consecutive rows."""
        dtype, (_, width), offset = self._arrays[name]
        row_bytes = dtype.itemsize * width
        out = np.empty((idx.size, width), dtype=dtype)
        raw = out.view(np.uint8).reshape(idx.size, row_bytes)
        starts = np.flatnonzero(np.diff(idx, prepend=-2) != 1)  # first position of each run
        for a, b in zip(starts, [*starts[1:], idx.size], strict=True):
            want = (b - a) * row_bytes
            got = os.preadv(self._file(), [raw[a:b]], offset + int(idx[a]) * row_bytes)
            if got != want:
                raise UserError(f"{self.path}: ends inside '{name}' (truncated?); re-run 'codonlm prepare'")
        return out

    def _file(self) -> int:
        """This process's descriptor (DataLoader workers each open their own)."""
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd, self._fd_pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_fd_pid": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            os.close(self._fd)

    def scored_targets(self) -> int:
        """Targets that count in the loss, over the whole split (read in chunks of rows)."""
        if self._scored is None:
            step = 1 << 15
            self._scored = sum(int(loss_mask(self.rows("tokens", np.arange(a, min(a + step, self.n)))[:, 1:]).sum())
                               for a in range(0, self.n, step))
        return self._scored


class EpochSampler(Sampler[int]):
    """Seeded permutation per epoch, this rank's share of it, starting after `skip` samples.

    Order depends only on (seed, epoch), so a resumed run sees exactly the batches an
    uninterrupted one would; rank r of w takes every w-th index, so w ranks with batch b
    together see the same samples as one rank with batch w*b.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> np.ndarray | range:
        """This rank's indices of the epoch (int32 for a shuffle: 4 bytes per window, never Python ints)."""
        # training drops the remainder so every rank runs the same number of steps; evaluation keeps all
        usable = (self.n // self.world_size) * self.world_size if self.shuffle else self.n
        if not self.shuffle:
            return range(self.rank, usable, self.world_size)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g, dtype=torch.int32).numpy()  # the same order as int64
        return order[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        usable = (self.n // self.world_size) * self.world_size if self.shuffle else self.n
        return max(0, len(range(self.rank, usable, self.world_size)) - self.skip)


def _whole_batch(batch: Batch) -> Batch:
    """collate_fn: WindowDataset.__getitems__ already returns the batch."""
    return batch


def _ignore_ctrl_c(worker_id: int) -> None:
    """worker_init_fn: Ctrl-C reaches every process of the terminal's group; a worker it killed would fail
    the trainer's next batch, so workers leave it to the trainer (which saves last.pt and stops them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: WindowDataset, cfg: Config, sampler: EpochSampler, batch_size: int) -> DataLoader:
    sysc = cfg.system
    extra = {}
    if sysc.num_workers > 0:
        extra["worker_init_fn"] = _ignore_ctrl_c
        extra["persistent_workers"] = sysc.persistent_workers
        if sysc.prefetch_factor is not None:
            extra["prefetch_factor"] = sysc.prefetch_factor
    # An own generator: otherwise each new iterator draws from torch's global RNG, and a resumed
    # run (RNG restored mid-epoch) would see different dropout masks than an uninterrupted one.
    generator = torch.Generator().manual_seed(cfg.outputs.seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=sysc.num_workers,
                      pin_memory=sysc.pin_memory, drop_last=False, generator=generator, collate_fn=_whole_batch,
                      **extra)
