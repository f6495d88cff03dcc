"""Host tokens (model.condition_on_host): `<BOS_CDS> <host> c1 .. cn <EOS_CDS>` in the prepared windows, the
vocabulary files, every consumer (scores, embeddings, variant scans, generation, CLI) lined up with the codons
behind the host token, unknown or missing hosts refused in one line, models without host tokens unchanged; and
`codonlm add-host`, which leaves its base run untouched and trains only the new host's row by default."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from manual_forward import manual_logp

from codonlm import CodonLM
from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.codons import BOS, EOS, HOST_OFFSET, ITOS, as_codon_ids, encode
from codonlm.data.prepare import prepare
from codonlm.errors import UserError

GENE = "ATGAAACGCATTAGCACCACCATTACCACCACCATCACCATTACCACAGGTAACGGTGCGGGCTGA"


def _train(tmp, files, write_config, tiny_config, run_id: str, host: bool, steps: int = 6):
    raw = tiny_config(tmp, files, model={"condition_on_host": host}, epochs=1, max_steps=steps)
    prepare(parse_config(raw), show_progress=False)
    assert main(["train", "-c", str(write_config(tmp / f"{run_id}.yaml", raw)), "--run-id", run_id]) == 0
    return raw


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_corpus, tiny_config, write_config):
    """A host-conditioned run and one without host tokens on the same two-genome corpus."""
    tmp = tmp_path_factory.mktemp("hosts")
    files, _ = make_corpus(tmp, n_genes=20)
    raw = _train(tmp, files, write_config, tiny_config, "hostrun", host=True)
    _train(tmp, files, write_config, tiny_config, "plainrun", host=False)
    return tmp, raw


def _load(tmp, run_id: str) -> CodonLM:
    return CodonLM.load(run_id, runs_dir=tmp / "runs")


def test_windows_carry_the_host_token_and_itos_lists_the_hosts(runs):
    tmp, raw = runs
    cfg = parse_config(raw)
    assert cfg.model.hosts == ["ds0", "ds1"] and cfg.model.vocab_size == 70
    folder = next(p for p in (tmp / "processed").iterdir() if (p / "all" / "train.npz").is_file()
                  and json.loads((p / "itos.json").read_text())[HOST_OFFSET:])
    with np.load(folder / "all" / "train.npz") as npz:
        tokens, window_dataset = npz["tokens"], npz["window_dataset"]
        genes = npz["gene_tokens"]
    starts = 0
    for row, d in zip(tokens, window_dataset, strict=True):  # every gene start in a window: BOS then its host
        at = np.flatnonzero(row[:-1] == BOS)  # (a continuation chunk of a long gene has none)
        assert (row[at + 1] == HOST_OFFSET + d).all()
        starts += at.size
    assert starts >= 30 and set(window_dataset) == {0, 1}
    assert genes.max() < HOST_OFFSET  # whole genes stay host-free: the model's input framing adds the host
    itos = ITOS + ["<HOST:ds0>", "<HOST:ds1>"]
    assert json.loads((folder / "itos.json").read_text()) == itos
    assert json.loads((tmp / "processed" / "itos.json").read_text())[:HOST_OFFSET] == ITOS
    state = torch.load(tmp / "ckpt" / "hostrun" / "best.pt", weights_only=True)
    assert state["itos"] == itos


def test_score_with_a_host_is_the_forward_pass_on_bos_host_codons(runs):
    tmp, _ = runs
    lm = _load(tmp, "hostrun")
    assert lm.hosts == ["ds0", "ds1"]
    codons = as_codon_ids(GENE).tolist()
    for name, token in (("ds0", 68), ("ds1", 69)):
        scored = lm.score(GENE, host=name, per_codon=True)
        expected = manual_logp(lm, [BOS, token, *codons, EOS])[1:]  # the host token itself is never scored
        np.testing.assert_allclose(scored.per_codon_log_likelihood[0], expected, rtol=1e-5, atol=1e-6)
        assert scored.log_likelihood[0] == pytest.approx(expected.sum(), rel=1e-5)
    assert lm.tokens("", host="ds1").tolist() == [[BOS, 69]]  # where design starts decoding
    assert lm.tokens(GENE[:6], host="ds0", eos=True).tolist() == [[BOS, 68, *codons[:2], EOS]]


def test_embeddings_pool_the_codon_positions_behind_the_host(runs):
    tmp, _ = runs
    lm = _load(tmp, "hostrun")
    per_codon = lm.embed(GENE, pool="per-codon", host="ds1")[0]
    _, cache = lm.run_with_cache(GENE, names_filter=lambda n: n == "ln_final.hook_normalized", host="ds1")
    states = cache["ln_final.hook_normalized"][0].numpy()  # BOS, host, c1 .. cn
    n = len(GENE) // 3
    assert per_codon.shape[0] == n
    np.testing.assert_allclose(per_codon, states[2 : 2 + n], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lm.embed(GENE, host="ds1")[0], states[2 : 2 + n].mean(0), rtol=1e-5, atol=1e-6)


def test_variant_llr_positions_line_up_behind_the_host(runs):
    tmp, _ = runs
    lm = _load(tmp, "hostrun")
    codons = as_codon_ids(GENE).tolist()
    scan = lm.scan_variants(GENE, llr="local", region=(3, 3), host="ds0")
    wild = manual_logp(lm, [BOS, 68, *codons, EOS])
    row = scan.iloc[0]
    alt = encode(row.mut_codon, add_bos=False)[0]
    mutant = manual_logp(lm, [BOS, 68, *codons[:2], int(alt), *codons[3:], EOS])
    assert set(scan.codon_position) == {3}
    assert row.llr == pytest.approx(mutant[3] - wild[3], abs=1e-4)  # target 3 of [host, c1, c2, c3 ...]
    exact = lm.scan_variants(GENE, region=(3, 3), host="ds0").iloc[0]
    assert exact.llr == pytest.approx(mutant[1:].sum() - wild[1:].sum(), abs=1e-3)


def test_generation_and_next_codons_never_give_a_host_token(runs):
    tmp, _ = runs
    lm = _load(tmp, "hostrun")
    out = lm.generate(GENE[:30], max_codons=40, seed=2, host="ds1")
    assert out.dna[0].startswith(GENE[:30]) and set(out.dna[0]) <= set("ACGT")
    assert not lm.next_codons(GENE[:30], k=68, host="ds1").token.str.startswith("<HOST").any()


def test_prefix_generation_prompts_start_with_the_genome_host(runs, tmp_path):
    import pandas as pd

    tmp, _ = runs
    out = tmp_path / "gen"
    assert main(["generate-prefix", "hostrun", "--runs-dir", str(tmp / "runs"), "--split", "val",
                 "--per-genome", "2", "--temperatures", "1.0", "--max-codons", "40", "--prompt-codons", "3",
                 "--out-dir", str(out), "--quiet"]) == 0
    samples = pd.read_csv(out / "samples.csv")
    generated = samples[samples.temperature != "real"]
    assert len(generated) == 4 and generated.dna.map(lambda d: set(d) <= set("ACGT") and len(d) % 3 == 0).all()


def test_a_host_model_wants_a_known_host_and_a_plain_model_none(runs, tmp_path, capsys):
    tmp, _ = runs
    lm, plain = _load(tmp, "hostrun"), _load(tmp, "plainrun")
    with pytest.raises(UserError, match="pass --host .*ds0, ds1"):
        lm.score(GENE)
    with pytest.raises(UserError, match="unknown host 'nope'; this model knows: ds0, ds1"):
        lm.embed(GENE, host="nope")
    with pytest.raises(UserError, match="no host tokens"):
        plain.score(GENE, host="ds0")
    assert plain.hosts == [] and plain.tokens("").tolist() == [[BOS]]
    fasta = tmp_path / "g.fa"
    fasta.write_text(f">g\n{GENE}\n")
    where = ["--runs-dir", str(tmp / "runs")]
    for argv in (["query", "hostrun", "--mode", "score", "--dna", GENE, "--host", "nope", *where],
                 ["eval-perplexity", "hostrun", "--fasta", str(fasta), *where],
                 ["extract-embeddings", "--run-id", "hostrun", "--fasta", str(fasta), "--host", "x",
                  "--out", str(tmp_path / "e.npz"), *where]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "ds0, ds1" in err and "Traceback" not in err
    assert not (tmp_path / "e.npz").exists()
    assert main(["query", "hostrun", "--mode", "score", "--dna", GENE, "--host", "ds1", "--json", *where]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["log_likelihood"] == pytest.approx(lm.score(GENE, host="ds1").log_likelihood[0], rel=1e-6)


def test_stage2_scores_and_embeds_each_gene_with_its_genome(runs, tmp_path):
    from codonlm.stage2.embeddings import extract_embeddings
    from codonlm.stage2.regression import mean_loglik

    tmp, _ = runs
    lm = _load(tmp, "hostrun")
    seqs = [GENE, GENE[:30] + GENE[-3:]]
    got = mean_loglik(lm.model, ["a", "b"], seqs, hosts=["ds1", "ds0"])
    expected = [-lm.score(s, host=h).nll[0] for s, h in zip(seqs, ["ds1", "ds0"], strict=True)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    emb = extract_embeddings(str(tmp / "ckpt" / "hostrun" / "best.pt"), tmp_path / "e.npz", ["a", "b"], seqs,
                             host=["ds1", "ds0"], show_progress=False)
    np.testing.assert_allclose(emb.embeddings[1], lm.embed(seqs[1], host="ds0")[0], rtol=1e-5, atol=1e-6)


def test_a_model_without_host_tokens_scores_as_before(runs):
    tmp, _ = runs
    plain = _load(tmp, "plainrun")
    codons = as_codon_ids(GENE).tolist()
    expected = manual_logp(plain, [BOS, *codons, EOS])
    np.testing.assert_allclose(plain.score(GENE, per_codon=True).per_codon_log_likelihood[0], expected,
                               rtol=1e-5, atol=1e-6)
    assert plain.model.cfg.vocab_size == 68


def test_evaluate_scores_each_test_gene_with_its_genome(runs):
    from codonlm.evaluate.heldout import evaluate_run
    from codonlm.evaluate.perplexity import score_genes
    from codonlm.io import read_split_genes

    tmp, raw = runs
    metrics = evaluate_run("hostrun", runs_dir=str(tmp / "runs"))
    lm = _load(tmp, "hostrun")
    test = read_split_genes(next((tmp / "processed").glob("*/all/test.npz")))
    hosted = [np.insert(g, 1, HOST_OFFSET + d) for g, d in zip(test.genes, test.groups, strict=True)]
    # score_genes on the host-framed genes scores the host target too: drop it, as evaluate does
    logp = np.concatenate([s.logp[1:] for s in score_genes(lm.model, hosted)])
    assert metrics["model"]["n_targets"] == logp.size == sum(g.size - 1 for g in test.genes)
    assert metrics["model"]["loss"] == pytest.approx(float(-logp.mean()), rel=1e-5)
    from codonlm.analysis.report import heldout_part

    assert metrics["host_tokens"] == ["ds0", "ds1"]
    assert "host token (2 hosts" in heldout_part("hostrun", tmp / "runs" / "hostrun")


def test_hugging_face_export_lists_the_host_tokens(runs, tmp_path):
    tmp, _ = runs
    assert main(["export-hf", "hostrun", str(tmp_path / "hf"), "--runs-dir", str(tmp / "runs")]) == 0
    itos = json.loads((tmp_path / "hf" / "itos.json").read_text())
    assert itos[HOST_OFFSET:] == ["<HOST:ds0>", "<HOST:ds1>"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("<HOST:ds1>" + GENE[:9]).input_ids == [BOS, 69, *as_codon_ids(GENE[:9]).tolist()]
    assert "<HOST:ds1>" in (tmp_path / "hf" / "README.md").read_text()
    exported, original = CodonLM.load(tmp_path / "hf"), _load(tmp, "hostrun")
    assert exported.hosts == ["ds0", "ds1"]
    np.testing.assert_allclose(exported.score(GENE, host="ds1").log_likelihood,
                               original.score(GENE, host="ds1").log_likelihood, rtol=1e-5)


# --------------------------------------------------------------------------- add-host


def _tree_digest(*folders) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def new_genome(tmp_path_factory, make_corpus):
    tmp = tmp_path_factory.mktemp("newgenome")
    files, _ = make_corpus(tmp, n_genes=200, seed=7)
    (tmp / "small").mkdir()
    small, _ = make_corpus(tmp / "small", n_genes=12, seed=8)
    return files[0], small[0]


def test_add_host_makes_a_new_run_and_trains_only_the_new_row(runs, new_genome):
    tmp, _ = runs
    base_folders = [tmp / "runs" / "hostrun", tmp / "ckpt" / "hostrun", tmp / "scores" / "hostrun"]
    before = _tree_digest(*base_folders)
    assert main(["add-host", "hostrun", "--name", "ds_new", "--gbff", str(new_genome[0]), "--steps", "4",
                 "--runs-dir", str(tmp / "runs")]) == 0
    assert _tree_digest(*base_folders) == before  # the base run is only read
    new_id = next(p.name for p in (tmp / "runs").iterdir() if "_add_ds_new_" in p.name)
    result = json.loads((tmp / "runs" / new_id / "add_host.json").read_text())
    assert result["base_run_id"] == "hostrun" and result["host_token"] == 70 and result["test_genes"] >= 10
    assert set(result["perplexity"]) == {"base_without_host_token", "base_best_known_host",
                                         "new_run_with_host_token", "per_genome_unigram", "kneser_ney_3"}
    base = torch.load(tmp / "ckpt" / "hostrun" / "best.pt", weights_only=True)["model"]
    new = torch.load(tmp / "ckpt" / new_id / "best.pt", weights_only=True)["model"]
    assert new["wte.weight"].shape[0] == base["wte.weight"].shape[0] + 1
    for name, weight in base.items():
        kept = new[name][: weight.shape[0]] if name in ("wte.weight", "lm_head.weight") else new[name]
        assert torch.equal(kept, weight), name
    start = base["wte.weight"][HOST_OFFSET:].mean(0)
    assert not torch.equal(new["wte.weight"][70], start)  # the new row trained from the hosts' mean
    lm = CodonLM.load(new_id, runs_dir=tmp / "runs")
    assert lm.hosts == ["ds0", "ds1", "ds_new"]
    assert "[add-host] ds_new held-out perplexity" in (tmp / "runs" / new_id / "log.txt").read_text()


def test_add_host_bad_input_is_one_line_and_leaves_the_base_alone(runs, new_genome, tmp_path, capsys):
    tmp, _ = runs
    base_folders = [tmp / "runs" / "hostrun", tmp / "ckpt" / "hostrun"]
    before = _tree_digest(*base_folders)
    where = ["--runs-dir", str(tmp / "runs")]
    cases = [
        (["nope", "--name", "x", "--gbff", str(new_genome[0])], "nope"),
        (["hostrun", "--name", "ds1", "--gbff", str(new_genome[0])], "already has host 'ds1'"),
        (["hostrun", "--name", "x", "--gbff", str(tmp_path / "missing.gbk")], "missing.gbk"),
        (["plainrun", "--name", "x", "--gbff", str(new_genome[0])], "no host tokens"),
        (["hostrun", "--name", "tiny", "--gbff", str(new_genome[1])], "too few for a held-out split"),
    ]
    runs_before = sorted(p.name for p in (tmp / "runs").iterdir())
    for argv, message in cases:
        capsys.readouterr()
        assert main(["add-host", *argv, *where]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert _tree_digest(*base_folders) == before
    assert sorted(p.name for p in (tmp / "runs").iterdir()) == runs_before  # no half-made run either


def test_host_config_is_checked(tmp_path, tiny_config):
    files = [tmp_path / "a.gbk", tmp_path / "b.gbk"]
    cfg = parse_config(tiny_config(tmp_path, files, model={"condition_on_host": True}))
    assert cfg.model.hosts == ["ds0", "ds1"] and cfg.model.vocab_size == 70
    assert parse_config(cfg.model_dump(mode="json")) == cfg  # a checkpoint's config reads back the same
    bad = [({"hosts": ["ds0", "ds1"]}, "condition_on_host is false"),
           ({"condition_on_host": True, "hosts": ["ds0"]}, "missing: ds1"),
           ({"condition_on_host": True, "hosts": ["ds0", "ds1", *(f"h{i}" for i in range(187))]}, "at most 188")]
    for model, message in bad:
        with pytest.raises(UserError, match=message):
            parse_config(tiny_config(tmp_path, files, model=model))
