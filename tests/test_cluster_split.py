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
