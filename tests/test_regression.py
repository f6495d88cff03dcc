"""Stage-2 regression: the CV and metric code against known answers on real genes, a user's CSV end to end
with a layer sweep on a tiny model trained here, grouped folds, the bad-input cases, and CodonLM.fit_probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.prepare import prepare
from codonlm.evaluate.seqmetrics import gc3
from codonlm.stage2.classifiers import load_estimator
from codonlm.stage2.regression import RegressionSet, cv_folds, evaluate_models, protein_groups
from codonlm.stage2.regressors import codon_features
from codonlm.train.loop import train

RUN = "r1"


@pytest.fixture(scope="module")
def real_genes(raw_corpus) -> list[str]:
    """400 real E. coli K-12 CDS (every 10th kept gene of the genome), as DNA."""
    from codonlm.data.genbank import extract_file

    genes = [c.dna() for c in extract_file(raw_corpus / "Escherichia_coli_K12_MG1655.gbk.gz", min_len=30)]
    return genes[::10][:400]


def test_codon_baseline_recovers_gc3_of_real_genes_and_a_shuffled_target_scores_nothing(real_genes):
    """GC3 is a known function of the codon frequencies: the CV and metric code must find it (rho >= 0.95);
    the same target shuffled across genes has nothing to find (the interval holds 0)."""
    y = np.array([gc3(s) for s in real_genes])
    data = RegressionSet(ids=[f"g{i}" for i in range(len(y))], y=y, seqs=real_genes,
                         groups=protein_groups(real_genes), source="E. coli genes")
    result = evaluate_models(data, ["codon_ridge", "kmer_ridge"], folds=5, repeats=2, bootstrap=300)
    m = result["models"]["codon_ridge"]
    assert m["spearman"] >= 0.95 and m["r2"] >= 0.9
    assert m["spearman_ci"][0] <= m["spearman"] <= m["spearman_ci"][1] and len(m["spearman_per_repeat"]) == 2
    assert result["models"]["kmer_ridge"]["spearman"] >= 0.8  # 4-mers span codons: GC3 is in them too
    assert result["predictions"]["codon_ridge"].shape == (2, len(y))
    shuffled = RegressionSet(ids=data.ids, y=np.random.default_rng(0).permutation(y), seqs=real_genes,
                             groups=data.groups, source="shuffled")
    null = evaluate_models(shuffled, ["codon_ridge"], folds=5, bootstrap=300)["models"]["codon_ridge"]
    assert null["spearman_ci"][0] < 0 < null["spearman_ci"][1] and null["r2"] < 0.05


@pytest.mark.parametrize("model", ["probe_krr", "probe_xgb"])
def test_kernel_ridge_and_xgboost_probes_find_gc3_and_round_trip_through_skops(raw_corpus, tmp_path, model):
    """The known answer again, read by the probes: as 'embeddings', the codon frequencies of 1,000 real genes
    (GC3 is a linear function of them; trees need more genes than a ridge to add 32 terms up: 400 gave 0.87).
    Each probe's CV must find it; its refitted model is stored with skops (trusted types listed, no pickle)
    and predicts the same after loading."""
    from codonlm.data.genbank import extract_file
    from codonlm.stage2.classifiers import TRUSTED_TYPES, save_estimator
    from codonlm.stage2.regression import refit_all

    genes = [c.dna() for c in extract_file(raw_corpus / "Escherichia_coli_K12_MG1655.gbk.gz", min_len=30)]
    real_genes = genes[::4][:1000]
    y = np.array([gc3(s) for s in real_genes])
    data = RegressionSet(ids=[f"g{i}" for i in range(len(y))], y=y, seqs=real_genes,
                         groups=protein_groups(real_genes), embeddings=codon_features(real_genes), source="E. coli")
    m = evaluate_models(data, [model], folds=5, bootstrap=200)["models"][model]
    assert m["spearman"] >= 0.9 and m["r2"] >= 0.8, m
    fitted, _ = refit_all(data, [model], seed=0, vectorizer=None)
    path = save_estimator(fitted[model], tmp_path / f"{model}.skops")
    import skops.io as sio

    assert set(sio.get_untrusted_types(file=path)) <= set(TRUSTED_TYPES)
    loaded = load_estimator(path)
    np.testing.assert_allclose(loaded.predict(data.embeddings[:50]), fitted[model].predict(data.embeddings[:50]))


def test_kernel_ridge_inner_cv_matches_scikit_learn_kernel_ridge():
    """kernel_ridge_params solves every penalty from one eigendecomposition: its choice is the one
    KernelRidge refitted for each (alpha, gamma) scores best with."""
    from sklearn.metrics import r2_score

    from codonlm.stage2.regression import kernel_ridge_params
    from codonlm.stage2.regressors import KRR_ALPHAS, KRR_GAMMAS, make_regressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 6))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2 + rng.normal(scale=0.1, size=90)
    inner = cv_folds(y, np.arange(90).astype(str), 3, seed=0)
    scores = {(a, g / 6): np.mean([r2_score(y[te], make_regressor("probe_krr", 0, a, g / 6).fit(X[tr], y[tr])
                                            .predict(X[te])) for tr, te in inner])
              for a in KRR_ALPHAS for g in KRR_GAMMAS}
    alpha, gamma = kernel_ridge_params(X, y, inner)
    assert scores[(alpha, gamma)] == pytest.approx(max(scores.values()), abs=1e-9)


def test_regression_metrics_equal_scipy_and_scikit_learn():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import r2_score

    from codonlm.stage2.metrics import regression_metrics

    rng = np.random.default_rng(3)
    y = rng.normal(size=200)
    pred = np.stack([y + rng.normal(scale=s, size=200) for s in (0.5, 1.0)])
    m = regression_metrics(y, pred, n_boot=500, seed=1)
    assert m["spearman"] == pytest.approx(np.mean([spearmanr(y, p).statistic for p in pred]))
    assert m["pearson"] == pytest.approx(np.mean([pearsonr(y, p).statistic for p in pred]))
    assert m["r2"] == pytest.approx(np.mean([r2_score(y, p) for p in pred]))
    for k in ("spearman", "pearson", "r2"):
        assert m[f"{k}_ci"][0] < m[k] < m[f"{k}_ci"][1]
    zero_shot = regression_metrics(y, -pred[:1] * 10, n_boot=100, with_r2=False)
    assert zero_shot["r2"] is None and zero_shot["spearman"] == pytest.approx(-spearmanr(y, pred[0]).statistic)


def test_resample_ranks_equal_rankdata_with_ties_and_repeated_draws():
    from scipy.stats import rankdata

    from codonlm.stage2.metrics import resample_ranks

    rng = np.random.default_rng(0)
    values = rng.integers(0, 20, size=60).astype(float)  # many ties
    idx = rng.integers(0, 60, size=(50, 60))  # bootstrap draws: repeats within a row
    np.testing.assert_allclose(resample_ranks(values, idx), rankdata(values[idx], axis=1))


def test_folds_never_split_identical_proteins(real_genes):
    seqs = real_genes[:60] + real_genes[:20]  # 20 proteins twice
    groups = protein_groups(seqs)
    y = np.array([gc3(s) for s in seqs])
    seen = set()
    for train_rows, test_rows in cv_folds(y, groups, 5, seed=0):
        assert not set(groups[train_rows]) & set(groups[test_rows])
        seen |= set(test_rows.tolist())
    assert seen == set(range(len(seqs)))  # every gene is predicted once


def test_codon_features_are_frequencies_and_log_length():
    x = codon_features(["ATGAAAAAATAA", "ATGTAA"])
    assert x.shape == (2, 65) and np.allclose(x[:, :64].sum(1), 1)
    assert x[0, 0] == pytest.approx(0.5) and x[0, 64] == pytest.approx(np.log(4))  # AAA twice of 4 codons


# --------------------------------------------------------------------------- a user's CSV with a trained model


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_corpus, tiny_config):
    """A 2-layer model trained for a few steps on the fixture corpus, and a user CSV (gene_id,value,cds)
    whose value is the GC3 of the gene."""
    from codonlm.data.genbank import extract_file

    tmp = tmp_path_factory.mktemp("regression")
    files, _ = make_corpus(tmp, n_genes=40)
    cfg = parse_config(tiny_config(tmp, files, epochs=1, max_steps=6))
    prepare(cfg, show_progress=False)
    train(cfg, RUN)
    genes = [c for f in files for c in extract_file(f, min_len=10)]
    table = pd.DataFrame({"gene_id": [c.name for c in genes], "value": [gc3(c.dna()) for c in genes],
                          "cds": [c.dna().lower().replace("t", "u") for c in genes]})  # RNA, lowercase
    table.to_csv(tmp / "mine.csv", index=False)
    return tmp, cfg, table


def _config(tmp: Path, name: str, **keys) -> Path:
    raw = {"task": "regression", "run_id": RUN, "train_labels": str(tmp / "mine.csv"), "id_column": "gene_id",
           "seq_column": "cds", "target_column": "value", "out_dir": str(tmp / "out" / name), "bootstrap": 200,
           **keys}
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


def test_regression_config_on_a_user_csv_writes_metrics_plots_layer_sweep_and_models(run, capsys):
    tmp, cfg, table = run
    path = _config(tmp, "gc3", layer="all", checkpoints_dir=cfg.outputs.out_dir,
                   models=["probe_ridge", "probe_svr", "codon_ridge", "zeroshot_loglik"])
    code = main(["train-classifier", "--config", str(path), "--quiet"])
    assert code == 0, capsys.readouterr().err
    out = tmp / "out" / "gc3"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "regression" and metrics["n"] == len(table) and metrics["cv"]["folds"] == 5
    assert set(metrics["models"]) == {"probe_ridge", "probe_svr", "codon_ridge", "zeroshot_loglik"}
    assert metrics["models"]["codon_ridge"]["spearman"] >= 0.9  # GC3 from codon frequencies
    assert metrics["models"]["zeroshot_loglik"]["r2"] is None
    assert list(metrics["layers"]) == ["0", "1", "final"] and sum(metrics["chosen_layers"].values()) == 5
    assert metrics["embedding"]["final_model_layer"] in ("0", "1", "final")
    for name in ("scatter.png", "layers.png", "compare.png", "compare.csv", "predictions.csv", "model.skops"):
        assert (out / name).is_file(), name
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions["id"].tolist() == table["gene_id"].tolist() and set(predictions["fold"]) == set(range(5))
    ridge = load_estimator(out / "codon_ridge.skops")
    assert ridge.predict(codon_features([s.upper().replace("U", "T") for s in table["cds"][:3]])).shape == (3,)


@pytest.mark.parametrize("change, expect", [
    ({"target_column": "nope"}, "no target column 'nope' (columns: gene_id, value, cds)"),
    ({"seq_column": "dna"}, "no sequence column 'dna'"),
    ("value=abc", "row 4 'abc' is not a number in 'value'"),
    ("value=", "row 4 has no value in 'value'"),
    ("constant", "the target is constant"),
    ("few", "19 labelled genes; cross-validated regression needs at least 20"),
    ("log10", "row 2: -1 has no log10"),
])
def test_bad_regression_input_fails_in_one_line_and_writes_nothing(run, capsys, tmp_path, change, expect):
    tmp, cfg, table = run
    table = table.copy()
    keys: dict = {"checkpoints_dir": cfg.outputs.out_dir, "models": ["codon_ridge"]}
    if isinstance(change, dict):
        keys.update(change)
    elif change.startswith("value="):
        table["value"] = table["value"].astype(object)
        table.loc[2, "value"] = change.removeprefix("value=")
    elif change == "constant":
        table["value"] = 0.5
    elif change == "few":
        table = table.head(19)
    else:
        table.loc[0, "value"] = -1
        keys["transform"] = "log10"
    table.to_csv(tmp_path / "mine.csv", index=False)
    raw = json.loads(_config(tmp, "bad", **keys).read_text())
    raw.update(train_labels=str(tmp_path / "mine.csv"), out_dir=str(tmp_path / "out"))
    (tmp_path / "bad.yaml").write_text(json.dumps(raw))
    code = main(["train-classifier", "--config", str(tmp_path / "bad.yaml"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and expect in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_fit_probe_returns_the_metrics_of_the_config_path(run):
    from codonlm import CodonLM
    from codonlm.model.load import load_model

    tmp, cfg, table = run
    lm = CodonLM(load_model(RUN, cfg.outputs.out_dir)[0])
    result = lm.fit_probe(dict(zip(table["gene_id"], table["cds"], strict=True)), table["value"].to_numpy(),
                          models=["probe_ridge", "codon_ridge"], bootstrap=200)
    assert list(result["metrics"].index) == ["probe_ridge", "codon_ridge"]
    assert result["metrics"].loc["codon_ridge", "spearman"] >= 0.9
    path = _config(tmp, "api", checkpoints_dir=cfg.outputs.out_dir, models=["probe_ridge", "codon_ridge"])
    assert main(["train-classifier", "--config", str(path), "--quiet"]) == 0
    metrics = json.loads((tmp / "out" / "api" / "metrics.json").read_text())
    for model in ("probe_ridge", "codon_ridge"):
        assert result["metrics"].loc[model, "spearman"] == pytest.approx(metrics["models"][model]["spearman"],
                                                                         abs=1e-6)


def test_train_regressor_reads_fasta_plus_tsv_merges_repeated_ids_and_skips_bad_records(run, capsys, tmp_path):
    """The FASTA + TSV-of-values layout: a repeated id fails by default, --dedupe mean averages it;
    a record that is not a CDS is named, or skipped and counted with --skip-invalid; CAI needs a reference."""
    tmp, cfg, table = run
    fasta = tmp_path / "genes.fasta"
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in zip(table["gene_id"], table["cds"], strict=True))
                     + ">broken\nATGTGAAAATAA\n")  # an internal stop: not a CDS
    values = pd.concat([table[["gene_id", "value"]], table[["gene_id", "value"]].head(3).assign(value=1.0)])
    values = pd.concat([values, pd.DataFrame({"gene_id": ["broken"], "value": [0.3]})])
    values.to_csv(tmp_path / "values.tsv", sep="\t", index=False)
    out = tmp_path / "out"
    base = ["train-regressor", "--csv", str(tmp_path / "values.tsv"), "--fasta", str(fasta), "--target", "value",
            "--id-column", "gene_id", "--run_id", RUN, "--checkpoints-dir", cfg.outputs.out_dir, "--out", str(out),
            "--models", "codon_ridge,cai_linear,zeroshot_cai", "--bootstrap", "100", "--quiet"]
    code = main(base)
    err = capsys.readouterr().err
    assert code == 2 and "need cai_reference" in err and not out.exists()
    reference = tmp_path / "reference.fasta"
    reference.write_text("".join(f">{i}\n{s}\n" for i, s in zip(table["gene_id"][:10], table["cds"][:10],
                                                                    strict=True)))
    base += ["--cai-reference", str(reference)]
    code = main(base)
    err = capsys.readouterr().err
    assert code == 2 and f"id '{table['gene_id'][0]}' appears twice" in err and len(err.strip().splitlines()) == 1
    code = main([*base, "--dedupe", "mean"])
    err = capsys.readouterr().err
    assert code == 2 and "'broken'" in err and "--skip-invalid" in err and not out.exists()
    code = main([*base, "--dedupe", "mean", "--skip-invalid"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped 1 record(s)" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(table) and set(metrics["models"]) == {"codon_ridge", "cai_linear", "zeroshot_cai"}
    predictions = pd.read_csv(out / "predictions.csv").set_index("id")
    first = table["gene_id"][0]
    assert predictions.loc[first, "target"] == pytest.approx((table["value"][0] + 1.0) / 2)  # the mean of its rows
    assert metrics["models"]["zeroshot_cai"]["r2"] is None and metrics["models"]["cai_linear"]["r2"] is not None


def test_extract_embeddings_reads_a_users_table_by_its_column_names(run, capsys):
    """The gene_id,value,cds layout (RNA, lowercase) embeds as it is; a wrong column name lists the columns."""
    from codonlm.stage2.embeddings import load_embeddings

    tmp, cfg, table = run
    base = ["extract-embeddings", "--run_id", RUN, "--csv", str(tmp / "mine.csv"), "--id-column", "gene_id",
            "--checkpoints-dir", cfg.outputs.out_dir, "--quiet"]
    code = main([*base, "--seq-column", "dna", "--out", str(tmp / "bad.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "no 'dna' column (columns: gene_id, value, cds)" in err and not (tmp / "bad.npz").exists()
    assert main([*base, "--seq-column", "cds", "--out", str(tmp / "mine.npz")]) == 0
    emb = load_embeddings(tmp / "mine.npz")
    assert emb.ids == table["gene_id"].tolist() and emb.embeddings.shape == (len(table), cfg.model.n_embd)
