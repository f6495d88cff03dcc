"""The streaming NPZ writer: np.load reads what it writes, and the sha256 it returns is the file's."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from codonlm.data import store
from codonlm.data.store import NpzReader, whole, write_npz_streaming


@pytest.mark.parametrize("hash_chunk", [7, 1 << 20])  # many small reads behind the writer, or few
def test_streamed_npz_loads_and_reports_its_own_sha256(tmp_path, monkeypatch, hash_chunk):
    monkeypatch.setattr(store, "_HASH_CHUNK", hash_chunk)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 68, size=(50, 9), dtype=np.uint8)
    names = np.array(["a|x", "bb|yy", "c"])
    path = tmp_path / "out.npz"
    entry = write_npz_streaming(path, {"rows": (np.uint8, rows.shape, [rows[:20], rows[20:]]), "names": whole(names)})
    data = path.read_bytes()
    assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["rows"], rows)
        np.testing.assert_array_equal(npz["names"], names)
    assert np.concatenate([c.copy() for c in NpzReader(path).chunks("rows")]).tolist() == rows.tolist()


def test_failed_write_leaves_nothing(tmp_path):
    rows = np.zeros((4, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError, match="header says 5"):
        write_npz_streaming(tmp_path / "bad.npz", {"rows": (np.uint8, (5, 3), [rows])})
    assert list(tmp_path.iterdir()) == []
