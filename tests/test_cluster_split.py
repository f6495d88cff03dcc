"""Homology-aware splits (data.split_by: cluster): on a corpus of protein families, no held-out protein
has a relative at >= cluster_identity in training (checked with MMseqs2 itself); the protein split leaks."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from genbank_fixtures import SYNONYMS, genbank_text, write_genbank

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.codons import translate
from codonlm.data.homology import best_identities, best_identity
from codonlm.data.layout import data_key, run_split_path
from codonlm.io import read_split_genes

IDENTITY, COVERAGE = 0.5, 0.8


@pytest.fixture(scope="module")
def mmseqs() -> str:
    found = shutil.which("mmseqs")
    if found is None:
        pytest.skip("MMseqs2 is not installed (./scripts/setup_env.sh installs Debian's mmseqs2 when run as root)")
    return found


def _family_corpus(tmp_path: Path, families: int = 40, members: int = 4, seed: int = 5) -> list[Path]:
    """Two GenBank files of genes from protein families: each family's members are ~85% identical
    copies of one random protein, spread over both genomes."""
    rng = random.Random(seed)
    aas = [a for a in SYNONYMS if a not in "*M"]
    genomes: list[list[str]] = [[], []]
    for f in range(families):
        root = [rng.choice(aas) for _ in range(rng.randint(80, 200))]
        for m in range(members):
            copy = [a if rng.random() > 0.15 else rng.choice(aas) for a in root]
            genomes[(f + m) % 2].append("M" + "".join(copy))
    files = []
    for g, proteins in enumerate(genomes):
        seq, feats = "", []
        for i, protein in enumerate(proteins):
            gene = "".join(rng.choice(SYNONYMS[a]) for a in protein) + "TAA"
            seq += "ACGTACGTAC"
            feats.append((f"{len(seq) + 1}..{len(seq) + len(gene)}", {"locus_tag": f"g{g}_{i}"}))
            seq += gene
        files.append(write_genbank(tmp_path / f"fam{g}.gbk", [genbank_text(f"FAM{g}", seq + "ACGTACGTAC", feats)]))
    return files


def _prepare(tmp_path: Path, files: list[Path], tiny_config, write_config, split_by: str,
             run_id: str) -> tuple[dict[str, list[str]], dict]:
    """Prepare the corpus under `split_by`: the proteins of each split, and the prepare report."""
    raw = tiny_config(tmp_path, files, data={"split_by": split_by, "cluster_identity": IDENTITY,
                                             "cluster_coverage": COVERAGE, "val_frac": 0.15, "test_frac": 0.25})
    path = write_config(tmp_path / f"{split_by}.yaml", raw)
    assert main(["prepare", "-c", str(path), "--run-id", run_id, "--quiet", "--workers", "2"]) == 0
    cfg = parse_config(raw)
    proteins = {}
    for split in ("train", "test"):
        genes = read_split_genes(run_split_path(cfg, run_id, split))
        proteins[split] = [translate(genes.codons(g)) for g in range(len(genes.genes))]
    return proteins, json.loads((tmp_path / "runs" / run_id / "pipeline_prepare.json").read_text())


def test_cluster_split_keeps_relatives_out_of_training(tmp_path, mmseqs, tiny_config, write_config):
    files = _family_corpus(tmp_path)
    proteins, report = _prepare(tmp_path, files, tiny_config, write_config, "cluster", "c1")
    train, test = proteins["train"], proteins["test"]
    assert len(test) >= 8 and len(train) >= 60
    assert best_identity(test, train).max() < IDENTITY  # MMseqs2 finds no relative of a test protein in training
    assert report["split"]["split_by"] == "cluster" and report["split"]["proteins"] == 160
    assert 30 <= report["split"]["clusters"] <= 45  # about one per family
    proteins, _ = _prepare(tmp_path, files, tiny_config, write_config, "protein", "p1")
    leaked = best_identity(proteins["test"], proteins["train"])
    assert (leaked >= IDENTITY).mean() > 0.5  # the protein split puts most test proteins' relatives in training


def test_cluster_settings_are_in_the_key(tmp_path, mmseqs, tiny_config, make_corpus):
    files, _ = make_corpus(tmp_path, n_genes=10)
    keys = {data_key(parse_config(tiny_config(tmp_path, files, data=data))).key
            for data in ({}, {"split_by": "cluster"}, {"split_by": "cluster", "cluster_identity": 0.3},
                         {"split_by": "cluster", "cluster_coverage": 0.5})}
    assert len(keys) == 4
    assert data_key(parse_config(tiny_config(tmp_path, files))).key == data_key(
        parse_config(tiny_config(tmp_path, files, data={"split_by": "protein"}))).key


def test_cluster_method_is_in_the_key(tmp_path, mmseqs, tiny_config, make_corpus, monkeypatch):
    """Data clustered with other MMseqs2 options is never reused for this code's (nor the protein split's)."""
    from codonlm.data import homology

    files, _ = make_corpus(tmp_path, n_genes=10)
    cluster, protein = (parse_config(tiny_config(tmp_path, files, data={"split_by": s})) for s in ("cluster", "protein"))
    before = data_key(cluster).key, data_key(protein).key
    monkeypatch.setattr(homology, "CLUSTER_METHOD", (*homology.CLUSTER_METHOD, "--max-seqs", "300"))
    assert data_key(cluster).key != before[0] and data_key(protein).key == before[1]


def test_missing_mmseqs_is_one_line_exit_2(tmp_path, capsys, monkeypatch, tiny_config, write_config, make_corpus):
    files, _ = make_corpus(tmp_path, n_genes=10)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, files, data={"split_by": "cluster"}))
    from codonlm.data import homology

    homology.mmseqs_version.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    assert main(["prepare", "-c", str(cfg), "--quiet"]) == 2
    homology.mmseqs_version.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mmseqs2" in err[0] and "apt-get install" in err[0]
    assert not list((tmp_path / "processed").glob("*/manifest.json"))  # nothing prepared


def test_best_identity_known_answer(mmseqs):
    """A copy with every fifth residue changed is found at 80% identity; an unrelated protein not at all."""
    rng = random.Random(1)
    aas = [a for a in SYNONYMS if a not in "*MW"]
    protein = "".join(rng.choice(aas) for _ in range(200))
    copy = "".join("W" if i % 5 == 0 else a for i, a in enumerate(protein))
    unrelated = "".join(rng.choice(aas) for _ in range(150))
    best = best_identity([protein, unrelated], [copy])
    assert abs(best[0] - 0.8) < 0.01 and best[1] == 0.0


def _family_of(families: int = 40, members: int = 4) -> dict[str, int]:
    """locus_tag -> family of the genes `_family_corpus` lays out (its order, without its random draws)."""
    counts, out = [0, 0], {}
    for f in range(families):
        for m in range(members):
            g = (f + m) % 2
            out[f"g{g}_{counts[g]}"] = f
            counts[g] += 1
    return out


def test_cv_folds_and_ready_task_groups_follow_the_runs_clusters(tmp_path, mmseqs, tiny_config, capsys):
    """A run split by cluster: a user table's regression CV (train-regressor) and the ready tasks' held-out
    genes (protein_group) group the genes by MMseqs2 cluster, so no family straddles two folds; metrics.json
    and tasks.json say so. Identical-protein groups would split every family (its members differ)."""
    import pandas as pd

    from codonlm.data.genbank import extract_file
    from codonlm.data.prepare import prepare
    from codonlm.evaluate.seqmetrics import gc3
    from codonlm.stage2.regression import group_proteins
    from codonlm.stage2.tasks import heldout_table
    from codonlm.train.loop import train

    files = _family_corpus(tmp_path)
    cfg = parse_config(tiny_config(tmp_path, files, data={"split_by": "cluster", "cluster_identity": IDENTITY,
                                                          "cluster_coverage": COVERAGE}, epochs=1, max_steps=4))
    prepare(cfg, show_progress=False)
    train(cfg, "cl")
    genes = [c for f in files for c in extract_file(f, min_len=10)]
    family = {c.name: _family_of()[c.name.rsplit("|", 1)[-1]] for c in genes}
    pd.DataFrame({"gene_id": [c.name for c in genes], "value": [gc3(c.dna()) for c in genes],
                  "cds": [c.dna() for c in genes]}).to_csv(tmp_path / "mine.csv", index=False)
    out = tmp_path / "out"
    code = main(["train-regressor", "--csv", str(tmp_path / "mine.csv"), "--target", "value", "--id-column",
                 "gene_id", "--seq-column", "cds", "--run-id", "cl", "--checkpoints-dir", cfg.outputs.out_dir,
                 "--runs-dir", cfg.outputs.runs_dir, "--models", "codon_ridge,zeroshot_loglik", "--bootstrap", "50",
                 "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cv"]["groups"] == ("MMseqs2 clusters of the proteins (50% identity, 80% coverage), as the "
                                       "run's data.split_by: cluster")
    assert 30 <= metrics["n_groups"] <= 45 and metrics["n"] == 160
    folds = pd.read_csv(out / "predictions.csv").assign(family=lambda t: t["id"].map(family))
    assert folds.groupby("family")["fold"].nunique().max() == 1  # every family in one fold
    proteins = [translate(c.dna()) for c in genes]
    assert len(set(group_proteins(proteins)[0])) == 160  # identical-protein groups: one per gene
    heldout, info = heldout_table(cfg, "cl", Path(cfg.data.processed_dir))
    assert info["group_columns"]["protein_group"] == metrics["cv"]["groups"]
    heldout["family"] = heldout["id"].map(lambda name: _family_of()[name.rsplit("|", 1)[-1]])
    assert heldout.groupby("family")["protein_group"].nunique().max() == 1
    assert heldout.groupby("protein_group")["family"].nunique().max() == 1


def test_best_identities_filter_one_search_by_coverage(mmseqs):
    """One search answers several coverage thresholds: a copy of half a protein counts at coverage 0, not
    at 0.8 (it covers half the target), as separate searches with MMseqs2's -c say."""
    rng = random.Random(2)
    aas = [a for a in SYNONYMS if a not in "*MW"]
    protein = "".join(rng.choice(aas) for _ in range(240))
    half = "".join("W" if i % 10 == 0 else a for i, a in enumerate(protein[:120]))
    whole = "".join("W" if i % 5 == 0 else a for i, a in enumerate(protein))
    best = best_identities([half, whole], [protein], (0.0, 0.8))
    assert best[0, 0] > 0.85 and best[1, 0] == 0.0  # the half copy: only a local hit
    assert abs(best[0, 1] - 0.8) < 0.01 and abs(best[1, 1] - 0.8) < 0.01
    for row, coverage in zip(best, (0.0, 0.8), strict=True):
        assert np.array_equal(row, best_identity([half, whole], [protein], coverage=coverage))
