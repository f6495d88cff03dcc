"""Windows read from disk a batch at a time: the same batches as the arrays in memory, nothing of size N held."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from codonlm.config import parse_config
from codonlm.data import loader
from codonlm.data.layout import data_key, key_dir
from codonlm.data.loader import EpochSampler, WindowDataset, make_loader
from codonlm.data.prepare import prepare
from codonlm.errors import UserError


@pytest.fixture(scope="module")
def split(tmp_path_factory, make_corpus, tiny_config):
    tmp = tmp_path_factory.mktemp("loader")
    files, _ = make_corpus(tmp, n_genes=40)
    cfg = parse_config(tiny_config(tmp, files, data={"test_frac": 0.2}))
    prepare(cfg, show_progress=False)
    path = key_dir(cfg.data.processed_dir, data_key(cfg).key) / "all" / "train.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in ("tokens", "segment_ids", "positions")}
    return cfg, path, arrays


def test_batches_equal_the_stored_arrays(split):
    _, path, arrays = split
    ds = WindowDataset(path)
    n = len(ds)
    assert n == len(arrays["tokens"]) and ds.block_size == arrays["tokens"].shape[1] - 1
    rng = np.random.default_rng(0)
    for idx in (rng.permutation(n)[:7], np.arange(3, 11), np.array([n - 1, 0, 1, 2, 5])):
        batch = ds.__getitems__(idx.tolist())
        for got, name in zip(batch, ("tokens", "segment_ids", "positions"), strict=True):
            assert got.dtype == torch.int64 and got.shape == (idx.size, ds.block_size + 1)
            assert np.array_equal(got.numpy(), arrays[name][idx])
    single = ds[4]
    assert all(np.array_equal(t.numpy(), arrays[k][4]) for t, k in zip(single, arrays, strict=True))
    mask = (arrays["tokens"][:, 1:] > 3) | (arrays["tokens"][:, 1:] == 2)  # codons and <EOS_CDS>
    assert ds.scored_targets() == int(mask.sum())


def test_a_batch_reads_only_its_rows_and_nothing_of_size_n_is_held(split, monkeypatch):
    _, path, arrays = split
    ds = WindowDataset(path)
    ds.scored_targets()
    n = len(ds)
    for value in vars(ds).values():  # no array or tensor with a row per window
        assert not (isinstance(value, np.ndarray | torch.Tensor) and value.size >= n), value
    read = []
    real = os.preadv
    monkeypatch.setattr(loader.os, "preadv", lambda fd, bufs, offset: read.append(sum(memoryview(b).nbytes for b in bufs))
                        or real(fd, bufs, offset))
    ds.__getitems__([9, 2, 3, 4, 20])
    width = arrays["tokens"].shape[1]
    assert sum(read) == 5 * width * (1 + 2 + 4)  # uint8 + int16 + int32 rows, read as stored
    assert len(read) == 3 * 3  # runs [9], [2, 3, 4], [20] of each array: one read per run


def test_loader_and_sampler_order(split):
    cfg, path, arrays = split
    ds = WindowDataset(path)
    sampler = EpochSampler(len(ds), seed=3, shuffle=True)
    sampler.set_epoch(1, skip=4)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(3 * 1_000_003 + 1)).tolist()
    assert [int(i) for i in sampler] == order[4:] and len(sampler) == len(order) - 4
    ranks = [EpochSampler(len(ds), 3, True, r, 2) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    assert sorted(int(i) for s in ranks for i in s) == sorted(order[: len(ds) // 2 * 2])
    assert len(EpochSampler(len(ds), 3, False, 1, 2)) == len(range(1, len(ds), 2))
    cfg.system.num_workers = 1  # a worker process opens its own descriptor
    batches = list(make_loader(ds, cfg, sampler, batch_size=8))
    tokens = torch.cat([b[0] for b in batches])
    assert np.array_equal(tokens.numpy(), arrays["tokens"][order[4:]])


def test_truncated_or_missing_split_refused(split, tmp_path):
    _, path, _ = split
    with pytest.raises(UserError, match="prepared data not found"):
        WindowDataset(tmp_path / "none.npz")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(UserError, match="cut.npz"):
        WindowDataset(cut)
