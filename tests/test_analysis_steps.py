"""Analysis steps 4-6 (embeddings, attention, saliency) on a tiny model trained here, the broken-mask
check, and the measures themselves on inputs whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from codonlm.analysis import analyze_attention, analyze_embeddings, analyze_saliency
from codonlm.analysis.batching import draw_windows, length_batches, pad_pieces
from codonlm.analysis.context import load_context
from codonlm.config import parse_config
from codonlm.data.codons import PAD
from codonlm.data.prepare import prepare
from codonlm.model.tinygpt import TinyGPT
from codonlm.train.loop import train


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, make_corpus, tiny_config):
    """Two fixture genomes, multi-packed windows of 64 tokens, a 2-layer model trained 15 steps."""
    tmp = tmp_path_factory.mktemp("analysis")
    files, _ = make_corpus(tmp, n_genes=30)
    raw = tiny_config(tmp, files, epochs=1, max_steps=15)
    raw["model"].update(dropout=0.0)
    cfg = parse_config(raw)
    prepare(cfg, show_progress=False)
    train(cfg, "tiny")
    return load_context("tiny", checkpoints_dir=cfg.outputs.out_dir, runs_dir=cfg.outputs.runs_dir, quiet=True)


def _finite(obj) -> bool:
    """Every number in a (nested) summary is finite."""
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


def _pngs_written(folder, names) -> None:
    for name in names:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


# ---- step 4: embeddings ----------------------------------------------------------------------------


def test_embeddings_step(ctx):
    result = analyze_embeddings.run(ctx)
    json.dumps(result)  # what the runner writes as summary.json
    assert _finite(result)
    for label in ("trained", "random_init"):
        r = result[label]
        assert 0.0 <= r["nn1_purity"] <= 1.0 and 0.0 <= r["nn5_purity"] <= 1.0
        assert -1.0 <= r["silhouette"] <= 1.0
    assert 0.0 <= result["shuffled_labels"]["nn1_purity_mean"] <= 1.0
    assert result["chance_1nn_purity"] == pytest.approx(180 / (64 * 63))  # table 11 family sizes
    assert result["umap"].startswith(("drawn", "skipped"))
    assert "random init" in result["reading"] and f"{result['trained']['nn1_purity']:.2f}" in result["reading"]
    out = ctx.out_dir("analyze_embeddings")
    _pngs_written(out, ["pca.png", "cosine_heatmap.png"])
    table = pd.read_csv(out / "codon_embeddings.csv")
    assert len(table) == 64 and table["amino_acid"].nunique() == 21
    sim = pd.read_csv(out / "cosine_similarity.csv").set_index("codon")
    assert sim.shape == (64, 64) and np.allclose(np.diag(sim.to_numpy()), 1.0, atol=1e-5)
    assert list(sim.index[:4]) == ["GGA G", "GGC G", "GGG G", "GGT G"]  # ordered by the genetic code


def test_synonymous_purity_of_known_geometry():
    aa = analyze_embeddings.codon_amino_acids(11)
    rng = np.random.default_rng(0)
    letters = sorted(set(aa))
    clustered = np.eye(len(letters))[[letters.index(a) for a in aa]] + 0.01 * rng.normal(size=(64, 21))
    g = analyze_embeddings.geometry(clustered, aa)
    # every codon but ATG (M) and TGG (W), which have no synonym, finds a synonymous neighbour
    assert g["nn1_purity"] == pytest.approx(62 / 64)
    assert g["silhouette"] > 0.8 and g["mean_cos_synonymous"] > 0.9 > 0.1 > g["mean_cos_nonsynonymous"]
    shuffled = analyze_embeddings.shuffled_control(clustered, aa, rng)
    assert shuffled["nn1_purity_mean"] < 0.15


# ---- step 5: attention ----------------------------------------------------------------------------


def test_attention_step_mask_holds(ctx):
    result = analyze_attention.run(ctx)
    json.dumps(result)
    assert _finite(result)
    assert result["sep_mask_enabled"] and result["mask_ok"] is True and result["warnings"] == []
    assert result["cross_gene_mass_max"] == 0.0 and result["cross_gene_queries"] > 0
    assert result["n_packed_windows"] > 0
    heads = pd.read_csv(ctx.out_dir("analyze_attention") / "heads.csv")
    L, H = ctx.cfg.model.n_layer, ctx.cfg.model.n_head
    assert len(heads) == 2 * L * H and set(heads.model) == {"trained", "random_init"}
    for column in ("to_bos", "to_start", "to_previous", "cross_gene"):
        assert heads[column].between(0.0, 1.0).all()
    assert (heads.entropy >= 0).all() and (heads.entropy <= result["uniform_entropy"] + 1e-6).all()
    assert (heads.cross_gene == 0.0).all()
    assert heads.ablation_delta_loss.abs().max() > 0  # zeroing a head changes the loss
    for label in ("trained", "random_init"):
        assert result[label]["heldout_loss"] > 0 and result[label]["notable_heads"]["most_needed"]["head"][0] == "L"
    assert not ctx.model.has_active_hooks()  # ablation left no hook behind
    _pngs_written(ctx.out_dir("analyze_attention"), ["heads.png", "head_ablation.png", "attention_by_distance.png"])


def test_broken_mask_is_flagged(ctx, monkeypatch, capsys):
    """Genes of a window leak into each other when the mask ignores segments: the step must say so."""
    real_mask = TinyGPT._mask

    def leaky(self, idx, segment_ids, backend, dtype):
        return real_mask(self, idx, torch.ones_like(idx), backend, dtype)

    monkeypatch.setattr(TinyGPT, "_mask", leaky)
    result = analyze_attention.run(ctx)
    assert result["mask_ok"] is False and result["cross_gene_mass_max"] > 0.0
    assert any("leaks" in w for w in result["warnings"])
    assert "WARNING" in capsys.readouterr().out


def test_attention_measures_on_a_known_pattern():
    """A hand-made window: gene 1 (4 tokens) then gene 2 (3 tokens); every query on its previous token."""
    inputs = torch.tensor([[1, 10, 11, 12, 1, 20, 21]])
    seg = torch.tensor([[1, 1, 1, 1, 2, 2, 2]])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    select, keys = analyze_attention.selections(inputs, seg, pos)
    assert select["to_previous"].tolist() == [[False, False, True, True, False, False, True]]
    assert select["cross_gene"].tolist() == [[False, False, False, False, False, True, True]]
    assert keys["to_bos"].tolist() == [[0, 0, 0, 0, 4, 4, 4]] and keys["to_start"][0, 6] == 5


# ---- step 6: saliency -----------------------------------------------------------------------------


def test_saliency_step(ctx):
    result = analyze_saliency.run(ctx)
    json.dumps(result)
    assert _finite(result)
    window, top = ctx.cfg.outputs.saliency_window, ctx.cfg.outputs.saliency_top
    assert result["saliency_window"] == window and result["saliency_top"] == top and result["n_genes"] > 0
    for label in ("trained", "random_init"):
        r = result[label]
        gap = r["ig_completeness_gap"]  # integrated gradients add up to the change in log-probability
        assert gap["median"] < analyze_saliency.GAP_TOLERANCE and gap["rows_over_tolerance"] <= 1
        for p in ("eos", "stop_codon"):
            assert 0.0 <= r[p]["ig_share_at_distance_0"] <= r[p]["ig_share_within_3"] <= 1.0 + 1e-9
            assert 0.0 < r["mean_probability"][p] < 1.0
    out = ctx.out_dir("analyze_saliency")
    _pngs_written(out, ["saliency_by_distance.png", "motif_logos.png"])
    tops = pd.read_csv(out / "top_positions.csv")
    assert set(tops.model) == {"trained", "random_init"} and set(tops.prediction) == {"eos", "stop_codon"}
    assert tops.groupby(["model", "row"]).size().max() <= top and (tops.distance >= 0).all()
    eos_rows = tops[tops.prediction == "eos"]
    assert set(eos_rows.codon[eos_rows.distance == 0]) <= {"TAA", "TAG", "TGA"}  # read at the stop codon
    motifs = pd.read_csv(out / "motifs.csv")
    assert set(motifs.columns) >= {"kmer", "k", "count_top", "log2_enrichment", "p_value"}
    assert motifs.p_value.between(0, 1).all() and (motifs.count_top >= analyze_saliency.MIN_COUNT).all()
    assert (motifs.p_adjusted >= motifs.p_value).all() and (motifs.significant == (motifs.p_adjusted < 0.05)).all()
    by_distance = pd.read_csv(out / "saliency_by_distance.csv")
    sums = by_distance.groupby(["model", "prediction", "method"]).share.sum()
    assert ((sums > 0) & (sums <= 1 + 1e-9)).all()
    # every significant k-mer of the trained model is tested against random init; a learned one passed that test
    tested = motifs[(motifs.model == "trained") & motifs.significant]
    assert tested.p_vs_random_init_adjusted.between(0, 1).all() and motifs.p_vs_random_init[~motifs.index.isin(
        tested.index)].isna().all()
    assert (motifs.learned == (motifs.index.isin(tested.index) & (motifs.p_vs_random_init_adjusted < 0.05))).all()
    assert result["n_learned_kmers"] == int(motifs.learned.sum()) and "sign test" in result["motif_test"]
    assert (result["learned_motif"] is None) == (result["n_learned_kmers"] == 0)
    assert ("no learned motif" in result["reading"]) == (result["learned_motif"] is None)


def test_kmer_enrichment_finds_a_planted_motif():
    kmer = np.array(["AAA"] * 10 + ["CCC", "GGG", "TTT"] * 30)
    top = np.array([True] * 10 + [False, False, True] * 30)
    counts = analyze_saliency.enrichment(kmer, top).set_index("kmer")
    assert counts.loc["AAA", "count_top"] == 10 and counts.loc["AAA", "p_value"] < 1e-3
    assert counts.loc["AAA", "log2_enrichment"] > 1 > counts.loc["CCC", "log2_enrichment"]
    assert counts.loc["CCC", "count_top"] == 0 and counts.loc["CCC", "p_value"] == 1.0
    assert counts.loc["AAA", "p_adjusted"] == pytest.approx(4 * counts.loc["AAA", "p_value"])  # 4 k-mers tested


def _planted_positions(random_init_tops_ggg: bool, rows: int = 40, length: int = 12) -> pd.DataFrame:
    """Saliency positions of both models on the same contexts: every row ends in the stop codon TAA (top for
    both models, as the stop codon is for any <EOS_CDS> prediction) and holds GGG at codons 3 and 5; codon
    5's GGG is top for the trained model, and for random init only when `random_init_tops_ggg`."""
    from codonlm.data.codons import CODON_OFFSET, CODONS

    rng = np.random.default_rng(0)
    pool = [c for c in CODONS if c not in ("TAA", "TAG", "TGA", "GGG")]
    frames = []
    for model in ("trained", "random_init"):
        rng_rows = np.random.default_rng(1)  # the same contexts for both models
        for r in range(rows):
            codons = list(rng_rows.choice(pool, size=length))
            codons[3], codons[5], codons[-1] = "GGG", "GGG", "TAA"
            top = np.zeros(length, dtype=bool)
            others = rng.choice([i for i in range(length - 1) if i not in (3, 5)], size=2, replace=False)
            top[[-1, others[0], 5 if model == "trained" or random_init_tops_ggg else others[1]]] = True  # 3 per row
            frames.append(pd.DataFrame({"model": model, "prediction": "eos", "row": r, "index": np.arange(length),
                                        "token": [CODON_OFFSET + CODONS.index(c) for c in codons], "codon": codons,
                                        "top": top}))
    return pd.concat(frames, ignore_index=True)


