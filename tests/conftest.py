"""Shared fixtures: the real default corpus (fetched by ./run_tests.sh), a small GenBank fixture corpus,
and the one tiny config the tests train with.

Use the fixtures (`make_corpus`, `prepared_corpus`, `tiny_config`, `write_config`); no test module imports
another. (`tests/` is on sys.path because pytest imports this conftest from it, so the plain helper module
`genbank_fixtures` imports as is; tests/support, added below, holds `codonlm_faults`, the fault injection
that tests start processes with.)
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import yaml
from genbank_fixtures import SYNONYMS, genbank_text, write_genbank

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "raw"
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))


@pytest.fixture(scope="session")
def raw_corpus() -> Path:
    from codonlm.data.fetch import GENOMES

    missing = [n for n in GENOMES if not (RAW / n).is_file()]
    if missing:
        pytest.fail(f"default corpus missing ({missing[0]} ...): run ./run_tests.sh or 'codonlm fetch-data'")
    return RAW


def corpus(tmp_path: Path, n_genes: int = 60, seed: int = 0) -> tuple[list[Path], list[str]]:
    """Two gzipped GenBank files of random genes; the first 16 genes of each repeat 8 shared proteins
    (so a leak-free split must keep identical proteins together). Returns (files, shared proteins)."""
    rng = random.Random(seed)
    aas = [a for a in SYNONYMS if a != "*"]
    shared = ["".join(rng.choice(aas) for _ in range(rng.randint(30, 200))) for _ in range(8)]
    files = []
    for f in range(2):
        seq, feats = "", []
        for i in range(n_genes):
            protein = shared[i % 8] if i < 16 else "".join(rng.choice(aas) for _ in range(rng.randint(30, 400)))
            gene = "ATG" + "".join(rng.choice(SYNONYMS[aa]) for aa in protein) + "TAA"
            seq += "ACGTACGTAC"
            feats.append((f"{len(seq) + 1}..{len(seq) + len(gene)}", {"locus_tag": f"f{f}_{i}"}))
            seq += gene
        seq += "ACGTACGTAC"
        files.append(write_genbank(tmp_path / f"g{f}.gbk.gz", [genbank_text(f"REC{f}", seq, feats)], gz=True))
    return files, shared


def raw_config(tmp_path: Path, files: list[Path], model: dict | None = None, data: dict | None = None,
               **train) -> dict:
    """The tiny config (as a dict, before validation): 2 layers of width 32, block 64, float32, every
    output under tmp_path. `model`/`data` entries and `train` keywords override the defaults."""
    return {
        "name": "t",
        "model": {"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.1, **(model or {})},
        "data": {"datasets": [{"name": f"ds{i}", "gbff": str(f), "min_len": 10} for i, f in enumerate(files)],
                 "val_frac": 0.2, "test_frac": 0.1, "processed_dir": str(tmp_path / "processed"), **(data or {})},
        "train": {"batch_size": 4, "epochs": 2, "lr": 3e-3, "amp": False, "checkpoint_every": 2, **train},
        "schedule": {"warmup_steps": 2, "min_lr": 1e-4, "early_stop_patience": 5},
        "system": {"num_threads": 1},
        "outputs": {"itos_path": str(tmp_path / "processed" / "itos.json"), "runs_dir": str(tmp_path / "runs"),
                    "out_dir": str(tmp_path / "ckpt"), "scores_dir": str(tmp_path / "scores"), "seed": 3},
    }


@pytest.fixture(scope="session")
def make_corpus():
    """`make_corpus(tmp_path, n_genes=60, seed=0) -> (files, shared proteins)`."""
    return corpus


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(tmp_path, files, model=None, data=None, **train) -> dict` (see raw_config)."""
    return raw_config


@pytest.fixture(scope="session")
def write_config():
    """`write_config(path, raw) -> path`: a config dict as a YAML file, for the command line."""

    def write(path: Path, raw: dict) -> Path:
        Path(path).write_text(yaml.safe_dump(raw, sort_keys=False))
        return Path(path)

    return write


@pytest.fixture(scope="session")
def prepared_corpus(tmp_path_factory):
    """`prepared_corpus(n_genes) -> (folder, files)`: a fixture corpus prepared with the tiny config into
    folder/processed, once per session and size (at batch 4: 38 steps per epoch for 40 genes, 15 for 20)."""
    from codonlm.config import parse_config
    from codonlm.data.prepare import prepare

    made: dict[int, tuple[Path, list[Path]]] = {}

    def get(n_genes: int) -> tuple[Path, list[Path]]:
        if n_genes not in made:
            tmp = tmp_path_factory.mktemp(f"corpus{n_genes}")
            files, _ = corpus(tmp, n_genes=n_genes)
            prepare(parse_config(raw_config(tmp, files)), show_progress=False)
            made[n_genes] = tmp, files
        return made[n_genes]

    return get
