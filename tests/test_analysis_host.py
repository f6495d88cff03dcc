"""The analysis steps on a host-conditioned run (model.condition_on_host): every gene is fed as the model
trained on it, `<BOS_CDS> <host> c1 .. cn <EOS_CDS>`, and every position-based quantity still counts codons
(codon 1 is the start codon; no row, query or probe position is the host token)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from codonlm.analysis import (
    analyze_attention,
    analyze_embeddings,
    analyze_patching,
    analyze_saliency,
    probe_linear,
    probe_next_token,
    summary,
)
from codonlm.analysis.context import load_context
from codonlm.config import parse_config
from codonlm.data.codons import BOS, CODON_OFFSET, CODONS, HOST_OFFSET, VOCAB_SIZE
from codonlm.data.prepare import prepare
from codonlm.evaluate.perplexity import score_genes
from codonlm.train.loop import train


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, make_corpus, tiny_config):
    """The tiny fixture config with host tokens: two genomes of 35-55-codon genes (each fits the 64-token
    context with its host token), a 2-layer model trained 15 steps."""
    tmp = tmp_path_factory.mktemp("analysis_host")
    files, _ = make_corpus(tmp, n_genes=40, seed=1, lengths=(35, 55))
    raw = tiny_config(tmp, files, model={"condition_on_host": True, "dropout": 0.0}, epochs=1, max_steps=15)
    raw["data"].update(test_frac=0.25)
    cfg = parse_config(raw)
    prepare(cfg, show_progress=False)
    train(cfg, "hosty")
    return load_context("hosty", checkpoints_dir=cfg.outputs.out_dir, runs_dir=cfg.outputs.runs_dir, quiet=True)


def _host_of(ctx, split: str, g: int) -> int:
    genes = ctx.split(split)
    return HOST_OFFSET + ctx.cfg.model.hosts.index(genes.dataset_names[genes.groups[g]])


def test_model_genes_carry_their_genomes_host_token(ctx):
    test = ctx.split("test")
    picked = list(range(len(test.genes)))
    assert ctx.host_shift == 1 and len({int(d) for d in test.groups}) == 2
    for g, fed in zip(picked, ctx.model_genes("test", picked), strict=True):
        stored = test.genes[g]
        assert fed[0] == BOS and fed[1] == _host_of(ctx, "test", g)
        assert fed[2:].tolist() == stored[1:].tolist()  # codon k of the stored gene is token k + 1


def test_summary_scores_genes_with_their_host(ctx):
    result = summary.run(ctx)
    picked = ctx.sample_genes("test", summary.GENES_PER_GENOME, salt=1)
    genes = ctx.split("test")
    scores = score_genes(ctx.model, [genes.genes[g] for g in picked], hosts=[_host_of(ctx, "test", g) for g in picked],
                         stride=ctx.cfg.model.block_size)
    expected = math.exp(-np.concatenate([s.logp for s in scores]).mean())
    assert result["perplexity"]["trained"] == pytest.approx(expected, rel=1e-6)


def test_next_token_step_starts_genes_after_the_host_token(ctx):
    result = probe_next_token.run(ctx)
    json.dumps(result)
    usage, first = probe_next_token.genome_usage(ctx)
    prompts, weights = probe_next_token.gene_starts(ctx, first)
    hosts = [HOST_OFFSET + i for i in range(len(ctx.cfg.model.hosts))]
    assert [p.tolist() for p in prompts] == [[BOS, h] for h in hosts]
    assert weights.tolist() == first.sum(1).tolist() and weights.min() > 0
    with torch.no_grad():
        per_host = [torch.softmax(ctx.model(torch.tensor([[BOS, h]]))[0][0, -1, :VOCAB_SIZE].float(), -1)
                    for h in hosts]
    mixture = sum(w * p for w, p in zip(weights, per_host, strict=True)) / weights.sum()
    atg = CODON_OFFSET + CODONS.index("ATG")
    assert result["first_codon_atg"]["trained"] == pytest.approx(float(mixture[atg]), rel=1e-5)
    assert result["genes"] > 0 and math.isfinite(result["loss_nats"]["trained"])


def test_linear_probes_read_the_codon_position_behind_the_host_token(ctx):
    test = ctx.split("test")
    picked = ctx.sample_genes("test", probe_linear.GENES_PER_GENOME, salt=3)
    genes = [test.genes[g] for g in picked]
    probes = probe_linear.sample_positions(ctx, genes, test.groups[picked].astype(np.int64))
    assert probes.position.min() >= 1  # codon numbers: 1 is the start codon
    feats, _ = probe_linear.residual_features(ctx, ctx.model, ctx.model_genes("test", picked), probes, "trained")
    current = np.array([genes[i][t] for i, t in zip(probes.gene, probes.position, strict=True)])
    embed = ctx.model.wte.weight.detach()[torch.from_numpy(current.astype(np.int64))].float().numpy()
    assert np.allclose(feats[0], embed, atol=1e-5)  # hook_embed at codon k's token is codon k's embedding
    result = probe_linear.run(ctx)
    assert result["positions"] == probes.gene.size


def test_embeddings_step_takes_the_64_codon_rows(ctx):
    result = analyze_embeddings.run(ctx)
    assert result["n_codons"] == 64 and 0.0 <= result["trained"]["nn1_purity"] <= 1.0


def test_attention_after_a_host_token_counts_codons():
    """A hand-made window: <BOS_CDS> <host> c1 c2 c3; the host token is no query, the start codon is c1."""
    inputs = torch.tensor([[BOS, HOST_OFFSET + 1, 10, 11, 12]])
    seg = torch.ones_like(inputs)
    pos = torch.arange(5)[None]
    select, keys = analyze_attention.selections(inputs, seg, pos, first=2)
    assert select["entropy"].tolist() == [[False, False, True, True, True]]
    assert select["to_start"].tolist() == [[False, False, False, True, True]]
    assert select["to_previous"].tolist() == [[False, False, False, True, True]]
    assert keys["to_start"][0, 4] == 2


def test_attention_step(ctx):
    result = analyze_attention.run(ctx)
    json.dumps(result)
    windows = analyze_attention.draw_windows(ctx.split_path("val"), analyze_attention.N_PACKED,
                                             analyze_attention.N_OTHER, ctx.seed, salt=5)
    codons = (windows.tokens[:, :-1] >= CODON_OFFSET) & (windows.tokens[:, :-1] < HOST_OFFSET)
    assert (windows.tokens >= HOST_OFFSET).any()  # the windows hold host tokens ...
    assert result["n_query_codons"] == int(codons.sum())  # ... which are never queries
    assert result["mask_ok"] is not False


def test_saliency_rows_are_codons_numbered_from_the_start_codon(ctx):
    genes = ctx.split("val")
    picked = ctx.sample_genes("val", analyze_saliency.GENES_PER_DATASET, salt=6)
    fed = ctx.model_genes("val", picked)
    contexts = analyze_saliency.Contexts.build(fed, ctx.cfg.model.block_size)
    attr = analyze_saliency.attributions(ctx.model, contexts, ctx.device)
    table = analyze_saliency.position_table(contexts, attr, picked, genes, ctx)
    for r in range(len(contexts)):
        rows = table[table.row == r]
        g = picked[int(contexts.gene[r])]
        n = len(genes.genes[g]) - 2  # codons, stop included
        read = n if contexts.kind[r] == "eos" else n - 1  # the eos prediction reads the stop codon too
        assert rows.codon_number.tolist() == list(range(read + 1))  # <BOS_CDS> = 0, then codons 1..read
        assert rows.token.tolist() == genes.genes[g][: read + 1].tolist()  # no host-token row
    logp = [s.logp for s in score_genes(ctx.model, [genes.genes[g] for g in picked],
                                        hosts=[_host_of(ctx, "val", g) for g in picked])]
    eos = attr["logp"][contexts.kind == "eos"]
    assert np.allclose(eos, [lp[-1] for lp in logp], atol=1e-4)  # the model read each gene with its host
    result = analyze_saliency.run(ctx)
    assert result["trained"]["mean_probability"]["eos"] == pytest.approx(float(np.exp(eos).mean()), rel=1e-4)


def test_patching_corrupts_codon_i_behind_the_host_token(ctx):
    pairs = analyze_patching.make_pairs(ctx)
    sub = pairs[pairs.corruption == "nonsense"].reset_index(drop=True)
    assert len(sub) >= 4
    clean, corrupted = analyze_patching.batch_tokens(ctx, sub)
    at = analyze_patching.token_positions(ctx, sub)
    rows = torch.arange(len(sub))
    assert clean[:, 1].tolist() == [_host_of(ctx, "test", g) for g in sub.gene]
    assert clean[rows, at].tolist() == sub.clean.tolist() and corrupted[rows, at].tolist() == sub.corrupted.tolist()
    assert ((clean != corrupted).sum(1) == 1).all()
    json.dumps(analyze_patching.run(ctx))
    grid = pd.read_csv(ctx.out_dir("analyze_patching") / "residual.csv")
    L = ctx.cfg.model.n_layer
    for label in ("trained", "random_init"):
        sub_grid = grid[(grid.model == label) & (grid.corruption == "nonsense")]
        for m in ("eos", "after"):
            first = sub_grid[(sub_grid.layer == 0) & (sub_grid.offset == "0")][m].item()
            whole = sub_grid[(sub_grid.layer == L) & (sub_grid.offset == "all")][m].item()
            if not math.isnan(whole):  # known answers: the one differing position before block 0 restores all
                assert first == pytest.approx(1.0, abs=1e-4) and whole == pytest.approx(1.0, abs=1e-4)
