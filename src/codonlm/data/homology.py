"""Protein homology with MMseqs2: clusters for homology-aware splits, and each held-out protein's best
identity to a training protein.

MMseqs2 is an external program (`mmseqs`: Debian's mmseqs2 package; ./scripts/setup_env.sh installs it
when it can). Proteins are passed by index; their sequences go to MMseqs2 as FASTA in a temporary folder.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

from codonlm.errors import UserError

INSTALL_HINT = ("install MMseqs2 ('apt-get install mmseqs2' on Debian/Ubuntu, 'conda install -c bioconda mmseqs2', "
                "or ./scripts/setup_env.sh, which does it when it can)")


@cache
def mmseqs_version() -> str:
    """The version of the `mmseqs` on PATH, or a one-line UserError saying how to install it."""
    exe = shutil.which("mmseqs")
    if exe is None:
        raise UserError(f"data.split_by: cluster needs MMseqs2, and 'mmseqs' is not on PATH: {INSTALL_HINT}, "
                        "or set data.split_by: protein")
    done = subprocess.run([exe, "version"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def _write_fasta(path: Path, proteins: list[str]) -> None:
    with open(path, "w") as fh:
        for i, protein in enumerate(proteins):
            fh.write(f">{i}\n{protein or 'X'}\n")


def _mmseqs(args: list[str], work: Path) -> None:
    mmseqs_version()
    done = subprocess.run(["mmseqs", *args], cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"mmseqs {args[0]} failed (exit {done.returncode}): {last}")


# How data.split_by: cluster runs MMseqs2 besides identity and coverage (in the prepared data's key):
# clusters as connected components (cluster-mode 1), so that two similar proteins never land in two
# clusters; one prefilter + alignment pass at easy-cluster's final sensitivity (-s 4) over all proteins
# instead of its three-step cascade: half the CPU time on the default corpus, the same share of test
# proteins with a training relative by easy-search (bench/cluster_split.py).
CLUSTER_METHOD = ("easy-cluster", "--cov-mode", "0", "--cluster-mode", "1", "--cluster-steps", "1", "-s", "4")


def cluster_proteins(proteins: list[str], identity: float, coverage: float, threads: int = 1) -> np.ndarray:
    """For each protein, the index of its cluster's representative: MMseqs2 (CLUSTER_METHOD) at `identity`
    (sequence identity of the alignment) and `coverage` (of both sequences)."""
    if not proteins:
        return np.empty(0, dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix="codonlm-mmseqs-") as tmp:
        work = Path(tmp)
        _write_fasta(work / "proteins.fa", proteins)
        _mmseqs([CLUSTER_METHOD[0], "proteins.fa", "clu", "tmp", *CLUSTER_METHOD[1:], "--min-seq-id", str(identity),
                 "-c", str(coverage), "--threads", str(threads), "-v", "1"], work)
        table = np.loadtxt(work / "clu_cluster.tsv", dtype=np.int64, ndmin=2)
    representative = np.arange(len(proteins), dtype=np.int64)
    representative[table[:, 1]] = table[:, 0]
    return representative


def cluster_labels(proteins: list[str], identity: float, coverage: float, threads: int = 1) -> list[str]:
    """A label per protein, shared by the proteins of one cluster (`cluster_proteins`); identical proteins
    always share one."""
    distinct = sorted(set(proteins))
    representative = cluster_proteins(distinct, identity, coverage, threads)
    label = {p: f"cluster{representative[i]}" for i, p in enumerate(distinct)}
    return [label[p] for p in proteins]


def best_identity(queries: list[str], targets: list[str], threads: int = 1, coverage: float = 0.0) -> np.ndarray:
    """For each query protein, the highest sequence identity (0..1) of an MMseqs2 hit among the targets
    (0 when it has none): easy-search at its default sensitivity, every hit kept that covers `coverage`
    of both proteins (0: local hits of any length count)."""
    return best_identities(queries, targets, (coverage,), threads)[0]


def best_identities(queries: list[str], targets: list[str], coverages: tuple[float, ...],
                    threads: int = 1) -> np.ndarray:
    """best_identity for each of `coverages` (a row each) from one search: its hits filtered by the
    coverage of both proteins afterwards, as MMseqs2's own -c filter does after aligning."""
    best = np.zeros((len(coverages), len(queries)))
    if not queries or not targets:
        return best
    with tempfile.TemporaryDirectory(prefix="codonlm-mmseqs-") as tmp:
        work = Path(tmp)
        _write_fasta(work / "queries.fa", queries)
        _write_fasta(work / "targets.fa", targets)
        _mmseqs(["easy-search", "queries.fa", "targets.fa", "hits.m8", "tmp", "--format-output",
                 "query,target,fident,qcov,tcov", "--max-seqs", "300", "-c", str(min(coverages)), "--cov-mode", "0",
                 "--threads", str(threads), "-v", "1"], work)
        text = (work / "hits.m8").read_text()
    if text.strip():
        hits = np.loadtxt(text.splitlines(), dtype=np.float64, ndmin=2)
        for row, coverage in zip(best, coverages, strict=True):
            kept = hits[np.minimum(hits[:, 3], hits[:, 4]) >= coverage]
            np.maximum.at(row, kept[:, 0].astype(np.int64), kept[:, 2])
    return best
