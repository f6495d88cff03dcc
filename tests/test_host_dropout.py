"""model.host_dropout: a host-conditioned model that also trained on genes without their host token, so it reads
a gene of an unknown genome when no host is given (API host=None, CLI without --host); the choice of genes is a
seeded hash of the protein (train split only), the data key records it, and an unknown host name is still refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from manual_forward import manual_logp

from codonlm import CodonLM
from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.codons import BOS, EOS, HOST_OFFSET, as_codon_ids, frame_genes
from codonlm.data.layout import part_description
from codonlm.data.parts import host_free_genes
from codonlm.data.prepare import prepare
from codonlm.errors import UserError

GENE = "ATGAAACGCATTAGCACCACCATTACCACCACCATCACCATTACCACAGGTAACGGTGCGGGCTGA"


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_corpus, tiny_config, write_config):
    """A host-conditioned run trained with half of its training genes read without their host token."""
    tmp = tmp_path_factory.mktemp("hostdrop")
    files, _ = make_corpus(tmp, n_genes=40)
    raw = tiny_config(tmp, files, model={"condition_on_host": True, "host_dropout": 0.5}, epochs=1, max_steps=6)
    report = prepare(parse_config(raw), show_progress=False)
    assert main(["train", "-c", str(write_config(tmp / "drop.yaml", raw)), "--run-id", "droprun"]) == 0
    return tmp, raw, report


def _gene_starts(npz_path) -> tuple[int, int]:
    """(gene starts followed by a host token, gene starts followed by a codon) over a split's windows."""
    with np.load(npz_path) as npz:
        tokens = npz["tokens"]
    hosted = bare = 0
    for row in tokens:
        after = row[1:][row[:-1] == BOS]
        hosted += int((after >= HOST_OFFSET).sum())
        bare += int((after < HOST_OFFSET).sum())
    return hosted, bare


def test_frame_genes_leaves_the_host_out_of_host_free_genes():
    codons = as_codon_ids("ATGAAATAA" + "ATGCCC").astype(np.uint8)  # genes of 3 and 2 codons
    aaa, ccc = int(as_codon_ids("AAA")[0]), int(as_codon_ids("CCC")[0])
    out = frame_genes(codons, np.array([3, 2]), host=70, host_free=np.array([True, False]))
    atg, taa = int(as_codon_ids("ATG")[0]), int(as_codon_ids("TAA")[0])
    assert out.tolist() == [BOS, atg, aaa, taa, EOS, BOS, 70, atg, ccc, EOS]
    assert frame_genes(codons, np.array([3, 2]), host=70).tolist()[:3] == [BOS, 70, atg]


def test_some_training_genes_lose_their_host_and_held_out_genes_keep_it(run):
    tmp, raw, _ = run
    cfg = parse_config(raw)
    folder = next(p for p in (tmp / "processed").iterdir() if (p / "all" / "train.npz").is_file())
    hosted, bare = _gene_starts(folder / "all" / "train.npz")
    assert hosted > 0 and bare > 0 and 0.25 < bare / (hosted + bare) < 0.75  # rate 0.5 of ~30 train genes
    for split in ("val", "test"):
        hosted, bare = _gene_starts(folder / "all" / f"{split}.npz")
        assert bare == 0 and hosted > 0
    # the choice is the protein's seeded hash: the same proteins, the same choice, whatever the order
    proteins = [f"M{'K' * i}" for i in range(200)]
    picked = host_free_genes(proteins, cfg.outputs.seed, 0.5)
    assert np.array_equal(host_free_genes(proteins[::-1], cfg.outputs.seed, 0.5), picked[::-1])
    assert 70 < picked.sum() < 130 and not host_free_genes(proteins, cfg.outputs.seed, 0.0).any()
    # the data key knows the rate: windows prepared with another rate are never read back for this one
    no_dropout = parse_config({**raw, "model": {**raw["model"], "host_dropout": 0.0}})
    spec = cfg.data.datasets[0]
    assert part_description(cfg, spec, ["x"])["host_dropout"] == 0.5
    assert "host_dropout" not in part_description(no_dropout, spec, ["x"])


