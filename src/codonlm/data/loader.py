"""NPZ windows -> torch batches, with a resumable, rank-aware, seeded order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from codonlm.config import Config
from codonlm.data.codons import loss_mask
from codonlm.errors import UserError


class WindowDataset(Dataset):
    """Windows of one split; each item is (tokens, segment_ids, positions) as int64 tensors."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"prepared data not found: {path}; run 'codonlm prepare -c CONFIG' first")
        with np.load(path) as z:
            self.tokens = torch.from_numpy(z["tokens"].astype(np.int64))
            self.segment_ids = torch.from_numpy(z["segment_ids"].astype(np.int64))
            self.positions = torch.from_numpy(z["positions"].astype(np.int64))
            self.window_dataset = z["window_dataset"]
            self.dataset_names = [str(n) for n in z["dataset_names"]]
        self.block_size = self.tokens.shape[1] - 1

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.tokens[i], self.segment_ids[i], self.positions[i]

    def scored_targets(self) -> int:
        return int(loss_mask(self.tokens[:, 1:]).sum())


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

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        # training drops the remainder so every rank runs the same number of steps; evaluation keeps all
        usable = (self.n // self.world_size) * self.world_size if self.shuffle else self.n
        return order[:usable][self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.skip)


def make_loader(dataset: WindowDataset, cfg: Config, sampler: EpochSampler, batch_size: int) -> DataLoader:
    sysc = cfg.system
    extra = {}
    if sysc.num_workers > 0:
        extra["persistent_workers"] = sysc.persistent_workers
        if sysc.prefetch_factor is not None:
            extra["prefetch_factor"] = sysc.prefetch_factor
    # An own generator: otherwise each new iterator draws from torch's global RNG, and a resumed
    # run (RNG restored mid-epoch) would see different dropout masks than an uninterrupted one.
    generator = torch.Generator().manual_seed(cfg.outputs.seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=sysc.num_workers,
                      pin_memory=sysc.pin_memory, drop_last=False, generator=generator, **extra)


def split_path(cfg: Config, split: str) -> Path:
    return Path(cfg.data.processed_dir) / "all" / f"{split}.npz"
