"""Step 7, activation patching: the known answers (the whole last residual restores the clean run exactly;
the only differing position entering block 0 restores everything), the outputs, and the report section."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from codonlm.analysis import analyze_patching
from codonlm.analysis.context import load_context
from codonlm.config import parse_config
from codonlm.data.prepare import prepare
from codonlm.train.loop import train


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, make_corpus, tiny_config):
    """Genes of 35-55 codons: every one fits the tiny model's 64-token context."""
    tmp = tmp_path_factory.mktemp("patching")
    files, _ = make_corpus(tmp, n_genes=40, seed=1, lengths=(35, 55))
    raw = tiny_config(tmp, files, epochs=1, max_steps=15)
    raw["model"].update(dropout=0.0)
    raw["data"].update(test_frac=0.25)
    cfg = parse_config(raw)
    prepare(cfg, show_progress=False)
    train(cfg, "tiny")
    return load_context("tiny", checkpoints_dir=cfg.outputs.out_dir, runs_dir=cfg.outputs.runs_dir, quiet=True)


def test_whole_last_residual_restores_the_clean_run_exactly(ctx):
    pairs = analyze_patching.make_pairs(ctx)
    sub = pairs[pairs.corruption == "nonsense"].reset_index(drop=True)
    assert len(sub) >= 4
    clean, corrupted = analyze_patching.batch_tokens(ctx, sub)
    assert ((clean != corrupted).sum(1) == 1).all()  # one codon differs per pair
    model = ctx.model
    last = f"blocks.{ctx.cfg.model.n_layer - 1}.hook_resid_post"
    clean_logits, cache = model.run_with_cache(clean, names_filter=[last])
    position = torch.tensor(sub.position.tolist())
    with torch.no_grad():
        patched = model.run_with_hooks(corrupted, analyze_patching._position_patch(last, cache, position, None))
        corrupted_logits, _ = model(corrupted)
    assert (patched - clean_logits).abs().max().item() == 0.0
    assert (corrupted_logits - clean_logits).abs().max().item() > 1e-3  # the corruption did change the run


def test_patching_step(ctx):
    result = analyze_patching.run(ctx)
    json.dumps(result)
    out = ctx.out_dir("analyze_patching")
    grid = pd.read_csv(out / "residual.csv")
    heads = pd.read_csv(out / "heads.csv")
    L, H = ctx.cfg.model.n_layer, ctx.cfg.model.n_head
    for label in ("trained", "random_init"):
        for corruption in ("nonsense", "synonymous"):
            sub = grid[(grid.model == label) & (grid.corruption == corruption)]
            assert len(sub) == (L + 1) * (analyze_patching.OFFSETS + 1)
            for m in ("eos", "after"):
                whole = sub[(sub.layer == L) & (sub.offset == "all")][m].item()
                first = sub[(sub.layer == 0) & (sub.offset == "0")][m].item()
                if not math.isnan(whole):
                    assert whole == pytest.approx(1.0, abs=1e-4)  # known answer: the whole last residual
                    assert first == pytest.approx(1.0, abs=1e-4)  # the only differing position, before block 0
            eos_later = sub[(sub.offset != "0") & (sub.offset != "all")]["eos"].dropna()
            assert (eos_later.abs() < 1e-4).all()  # log p(EOS) at i cannot depend on later positions (causal)
            assert len(heads[(heads.model == label) & (heads.corruption == corruption)]) == L * H
    t = result["trained"]["nonsense_eos"]
    assert t["clean_minus_corrupted"] < 0  # a stop codon at i makes <EOS_CDS> right after it likelier
    assert result["n_pairs"]["nonsense"] >= 4 and result["reading"].startswith("A premature stop")
    for name in ("residual_patching.png", "head_patching.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not ctx.model.has_active_hooks() and not ctx.random_model.has_active_hooks()