def test_no_host_reads_the_gene_without_a_host_token(run):
    tmp, _, _ = run
    lm = CodonLM.load("droprun", runs_dir=tmp / "runs")
    codons = as_codon_ids(GENE).tolist()
    scored = lm.score(GENE, per_codon=True)
    np.testing.assert_allclose(scored.per_codon_log_likelihood[0], manual_logp(lm, [BOS, *codons, EOS]),
                               rtol=1e-5, atol=1e-6)
    hosted = lm.score(GENE, host="ds1", per_codon=True)
    np.testing.assert_allclose(hosted.per_codon_log_likelihood[0],
                               manual_logp(lm, [BOS, HOST_OFFSET + 1, *codons, EOS])[1:], rtol=1e-5, atol=1e-6)
    assert lm.tokens("").tolist() == [[BOS]] and lm.tokens("", host="ds0").tolist() == [[BOS, HOST_OFFSET]]
    bare, hosted_embedding = lm.embed(GENE), lm.embed(GENE, host="ds0")
    assert bare.shape == hosted_embedding.shape and not np.allclose(bare, hosted_embedding)  # the host changes it
    with pytest.raises(UserError, match="unknown host 'nope'; this model knows: ds0, ds1"):
        lm.score(GENE, host="nope")


def test_the_cli_reads_without_host_and_still_refuses_an_unknown_one(run, tmp_path, capsys):
    tmp, _, _ = run
    lm = CodonLM.load("droprun", runs_dir=tmp / "runs")
    where = ["--runs-dir", str(tmp / "runs")]
    capsys.readouterr()
    assert main(["query", "droprun", "--mode", "score", "--dna", GENE, "--json", *where]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["log_likelihood"] == pytest.approx(lm.score(GENE).log_likelihood[0], rel=1e-6)
    fasta = tmp_path / "g.fa"
    fasta.write_text(f">g\n{GENE}\n")
    assert main(["extract-embeddings", "--run-id", "droprun", "--fasta", str(fasta), "--out",
                 str(tmp_path / "e.npz"), *where]) == 0
    assert (tmp_path / "e.npz").is_file()
    capsys.readouterr()
    assert main(["query", "droprun", "--mode", "score", "--dna", GENE, "--host", "nope", *where]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ds0, ds1" in err and "Traceback" not in err


def test_host_dropout_needs_a_host_model(tmp_path, tiny_config):
    files = [tmp_path / "a.gbk", tmp_path / "b.gbk"]
    with pytest.raises(UserError, match="host_dropout is set but model.condition_on_host is false"):
        parse_config(tiny_config(tmp_path, files, model={"host_dropout": 0.1}))
    with pytest.raises(UserError, match="host_dropout"):
        parse_config(tiny_config(tmp_path, files, model={"condition_on_host": True, "host_dropout": 1.0}))


def test_evaluate_reports_the_model_without_host_tokens_beside_it(run):
    import pandas as pd

    from codonlm.data.layout import run_split_path
    from codonlm.evaluate.heldout import evaluate_run
    from codonlm.evaluate.perplexity import score_genes
    from codonlm.io import read_split_genes

    tmp, raw, _ = run
    m = evaluate_run("droprun", runs_dir=str(tmp / "runs"), kn_orders=(3,))
    bare = m["model_without_host"]
    assert "model_without_host" not in m["baselines"] and m["best_baseline"] != "model_without_host"
    lm = CodonLM.load("droprun", runs_dir=tmp / "runs")
    test = read_split_genes(run_split_path(parse_config(raw), "droprun", "test"))
    logp = np.concatenate([s.logp for s in score_genes(lm.model, test.genes)])  # no hosts: the bare reading
    assert bare["perplexity"] == pytest.approx(float(np.exp(-logp.mean())), rel=1e-5)
    assert bare["n_targets"] == m["model"]["n_targets"] == logp.size and bare["perplexity"] != m["model"]["perplexity"]
    folder = tmp / "runs" / "droprun" / "evaluate"
    assert {"model", "model_without_host", "unigram"} <= set(pd.read_csv(folder / "summary.csv")["model"])
    assert "model_without_host" in set(pd.read_csv(folder / "by_position.csv")["model"])
