"""Design on a host-conditioned run (model.condition_on_host): decoding starts after the host's token, every
design back-translates, its log-likelihood is the model's score of the gene with that host token, and the
design bench runs with the codon-usage baselines and the KN-3 metric exactly as on a run without host tokens."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codonlm import CodonLM
from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.codons import BOS, HOST_OFFSET, as_codon_ids, translate
from codonlm.data.prepare import prepare
from codonlm.evaluate.perplexity import score_genes

PROTEIN = "MKRISTTITTTITITTGNGAGLAEEKKRLLQVSAW"


def _train(tmp, files, tiny_config, write_config, run_id: str, host: bool) -> None:
    raw = tiny_config(tmp, files, model={"condition_on_host": host}, epochs=1, max_steps=6)
    prepare(parse_config(raw), show_progress=False)
    assert main(["train", "-c", str(write_config(tmp / f"{run_id}.yaml", raw)), "--run-id", run_id]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_corpus, tiny_config, write_config):
    """A host-conditioned run and one without host tokens on the same fixture corpus (hosts ds0, ds1)."""
    tmp = tmp_path_factory.mktemp("design_host")
    files, _ = make_corpus(tmp, n_genes=20)
    _train(tmp, files, tiny_config, write_config, "hostrun", host=True)
    _train(tmp, files, tiny_config, write_config, "plainrun", host=False)
    return tmp


def test_host_run_designs_after_the_host_token_and_scores_them_with_it(runs):
    lm = CodonLM.load("hostrun", runs_dir=runs / "runs")
    assert lm.design_prompt("ds1") == [BOS, HOST_OFFSET + 1]
    tables = {host: lm.design(PROTEIN, host) for host in ("ds0", "ds1")}
    beam = lm.design(PROTEIN, "ds1", beam=3)
    samples = lm.design(PROTEIN, "ds1", samples=3, seed=2)
    for table in (*tables.values(), beam, samples):
        for dna in table["dna"]:
            assert translate(dna, 11, keep_stop=True) == PROTEIN + "*"  # exact back-translation
    for host, table in tables.items():
        codons = as_codon_ids(table["dna"].iloc[0])
        gene = np.concatenate([[BOS], codons, [2]]).astype(np.uint8)
        (score,) = score_genes(lm.model, [gene], hosts=[lm.host_id(host)])
        # the design's log-likelihood is the model's, with the host token: codons 1..n, not <EOS_CDS>
        assert table["log_likelihood_per_codon"].iloc[0] == pytest.approx(float(score.logp[:-1].mean()), abs=1e-4)
    assert beam["log_likelihood_per_codon"].iloc[0] >= tables["ds1"]["log_likelihood_per_codon"].iloc[0] - 1e-6


def test_design_bench_on_a_host_run_keeps_the_baselines_and_metrics(runs):
    for run_id in ("hostrun", "plainrun"):
        assert main(["design-bench", run_id, "--runs-dir", str(runs / "runs"), "--per-host", "4"]) == 0
    host, plain = (pd.read_csv(runs / "runs" / r / "design" / "designs.csv") for r in ("hostrun", "plainrun"))
    assert set(host["method"]) == set(plain["method"]) and len(host) == len(plain)
    model_rows = host["method"].str.startswith("model_")
    usage = host["method"].isin(["most_frequent", "usage_sampling", "uniform"])  # (DnaChisel's search is random)
    assert usage.sum() == 3 * host["protein"].nunique() * host["host"].nunique()
    assert np.allclose(host[usage].select_dtypes("number"), plain[usage].select_dtypes("number"))  # unchanged
    assert host[model_rows]["kn3_loglik_per_codon"].notna().all() and host["codon_identity"].between(0, 1).all()
