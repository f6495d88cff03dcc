"""Homology-aware splits on the default corpus: how long MMseqs2 takes to cluster its proteins, and how
much the protein split leaks.

  1. the distinct proteins prepare keeps (configs/tiny_cpu.yaml: min_len 30), extracted as prepare's
     cluster pass does (codonlm.data.clusters.file_proteins);
  2. MMseqs2 clustering as data.split_by: cluster runs it (cluster_identity, cluster_coverage; connected
     components) on --threads threads: seconds and clusters;
  3. leakage: the proteins the protein split (split_by: protein) puts in test, searched against its
     training proteins (codonlm.data.homology.best_identities, one search per split): the share with a relative at >= 50%, >= 90%,
     counting local hits of any length, then only hits covering cluster_coverage of both proteins (the
     clustering's own criterion); and the same for the cluster split.

    python bench/cluster_split.py                  # about 2 minutes on 2 idle cores (--cluster-only: 30 s)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (MMseqs2): a figure a busy machine does not inflate."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default=str(ROOT / "configs" / "tiny_cpu_cluster_split.yaml"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cluster-only", action="store_true", help="stop after the clustering (no leakage searches)")
    args = p.parse_args(argv)
    from codonlm.config import load_config
    from codonlm.data.clusters import file_proteins
    from codonlm.data.homology import best_identities, cluster_proteins, mmseqs_version
    from codonlm.data.inputs import dataset_input_files
    from codonlm.data.parts import assign_splits

    cfg = load_config(args.config)
    d = cfg.data
    t0 = time.perf_counter()
    proteins = sorted({p for spec in d.datasets for source in dataset_input_files(spec)
                       for p in file_proteins(source, spec.min_len, spec.transl_table)})
    print(f"{len(proteins):,} distinct proteins extracted in {time.perf_counter() - t0:.1f} s ({mmseqs_version()})")
    t0, cpu0 = time.perf_counter(), _children_cpu()
    representative = cluster_proteins(proteins, d.cluster_identity, d.cluster_coverage, threads=args.threads)
    seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    clusters, sizes = np.unique(representative, return_counts=True)
    print(f"clustered at {d.cluster_identity:.0%} identity, {d.cluster_coverage:.0%} coverage on {args.threads} threads: "
          f"{seconds:.1f} s wall, {cpu:.1f} CPU s (MMseqs2), {clusters.size:,} clusters (largest {sizes.max()}, "
          f"singletons {(sizes == 1).sum():,})")
    if args.cluster_only:
        return 0
    seed = cfg.outputs.seed
    by_protein, _ = assign_splits(proteins, seed, d.val_frac, d.test_frac)
    by_cluster, _ = assign_splits([proteins[r] for r in representative], seed, d.val_frac, d.test_frac)
    for name, split in (("protein", by_protein), ("cluster", by_cluster)):
        test = [proteins[i] for i in np.flatnonzero(split == 2)]
        train = [proteins[i] for i in np.flatnonzero(split == 0)]
        t0 = time.perf_counter()
        coverages = (0.0, d.cluster_coverage)
        for coverage, best in zip(coverages, best_identities(test, train, coverages, threads=args.threads), strict=True):
            print(f"split_by {name}: {len(test):,} test proteins; with a training relative (hits covering "
                  f"{coverage:.0%} of both) at >= 50% identity {(best >= 0.5).mean():.3f}, >= 90% "
                  f"{(best >= 0.9).mean():.3f}")
        print(f"  (one search: {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
