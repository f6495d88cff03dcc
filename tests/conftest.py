"""Shared fixtures: the real default corpus (fetched by ./run_tests.sh), a small GenBank fixture corpus,
the one tiny config the tests train with, and the one fixture study that runs the whole pipeline
(`fixture_study`, shared by tests/test_docs_commands.py and tests/test_faults.py).

Use the fixtures (`make_corpus`, `prepared_corpus`, `tiny_config`, `write_config`, `study_workspace`,
`fixture_study`); no test module imports
another. (`tests/` is on sys.path because pytest imports this conftest from it, so the plain helper module
`genbank_fixtures` imports as is; tests/support, added below, holds `codonlm_faults`, the fault injection
that tests start processes with, and `manual_forward`, the plain forward pass scorers are checked against.)
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
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


def corpus(tmp_path: Path, n_genes: int = 60, seed: int = 0,
           lengths: tuple[int, int] | None = None) -> tuple[list[Path], list[str]]:
    """Two gzipped GenBank files of random genes; the first 16 genes of each repeat 8 shared proteins
    (so a leak-free split must keep identical proteins together). Protein lengths: 30-200 (shared) and
    30-400 amino acids, or all within `lengths`. Returns (files, shared proteins)."""
    rng = random.Random(seed)
    aas = [a for a in SYNONYMS if a != "*"]
    short, long = lengths or (30, 200), lengths or (30, 400)
    shared = ["".join(rng.choice(aas) for _ in range(rng.randint(*short))) for _ in range(8)]
    files = []
    for f in range(2):
        seq, feats = "", []
        for i in range(n_genes):
            protein = shared[i % 8] if i < 16 else "".join(rng.choice(aas) for _ in range(rng.randint(*long)))
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
    """`make_corpus(tmp_path, n_genes=60, seed=0, lengths=None) -> (files, shared proteins)`."""
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


# --------------------------------------------------------------------------- the fixture study

STUDY_COMMAND = "./main.sh -c configs/tiny_mps.yaml"
"""The manual's one-shot pipeline: the fixture study is this command on the fixture corpus."""
USER_FASTA, USER_LABELS = "data/my.fasta", "data/my_labels.csv"  # what configs/classifier/e1.yaml reads


def _differences(a: dict, b: dict) -> dict:
    """The entries where config b differs from a, with b's values."""
    out = {}
    for key in a.keys() | b.keys():
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            if sub := _differences(a[key], b[key]):
                out[key] = sub
        elif a.get(key) != b.get(key):
            out[key] = b[key] if key in b else a[key]
    return out