def test_a_motif_is_learned_only_beyond_random_init():
    for random_init_tops_ggg in (False, True):
        positions = _planted_positions(random_init_tops_ggg)
        tables = analyze_saliency.kmer_tables(positions)
        motifs = analyze_saliency.against_random_init(analyze_saliency.enriched_kmers(tables, positions.top),
                                                      tables, positions)
        trained = motifs[(motifs.model == "trained") & (motifs.k == 1)].set_index("kmer")
        assert trained.loc["TAA", "significant"] and trained.loc["GGG", "significant"]
        assert trained.loc["TAA", "only_trained"] == trained.loc["TAA", "only_random_init"] == 0
        assert trained.loc["TAA", "p_vs_random_init"] == 1.0 and not trained.loc["TAA", "learned"]
        assert trained.loc["TAA", "random_init_log2_enrichment"] == pytest.approx(trained.loc["TAA", "log2_enrichment"])
        assert trained.loc["GGG", "learned"] == (not random_init_tops_ggg)
        if not random_init_tops_ggg:  # 40 occurrences top for the trained model only: p = 2^-40 before Bonferroni
            assert trained.loc["GGG", "only_trained"] == 40 and trained.loc["GGG", "only_random_init"] == 0
            assert trained.loc["GGG", "p_vs_random_init"] == pytest.approx(0.5 ** 40)
        mine = motifs[(motifs.model == "trained") & motifs.significant]
        result = {"learned_motif": analyze_saliency.motif_entry(mine[mine.learned]),
                  "trained": {"top_motif": analyze_saliency.motif_entry(mine)}}
        text = analyze_saliency.motif_reading(result, {"TAA", "TAG", "TGA"})
        if random_init_tops_ggg:
            assert result["learned_motif"] is None and result["trained"]["top_motif"]["kmer"] == "TAA"
            assert text.startswith("no learned motif beyond the stop codon: the trained model's top k-mer TAA")
        else:
            assert result["learned_motif"]["kmer"] == "GGG" and text.startswith("learned motif GGG")


# ---- batching -------------------------------------------------------------------------------------


def test_batches_pad_and_group_by_length(ctx):
    pieces = [np.arange(1, n + 1, dtype=np.uint8) for n in (5, 3, 9)]
    idx, seg, pos, lengths = pad_pieces(pieces, starts=[0, 10, 0])
    assert idx.shape == (3, 9) and lengths.tolist() == [5, 3, 9]
    assert (idx[1, 3:] == PAD).all() and seg[1].tolist() == [1, 1, 1] + [0] * 6
    assert pos[1, :3].tolist() == [10, 11, 12] and (pos[1, 3:] == 0).all()
    assert length_batches([5, 3, 9, 8], max_tokens=16) == [[1, 0], [3], [2]]
    windows = draw_windows(ctx.split_path("val"), 3, 2, seed=0)
    assert 0 < windows.packed.sum() <= 3 and (~windows.packed).sum() <= 2
    assert all(windows.segment_ids[i].max() >= 2 for i in np.flatnonzero(windows.packed))
    again = draw_windows(ctx.split_path("val"), 3, 2, seed=0)
    assert (again.rows == windows.rows).all()  # seeded
