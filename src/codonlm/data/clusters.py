"""Homology-aware splits (data.split_by: cluster): every protein of the corpus clustered with MMseqs2,
and each cluster given one split, so that no held-out protein has a close relative in training.

Before the parts are built, worker processes extract the distinct proteins of every input file; MMseqs2
clusters them (connected components at cluster_identity and cluster_coverage); each cluster takes the
split of its representative's seeded hash (as a protein split would give it). The table protein hash ->
split is written under <processed_dir>/clusters/<key>.npz, and the units read their genes' splits from it.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from codonlm.data.genbank import ExtractionStats
from codonlm.data.homology import cluster_proteins
from codonlm.data.inputs import InputFile, extract_input_records
from codonlm.data.parts import PartPlan, assign_splits, plan_input_files, pool_context
from codonlm.io import atomic_path, read_json, write_json
from codonlm.log import log


def split_table_path(root: Path, key: str) -> Path:
    return Path(root) / "clusters" / f"{key}.npz"


def file_proteins(source: InputFile, min_len: int, transl_table: int) -> list[str]:
    """The distinct proteins of the CDS prepare keeps from one input file (in a worker process)."""
    found: set[str] = set()
    for batch in extract_input_records(source, min_len, transl_table, ExtractionStats()):
        found.update(batch.proteins())
    return sorted(found)


def build_split_table(path: Path, plans: list[PartPlan], identity: float, coverage: float, workers: int) -> dict:
    """Cluster the proteins of every plan's files and write the split table (and its report beside it)."""
    t0 = time.perf_counter()
    jobs = [(source, plan.settings.min_len, plan.settings.transl_table)
            for plan in plans for source in plan_input_files(plan)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=pool_context()) as pool:
            per_file = list(pool.map(file_proteins, *zip(*jobs, strict=True)))
    else:
        per_file = [file_proteins(*job) for job in jobs]
    proteins = sorted(set().union(*per_file))
    t_cluster = time.perf_counter()
    representative = cluster_proteins(proteins, identity, coverage, threads=workers)
    seconds_cluster = time.perf_counter() - t_cluster
    s = plans[0].settings
    _, hashes = assign_splits(proteins, s.seed, s.val_frac, s.test_frac)
    splits, _ = assign_splits([proteins[r] for r in representative], s.seed, s.val_frac, s.test_frac)
    order = np.argsort(hashes, kind="stable")
    with atomic_path(path) as tmp:
        np.savez(tmp, hashes=hashes[order], splits=splits[order])
    clusters = int(np.unique(representative).size)
    report = {"split_by": "cluster", "cluster_identity": identity, "cluster_coverage": coverage,
              "proteins": len(proteins), "clusters": clusters, "cluster_seconds": round(seconds_cluster, 2),
              "seconds": round(time.perf_counter() - t0, 2)}
    write_json(path.with_suffix(".json"), report)
    log(f"[prepare] cluster split: {len(proteins)} distinct proteins in {clusters} clusters (MMseqs2 at "
        f"{identity:.0%} identity, {coverage:.0%} coverage; clustering {seconds_cluster:.1f} s)")
    return report


def split_report(path: Path) -> dict | None:
    return read_json(path.with_suffix(".json"))
