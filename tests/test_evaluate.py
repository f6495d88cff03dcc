"""Held-out evaluation, FASTA scoring and queries on a tiny model trained in the test itself."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.codons import clean_dna
from codonlm.data.layout import run_split_path
from codonlm.data.prepare import prepare
from codonlm.data.records import read_records
from codonlm.errors import UserError
from codonlm.evaluate.perplexity import gene_windows, score_genes
from codonlm.evaluate.query import run_query
from codonlm.model.load import load_model
from codonlm.train import loop


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_corpus, tiny_config):
    tmp = tmp_path_factory.mktemp("evalrun")
    files, _ = make_corpus(tmp, n_genes=40)
    raw = tiny_config(tmp, files, epochs=1, max_steps=15)
    raw["model"]["block_size"] = 32  # genes are longer: scoring must slide
    raw["model"]["dropout"] = 0.0
    cfg = parse_config(raw)
    prepare(cfg, show_progress=False)
    loop.train(cfg, "ev")
    return cfg


@pytest.mark.parametrize("stride", [1, 8])
def test_sliding_window_scoring_gives_each_codon_its_context(trained, stride):
    model, cfg, _ = load_model("ev", trained.outputs.out_dir)
    z = np.load(run_split_path(cfg, "ev", "test"))
    off, toks = z["gene_offsets"], z["gene_tokens"]
    gene = toks[off[0] : off[1]]
    assert gene.size > 3 * cfg.model.block_size
    s = score_genes(model, [gene], stride=stride)[0]
    T = cfg.model.block_size
    assert s.logp.size == gene.size - 1  # every codon and <EOS_CDS> scored once
    ref, context = [], []
    with torch.no_grad():
        for a, lo, hi in gene_windows(gene.size - 1, T, stride):
            ctx = torch.from_numpy(gene[a : a + T].astype(np.int64))[None]
            logits, _ = model(ctx, segment_ids=torch.ones_like(ctx))
            lp = torch.log_softmax(logits[0].float(), -1)
            for t in range(lo, hi + 1):
                ref.append(lp[t - a - 1, int(gene[t])].item())
                context.append(t - a)
    np.testing.assert_allclose(s.logp, np.array(ref), atol=1e-5)
    assert min(context[T:]) >= T - stride + 1  # past the first window, nearly full context
    if stride == 1:  # stride 1 equals scoring each codon with its own window of T tokens
        i = T + 5
        ctx = torch.from_numpy(gene[i - T : i].astype(np.int64))[None]
        with torch.no_grad():
            logits, _ = model(ctx, segment_ids=torch.ones_like(ctx))
        own = torch.log_softmax(logits[0, -1].float(), -1)[int(gene[i])].item()
        assert abs(own - s.logp[i - 1]) < 1e-5


def test_default_scoring_is_sliding_window_attention_with_each_token_computed_once(trained):
    """Known answer: the default (stride None) equals decoding the gene token by token with a key/value
    cache cut to the last block_size - 1 tokens (every token attends to its last block_size tokens at every
    layer), and within the first window it equals a plain forward pass."""
    model, cfg, _ = load_model("ev", trained.outputs.out_dir)
    z = np.load(run_split_path(cfg, "ev", "test"))
    off, toks = z["gene_offsets"], z["gene_tokens"]
    T = cfg.model.block_size
    genes = [toks[off[i] : off[i + 1]] for i in range(3)]
    assert genes[0].size > 3 * T
    scores = score_genes(model, genes, max_tokens=3 * T)  # a budget that splits the batch
    for gene, s in zip(genes, scores, strict=True):
        assert s.logp.size == gene.size - 1
        ref, past = [], None
        with torch.no_grad():
            for t in range(gene.size - 1):
                tok = torch.tensor([[int(gene[t])]])
                logits, past = model.extend(tok, past, t)
                past = [(k[:, :, -(T - 1) :], v[:, :, -(T - 1) :]) for k, v in past]
                ref.append(torch.log_softmax(logits[0].float(), -1)[int(gene[t + 1])].item())
            ctx = torch.from_numpy(gene[:T].astype(np.int64))[None]
            plain = torch.log_softmax(model(ctx, segment_ids=torch.ones_like(ctx))[0][0].float(), -1)
        np.testing.assert_allclose(s.logp, np.array(ref), atol=1e-4)
        first = plain[torch.arange(T), torch.from_numpy(gene[1 : T + 1].astype(np.int64))].numpy()
        np.testing.assert_allclose(s.logp[:T], first, atol=1e-5)
    # the strided definition reads the same gene differently past the first window
    strided = score_genes(model, genes[:1], stride=T // 4)[0]
    np.testing.assert_allclose(strided.logp[:T], scores[0].logp[:T], atol=1e-5)
    assert np.abs(strided.logp[T:] - scores[0].logp[T:]).max() > 1e-4


def test_evaluate_writes_metrics_and_baselines(trained, capsys):
    assert main(["evaluate", "ev", "--checkpoints-dir", trained.outputs.out_dir]) == 0
    folder = f"{trained.outputs.runs_dir}/ev/evaluate"
    m = json.load(open(f"{folder}/metrics.json"))
    for key in ("top1_accuracy", "top5_accuracy", "aa_accuracy", "synonymous_mass", "ece"):
        assert 0.0 <= m["model"][key] <= 1.0
    assert m["model"]["top5_accuracy"] >= m["model"]["top1_accuracy"]
    assert m["model"]["synonymous_mass"] >= 0.0 and 1 < m["model"]["perplexity"] < 68
    assert set(m["baselines"]) == {"unigram", "per_genome_unigram", "kneser_ney_3", "kneser_ney_5"}
    assert set(m["beats_baselines"]) == set(m["baselines"])
    summary = pd.read_csv(f"{folder}/summary.csv")
    assert summary["n_targets"].nunique() == 1  # everyone scored on the same targets
    per_ds = pd.read_csv(f"{folder}/per_dataset.csv")
    assert set(per_ds["dataset"]) <= {"ds0", "ds1"} and len(per_ds) >= 5
    by_pos = pd.read_csv(f"{folder}/by_position.csv")
    assert by_pos["n_targets"][by_pos.model == "model"].sum() == m["model"]["n_targets"]
    for png in ("by_position.png", "calibration.png", "per_dataset.png"):
        assert (open(f"{folder}/{png}", "rb").read(8)).startswith(b"\x89PNG")
    assert "beats" in capsys.readouterr().out


def test_fasta_scoring_one_row_per_sequence(trained, tmp_path):
    fasta = tmp_path / "x.fasta"
    fasta.write_text(">a\nATGAAAGCATAA\n>b desc\natg gcc\nGCC TGA\n")
    out = tmp_path / "scores.csv"
    assert main(["eval-perplexity", "ev", "--fasta", str(fasta), "--out", str(out),
                 "--checkpoints-dir", trained.outputs.out_dir]) == 0
    table = pd.read_csv(out)
    assert list(table["id"]) == ["a", "b"] and list(table["n_codons"]) == [4, 4]
    assert np.allclose(table["perplexity"], np.exp(-table["log_likelihood"] / 5))  # 4 codons + EOS


@pytest.mark.parametrize("text,needle", [("ATGAA", "not a multiple of 3"), ("ATGNAA", "position 4"),
                                         ("", "empty")])
def test_bad_dna_rejected(text, needle):
    with pytest.raises(UserError, match=needle):
        clean_dna(text)


def test_dna_cleaning_accepts_case_u_whitespace():
    assert clean_dna("aug aaa\nuaa\n") == "ATGAAATAA"
    assert read_records(stdin_text="atgaaa\ntaa\n").pairs() == [("seq1", "ATGAAATAA")]


def test_query_modes(trained):
    model, _, _ = load_model("ev", trained.outputs.out_dir)
    rec = [("g", "ATGAAAGCAGCTGGT")]
    nxt = run_query(model, "next", rec, top_k=5, out=io.StringIO())[0]["next"]
    assert len(nxt) == 5 and sum(c["probability"] for c in nxt) <= 1.0 + 1e-6
    a = run_query(model, "generate", rec, seed=4, max_codons=30, out=io.StringIO())
    b = run_query(model, "generate", rec, seed=4, max_codons=30, out=io.StringIO())
    assert a == b and a[0]["dna"].startswith(rec[0][1]) and len(a[0]["dna"]) % 3 == 0
    sc = run_query(model, "score", rec, out=io.StringIO())[0]
    assert len(sc["per_codon_log_likelihood"]) == 6  # 5 codons + EOS
    assert math.isclose(sc["log_likelihood"], sum(sc["per_codon_log_likelihood"]), rel_tol=1e-5)
    table = io.StringIO()
    summary = run_query(model, "mutate", [("g", "ATGAAATAA")], out=table)
    mut = pd.read_csv(io.StringIO(table.getvalue()), sep="\t")
    assert len(mut) == 3 * 63 == summary["variants"]
    assert {"synonymous", "missense", "nonsense", "stop_loss"} == set(mut["kind"])
    assert (mut[(mut.wt_codon == "AAA") & (mut.mut_codon == "AAG")]["kind"] == "synonymous").all()


def test_query_cli_json_and_bad_dna(trained, capsys):
    args = ["query", "ev", "--checkpoints-dir", trained.outputs.out_dir]
    assert main([*args, "--mode", "score", "--dna", "ATGAAATAA", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["n_codons"] == 3
    assert main([*args, "--mode", "score", "--dna", "ATGXAATAA"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "position 4" in err[0]


def test_export_hf_cli_loads_with_transformers(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    assert main(["export-hf", "ev", str(out), "--checkpoints-dir", trained.outputs.out_dir]) == 0
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    model, _, _ = load_model("ev", trained.outputs.out_dir)
    gene = torch.tensor([[1, 18, 4, 30, 60, 2]])
    with torch.no_grad():
        ours, _ = model(gene)
        theirs = hf(gene).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert json.loads((out / "itos.json").read_text())[1] == "<BOS_CDS>"


def test_evaluate_reports_perplexity_by_identity_to_training(trained):
    """Each test gene's best identity to a training protein (MMseqs2), and every model's perplexity per bin."""
    import shutil

    if shutil.which("mmseqs") is None:
        pytest.skip("MMseqs2 is not installed (./scripts/setup_env.sh installs it when run as root)")
    assert main(["evaluate", "ev", "--checkpoints-dir", trained.outputs.out_dir]) == 0
    folder = f"{trained.outputs.runs_dir}/ev/evaluate"
    m = json.load(open(f"{folder}/metrics.json"))
    genes = pd.read_csv(f"{folder}/test_identity.csv")
    assert len(genes) == m["genes"] and genes["best_identity"].between(0, 1).all()
    table = pd.read_csv(f"{folder}/by_identity.csv")
    assert set(table["model"]) == {"model", *m["baselines"]}
    ours = table[table.model == "model"]
    assert ours["genes"].sum() == m["genes"] and ours["n_targets"].sum() == m["model"]["n_targets"]
    edges = [0.0, 0.3, 0.5, 0.7, 0.9, 1.01]
    for _, row in ours.iterrows():
        low = float(row["identity_bin"].split("%")[0]) / 100
        high = edges[edges.index(low) + 1]
        assert row["genes"] == genes["best_identity"].between(low, high, inclusive="left").sum()
    by_identity = m["by_identity"]
    assert set(by_identity["model_perplexity"]) == set(ours["identity_bin"])
    for b, ratio in by_identity["model_over_best_baseline"].items():
        assert math.isclose(ratio, by_identity["model_perplexity"][b] / by_identity["best_baseline_perplexity"][b])
