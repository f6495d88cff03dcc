"""The Python API: `CodonLM.load` from a run id, a run folder, a checkpoint and a Hugging Face export; every
input form gives the same numbers; and the command line gives the notebook's numbers."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import torch

from codonlm import CodonLM
from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.prepare import prepare
from codonlm.errors import UserError
from codonlm.model.tinygpt import ablate_heads

GENES = {
    "thrL": "ATGAAACGCATTAGCACCACCATTACCACCACCATCACCATTACCACAGGTAACGGTGCGGGCTGA",
    "short": "ATGGCTGCTAAAGGTCTGGAAGCTTAA",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_corpus, tiny_config, write_config):
    """A tiny run trained 6 steps, its outputs (checkpoints included) under a custom folder."""
    tmp = tmp_path_factory.mktemp("api")
    files, _ = make_corpus(tmp, n_genes=20)
    raw = tiny_config(tmp, files, epochs=1, max_steps=6)
    raw["outputs"]["out_dir"] = str(tmp / "elsewhere" / "ckpts")
    cfg = parse_config(raw)
    prepare(cfg, show_progress=False)
    assert main(["train", "-c", str(write_config(tmp / "c.yaml", raw)), "--run-id", "apirun"]) == 0
    return tmp, cfg


def test_load_by_run_id_folder_and_checkpoint_agree(run):
    tmp, cfg = run
    by_id = CodonLM.load("apirun", runs_dir=tmp / "runs")
    by_folder = CodonLM.load(tmp / "runs" / "apirun")
    by_ckpt = CodonLM.load(tmp / "elsewhere" / "ckpts" / "apirun" / "best.pt")
    scores = [lm.score(GENES) for lm in (by_id, by_folder, by_ckpt)]
    for s in scores[1:]:
        pd.testing.assert_frame_equal(s, scores[0])
    assert by_id.run_id == "apirun" and "apirun" in repr(by_id)
    with pytest.raises(UserError, match="apirun"):  # an unknown id lists the runs that exist
        CodonLM.load("nope", runs_dir=tmp / "runs")


def test_every_input_form_gives_the_same_scores(run, tmp_path):
    tmp, _ = run
    lm = CodonLM.load("apirun", runs_dir=tmp / "runs")
    from Bio.Seq import Seq
    from Bio.SeqRecord import SeqRecord

    fasta = tmp_path / "genes.fa.gz"
    with gzip.open(fasta, "wt") as fh:
        fh.write("# my genes\n" + "".join(f">{k}\n{v.lower()}\n" for k, v in GENES.items()))
    ref = lm.score(GENES)
    forms = [list(GENES.items()), fasta, str(fasta), pd.Series(GENES),
             pd.DataFrame({"id": list(GENES), "seq": list(GENES.values())}),
             [SeqRecord(Seq(v.replace("T", "U")), id=k) for k, v in GENES.items()]]
    for form in forms:
        pd.testing.assert_frame_equal(lm.score(form), ref)
    one = lm.score(GENES["thrL"])
    assert one.loc[0, "log_likelihood"] == pytest.approx(ref.loc[0, "log_likelihood"], abs=1e-9)
    assert list(ref.columns) == ["id", "n_codons", "internal_stops", "log_likelihood", "nll", "perplexity"]
    per = lm.score(GENES, per_codon=True)
    assert len(per.per_codon_log_likelihood[0]) == len(GENES["thrL"]) // 3 + 1  # codons and <EOS_CDS>
    assert per.per_codon_log_likelihood[0].sum() == pytest.approx(ref.log_likelihood[0], rel=1e-6)
    with pytest.raises(UserError, match="not A/C/G/T"):
        lm.score(["ATGNNNTAA"])


def test_cli_and_api_give_the_same_numbers(run, tmp_path, capsys):
    tmp, _ = run
    lm = CodonLM.load("apirun", runs_dir=tmp / "runs")
    fasta = tmp_path / "genes.fa"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in GENES.items()))
    runs = ["--runs-dir", str(tmp / "runs")]
    assert main(["eval-perplexity", "apirun", "--fasta", str(fasta), "--out", str(tmp_path / "s.csv"), *runs]) == 0
    cli = pd.read_csv(tmp_path / "s.csv")
    api = lm.score(fasta)
    np.testing.assert_allclose(cli.log_likelihood, api.log_likelihood, rtol=1e-6)
    assert main(["extract-embeddings", "--run-id", "apirun", "--fasta", str(fasta), "--out", str(tmp_path / "e.npz"), *runs]) == 0
    with np.load(tmp_path / "e.npz") as npz:
        np.testing.assert_allclose(npz["embeddings"], lm.embed(fasta), rtol=1e-6, atol=1e-7)


def test_embed_next_generate_scan_and_hooks(run):
    tmp, cfg = run
    lm = CodonLM.load("apirun", runs_dir=tmp / "runs")
    vectors = lm.embed(GENES)
    assert vectors.shape == (2, cfg.model.n_embd) and np.isfinite(vectors).all()
    layers = lm.embed(GENES, layer="all")
    assert layers.shape == (2, cfg.model.n_layer + 1, cfg.model.n_embd)
    np.testing.assert_allclose(layers[:, -1], vectors, rtol=1e-6, atol=1e-7)
    per_codon = lm.embed(GENES, pool="per-codon")
    assert [p.shape[0] for p in per_codon] == [len(v) // 3 for v in GENES.values()]
    top = lm.next_codons(GENES["thrL"][:30], k=5)
    assert len(top) == 5 and top.probability.is_monotonic_decreasing and top.probability.sum() <= 1 + 1e-6
    out = lm.generate(GENES["thrL"][:30], max_codons=20, seed=1)
    assert out.dna[0].startswith(GENES["thrL"][:30]) and out.new_codons[0] <= 21
    assert out.equals(lm.generate(GENES["thrL"][:30], max_codons=20, seed=1))  # seeded
    scan = lm.scan_variants(GENES["short"], region=(2, 3))
    assert len(scan) == 2 * 63 and set(scan.codon_position) == {2, 3} and scan.llr.notna().all()
    tokens = lm.tokens(GENES["thrL"])
    logits, cache = lm.run_with_cache(GENES["thrL"], names_filter=lambda n: n.endswith("hook_resid_post"))
    assert logits.shape == (1, tokens.shape[1], 68) and len(cache) == cfg.model.n_layer
    ablated = lm.run_with_hooks(GENES["thrL"], ablate_heads(0, [0]))
    assert not torch.allclose(ablated, logits)
    assert not lm.model.has_active_hooks()


def test_hugging_face_export_loads_back(run, tmp_path):
    tmp, _ = run
    assert main(["export-hf", "apirun", str(tmp_path / "hf"), "--runs-dir", str(tmp / "runs")]) == 0
    exported = CodonLM.load(tmp_path / "hf")
    original = CodonLM.load("apirun", runs_dir=tmp / "runs")
    np.testing.assert_allclose(exported.score(GENES).log_likelihood, original.score(GENES).log_likelihood, rtol=1e-5)
    with pytest.raises(UserError, match="not a readable Hugging Face export"):
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "config.json").write_text("{")
        (tmp_path / "broken" / "model.safetensors").write_bytes(b"")
        CodonLM.load(tmp_path / "broken")
