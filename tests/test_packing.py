"""Windows: every codon a target exactly once, segments and positions right, tails open windows."""

from __future__ import annotations

import numpy as np
import pytest

from codonlm.data.codons import BOS, EOS, PAD, SEP, frame_gene, loss_mask
from codonlm.data.packing import WindowPacker, chunk_gene, render


def _genes(rng, n, lo=3, hi=60):
    return [frame_gene(rng.integers(4, 68, size=rng.integers(lo, hi), dtype=np.uint8)) for _ in range(n)]


def _pack(genes, window, multi, max_chunks=None):
    packer = WindowPacker(window, multi, pool_size=4)
    out, lost = [], 0
    for g in genes:
        pieces, lo = chunk_gene(g, window, max_chunks)
        lost += lo
        for p in pieces:
            out.extend(packer.add(p))
    out.extend(packer.flush())
    return render(out, window), lost


@pytest.mark.parametrize("multi", [True, False])
def test_each_target_exactly_once(multi):
    rng = np.random.default_rng(0)
    genes = _genes(rng, 200, hi=90)
    window = 33
    batch, lost = _pack(genes, window, multi)
    assert lost == 0
    scored = loss_mask(batch.tokens[:, 1:])
    assert scored.sum() == sum(g.size - 1 for g in genes)
    # multiset of (segment-local position, token) of scored targets equals the genes' targets
    got = sorted(zip(batch.positions[:, 1:][scored].tolist(), batch.tokens[:, 1:][scored].tolist(), strict=True))
    want = sorted((i, int(t)) for g in genes for i, t in enumerate(g) if i > 0)
    assert got == want
    # a scored target always shares its segment with its input token
    same = batch.segment_ids[:, 1:] == batch.segment_ids[:, :-1]
    assert same[scored].all()


def test_layout_multi():
    g1, g2 = frame_gene(np.array([10, 11], np.uint8)), frame_gene(np.array([20], np.uint8))
    batch, _ = _pack([g1, g2], 12, multi=True)
    assert batch.tokens.tolist() == [[BOS, 10, 11, EOS, SEP, BOS, 20, EOS, PAD, PAD, PAD, PAD]]
    assert batch.segment_ids.tolist() == [[1, 1, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0]]
    assert batch.positions.tolist()[0][:8] == [0, 1, 2, 3, 4, 0, 1, 2]


def test_long_gene_chunks_overlap_by_one_and_tail_opens_window():
    g = frame_gene(np.arange(4, 4 + 20, dtype=np.uint8))  # 22 tokens
    short = frame_gene(np.array([30], np.uint8))
    batch, _ = _pack([g, short], 8, multi=True)
    starts = [row[0] for row in batch.positions.tolist()]
    assert 0 in starts and 7 in starts and 14 in starts and 21 not in starts
    # a window that does not open with <BOS_CDS> opens with a continuation chunk of g: the gene's own
    # tokens from the chunk's start, at window position 0
    continuations = 0
    for tokens, positions, segments in zip(batch.tokens, batch.positions, batch.segment_ids, strict=True):
        if tokens[0] == BOS:
            continue
        start, n = int(positions[0]), int((segments == segments[0]).sum())
        assert start in (7, 14)
        assert tokens[:n].tolist() == g[start : start + n].tolist()
        continuations += 1
    assert continuations == 2


def test_windows_per_seq_cap_reports_lost_targets():
    g = frame_gene(np.arange(4, 4 + 20, dtype=np.uint8))
    _, lost = _pack([g], 8, multi=False, max_chunks=2)
    assert lost == 21 - 14
