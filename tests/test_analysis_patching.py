"""Step 7, activation patching: the known answers (the whole last residual restores the clean run exactly;
the only differing position entering block 0 restores everything), the outputs, and the report section."""

from __future__ import annotations

import json
import math
import random

import pandas as pd
import pytest
import torch
from genbank_fixtures import SYNONYMS, genbank_text, write_genbank

from codonlm.analysis import analyze_patching
from codonlm.analysis.context import load_context
from codonlm.config import parse_config
from codonlm.data.prepare import prepare
from codonlm.train.loop import train


def short_gene_corpus(tmp_path, n_genes: int = 40, seed: int = 1):
    """Two GenBank files of 35-55-codon genes: every gene fits the tiny model's 64-token context."""
    rng = random.Random(seed)
    aas = [a for a in SYNONYMS if a != "*"]
    files = []
    for f in range(2):
        seq, feats = "", []
        for i in range(n_genes):
            protein = "".join(rng.choice(aas) for _ in range(rng.randint(35, 55)))
            gene = "ATG" + "".join(rng.choice(SYNONYMS[aa]) for aa in protein) + "TAA"
            seq += "ACGTACGTAC"
            feats.append((f"{len(seq) + 1}..{len(seq) + len(gene)}", {"locus_tag": f"s{f}_{i}"}))
            seq += gene
        seq += "ACGTACGTAC"
        files.append(write_genbank(tmp_path / f"s{f}.gbk.gz", [genbank_text(f"SREC{f}", seq, feats)], gz=True))
    return files


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_config):
    tmp = tmp_path_factory.mktemp("patching")
    raw = tiny_config(tmp, short_gene_corpus(tmp), epochs=1, max_steps=15)
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
