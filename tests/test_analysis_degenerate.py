"""Analysis steps on a run where some measures cannot be made: one genome of long genes, one gene per
window (pack_mode single). What cannot be measured is said to be so, with the reason, never reported as
a number (a mask "leak" of 0, a genome-of-origin accuracy of 1.00 against 1.00, a NaN with a warning)."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pandas as pd
import pytest
from genbank_fixtures import SYNONYMS, genbank_text, write_genbank

from codonlm.analysis import analyze_attention, probe_linear, probe_next_token
from codonlm.analysis.context import load_context
from codonlm.config import parse_config
from codonlm.data.prepare import prepare
from codonlm.train.loop import train


def one_genome_of_long_genes(path: Path, n_genes: int = 40, seed: int = 0) -> Path:
    """A gzipped GenBank genome of random genes of 100-300 codons (longer than the 64-token window)."""
    rng = random.Random(seed)
    aas = [a for a in SYNONYMS if a != "*"]
    seq, feats = "", []
    for i in range(n_genes):
        gene = "ATG" + "".join(rng.choice(SYNONYMS[rng.choice(aas)]) for _ in range(rng.randint(100, 300))) + "TAA"
        seq += "ACGTACGTAC"
        feats.append((f"{len(seq) + 1}..{len(seq) + len(gene)}", {"locus_tag": f"solo_{i}"}))
        seq += gene
    return write_genbank(path, [genbank_text("SOLO", seq + "ACGTACGTAC", feats)], gz=True)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_config):
    tmp = tmp_path_factory.mktemp("degenerate")
    raw = tiny_config(tmp, [one_genome_of_long_genes(tmp / "solo.gbk.gz")], epochs=1, max_steps=6,
                      data={"pack_mode": "single", "test_frac": 0.2})
    raw["model"].update(dropout=0.0)
    cfg = parse_config(raw)
    prepare(cfg, show_progress=False)
    train(cfg, "solo")
    return load_context("solo", checkpoints_dir=cfg.outputs.out_dir, runs_dir=cfg.outputs.runs_dir, quiet=True)


def run_without_runtime_warnings(step, ctx) -> dict:
    """The step's result; a numpy RuntimeWarning (mean of an empty slice, 0/0) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = step.run(ctx)
    json.dumps(result, allow_nan=False)  # what the runner writes: no NaN in place of "not applicable"
    return result


def test_mask_not_checked_is_not_a_leak(ctx):
    """No query has another gene before it in its window: nothing could leak, so the mask is 'not checked'."""
    result = run_without_runtime_warnings(analyze_attention, ctx)
    assert result["sep_mask_enabled"] and result["cross_gene_queries"] == 0 and result["n_packed_windows"] == 0
    assert result["mask_ok"] is None and result["mask_check"] == "not checked"
    assert "LEAK" not in result["reading"].upper() and "not checked" in result["reading"]
    assert any("not checked" in w for w in result["warnings"])


def test_probe_tasks_with_one_class_or_too_few_genes_are_not_applicable(ctx):
    result = run_without_runtime_warnings(probe_linear, ctx)
    na = result["not_applicable"]
    assert na["genome"] == "only one genome in the run"
    assert "gc3" in na and "too few genes" in na["gc3"]  # a handful of probe-test genes over 3 GC3 bins
    for task in ("genome", "gc3"):
        assert task not in result["best_layer_accuracy"] and task not in result["majority_class"]
        assert f"{'GC3' if task == 'gc3' else task} not applicable" in result["reading"]
    assert set(result["best_layer_accuracy"]) == {"current_aa", "next_aa", "relative_position"}
    table = pd.read_csv(ctx.out_dir("probe_linear") / "accuracy_by_layer.csv")
    assert set(table.task) == {"current_aa", "next_aa", "relative_position"}  # nothing fitted on them


def test_eos_after_stop_not_applicable_when_no_gene_ends_in_the_window(ctx):
    result = run_without_runtime_warnings(probe_next_token, ctx)
    assert result["p_eos_after_stop"] == {"trained": None, "random_init": None}
    assert "no sampled gene ends within" in result["not_applicable"]["p_eos_after_stop"]
    assert "after the stop not applicable" in result["reading"] and "nan" not in result["reading"]
    assert 0 < result["p_eos_elsewhere"]["trained"] < 1