def study_overrides(files: list[Path]) -> dict:
    """A 2-layer model, a few steps on the fixture corpus, one thread, checkpoints and curve rows often
    enough for the fault tests to interrupt between them. The keys where tiny_cpu.yaml and tiny_mps.yaml
    differ are pinned too, so README's `./main.sh` (tiny_cpu) finds the run that `./main.sh -c
    configs/tiny_mps.yaml` made and does no work: one training serves both."""
    from codonlm.config import merge_overrides

    shrink = {
        "model": {"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0},
        "data": {"datasets": [{"name": f.name.split(".")[0], "gbff": f"data/raw/{f.name}", "min_len": 10}
                              for f in files], "val_frac": 0.25, "test_frac": 0.25, "prepare_workers": 1},
        "train": {"batch_size": 8, "grad_accum_steps": 1, "epochs": 1, "max_steps": 8, "amp": False,
                  "log_every": 2, "eval_every": 4, "checkpoint_every": 3},
        "schedule": {"warmup_steps": 2},
        "system": {"num_workers": 0, "persistent_workers": False, "prefetch_factor": None, "num_threads": 1},
    }
    cpu, mps = (yaml.safe_load((REPO / "configs" / name).read_text()) for name in ("tiny_cpu.yaml", "tiny_mps.yaml"))
    return merge_overrides(_differences(cpu, mps), shrink)


def _scratch_repository(root: Path) -> Path:
    """The repository's code linked into `root`, with its own data/, outputs/ and runs/."""
    own = {"data", "outputs", "runs", ".git", ".pytest_cache", ".ruff_cache", "__pycache__"}
    # The scratch copy links the repository's .venv; bring its set-up up to date here first, so the scratch's
    # ./main.sh finds it current instead of reinstalling from the scratch path (which rewrote the scripts'
    # shebangs and the editable install to point into a folder deleted after the test).
    subprocess.run([str(REPO / "scripts" / "setup_env.sh")], check=True, capture_output=True)
    root.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if entry.name not in own:
            (root / entry.name).symlink_to(entry)
    (root / "data" / "raw").mkdir(parents=True)
    return root


def _write_user_inputs(ws: Path, files: list[Path]) -> None:
    """The manual's data/my.fasta and a labels CSV for it (label: the genome a gene comes from)."""
    from codonlm.data.extract_fasta import write_cds_fasta
    from codonlm.evaluate.seqmetrics import gc3
    from codonlm.io import read_fasta, write_fasta

    records, rows = [], ["id,label,seq"]
    for f in files:
        genome = f.name.split(".")[0]
        write_cds_fasta([str(f)], ws / f"{genome}.fasta", min_len=10)
        for i, (_, seq) in enumerate(read_fasta(ws / f"{genome}.fasta")):
            records.append((f"{genome}_{i}", seq))
            rows.append(f"{genome}_{i},{genome},{seq}")
    write_fasta(ws / USER_FASTA, records)
    (ws / USER_LABELS).write_text("\n".join(rows) + "\n")
    # README's regression examples: a numeric value per gene (its GC3), as gene_id,value,cds and as a TSV of
    # values beside data/my.fasta; a CAI reference of a few genes
    values = [f"{i},{gc3(seq)},{seq}" for i, seq in records]
    (ws / "data" / "my_values.csv").write_text("gene_id,value,cds\n" + "\n".join(values) + "\n")
    (ws / "data" / "my_values.tsv").write_text("gene_id\tvalue\n" + "".join(f"{i}\t{gc3(s)}\n" for i, s in records))
    write_fasta(ws / "data" / "host_reference.fasta", records[:10])


def make_study_workspace(root: Path, corpus: list[Path]) -> tuple[Path, dict]:
    """A scratch copy of the repository at `root` (code linked; data, outputs, runs its own) holding the
    fixture corpus in data/raw, the user's inputs the manual names, and the overrides that shrink whatever
    config a command loads to the study's (CODONLM_CONFIG_OVERRIDES): (workspace, environment)."""
    from codonlm.config import OVERRIDES_ENV

    ws = _scratch_repository(root)
    files = [Path(shutil.copy(f, ws / "data" / "raw")) for f in corpus]
    overrides = ws / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(study_overrides(files), sort_keys=False))
    _write_user_inputs(ws, files)
    env = {**os.environ, "PATH": f"{ws}:{ws / '.venv' / 'bin'}:{os.environ['PATH']}", OVERRIDES_ENV: str(overrides),
           "CODONLM_QUIET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("CODONLM_TEED", None)
    return ws, env


def shell(command: str, ws: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=1800)  # generous: a loaded shared machine, not a speed target


@dataclass(frozen=True)
class Study:
    """One run of the fixture study: `command` run in `ws` (which later tests may change), and `reference`,
    a copy of `ws` taken right after it, that nothing changes."""

    ws: Path
    env: dict
    corpus: list[Path]  # the fixture genomes, to lay out another workspace of the same study
    command: str
    result: subprocess.CompletedProcess
    run_id: str
    reference: Path

    def shell(self, command: str) -> subprocess.CompletedProcess:
        """`command` in the study's workspace and environment (as a user types it)."""
        return shell(command, self.ws, self.env)


@pytest.fixture(scope="session")
def study_workspace():
    """`study_workspace(root, corpus) -> (workspace, env)`: a fresh workspace of the fixture study."""
    return make_study_workspace


@pytest.fixture(scope="session")
def fixture_study(tmp_path_factory) -> Study:
    """The whole pipeline once (the manual's quick start) on a two-genome, 30-gene fixture corpus."""
    tmp = tmp_path_factory.mktemp("study")
    (tmp / "corpus").mkdir()
    files, _ = corpus(tmp / "corpus", n_genes=30)
    ws, env = make_study_workspace(tmp / "ws", files)
    result = shell(STUDY_COMMAND, ws, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = re.search(r"=== codonlm run (\S+) ", result.stdout).group(1)
    reference = Path(shutil.copytree(ws, tmp / "reference", symlinks=True))
    return Study(ws, env, files, STUDY_COMMAND, result, run_id, reference)
