"""Windows: every codon a target exactly once, segments and positions right, tails open windows."""

from __future__ import annotations

import numpy as np
import pytest

from codonlm.data import parts
from codonlm.data.codons import BOS, EOS, PAD, SEP, frame_gene, frame_genes, loss_mask
from codonlm.data.packing import WindowPacker, chunk_genes, render


def _genes(rng, n, lo=3, hi=60):
    return [frame_gene(rng.integers(4, 68, size=rng.integers(lo, hi), dtype=np.uint8)) for _ in range(n)]


def _pack(genes, window, multi, max_chunks=None):
    packer = WindowPacker(window, multi, pool_size=4)
    pieces, lost = chunk_genes([g.size for g in genes], window, max_chunks)
    out = packer.pack(pieces.size.tolist(), pieces.continuation.tolist(), 0)
    out.extend(packer.flush())
    return render(out, pieces, np.concatenate(genes), window), lost


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


def test_frame_genes_lays_frame_gene_end_to_end():
    rng = np.random.default_rng(1)
    codons = [rng.integers(4, 68, size=n, dtype=np.uint8) for n in (1, 5, 2, 9)]
    flat = frame_genes(np.concatenate(codons), np.array([c.size for c in codons]))
    assert flat.tolist() == np.concatenate([frame_gene(c) for c in codons]).tolist()


@pytest.mark.parametrize(("multi", "max_chunks"), [(True, None), (False, None), (True, 2), (False, 1)])
def test_sink_renders_the_same_windows_in_one_batch_or_many(tmp_path, monkeypatch, multi, max_chunks):
    """Pieces left in open windows at a render move to a fresh table; the windows must not change."""
    rng = np.random.default_rng(2)
    records = [[rng.integers(4, 68, size=rng.integers(3, 90), dtype=np.uint8) for _ in range(rng.integers(1, 30))]
               for _ in range(12)]

    def windows(render_every):
        monkeypatch.setattr(parts, "_RENDER_EVERY", render_every)
        sink = parts.SplitSink(tmp_path / str(render_every), 33, multi, max_chunks)
        for genes in records:
            sink.add_genes(np.concatenate(genes), np.array([g.size for g in genes]), [""] * len(genes))
        sink.close()
        source = parts.SinkSource(sink)
        return sink.counts(), [np.concatenate([c.copy() for c in source.column(name)])
                               for name in ("tokens", "segment_ids", "positions", "gene_tokens")]

    counts, arrays = windows(10**9)
    assert counts["windows"] > 20
    for render_every in (1, 7):
        other_counts, other = windows(render_every)
        assert other_counts == counts
        for a, b in zip(arrays, other, strict=True):
            np.testing.assert_array_equal(a, b)
