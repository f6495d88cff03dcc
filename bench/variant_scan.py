"""Variant-scan speed and memory: codons/s and peak RSS of `codonlm query --mode mutate` on real genes.

    .venv/bin/python bench/variant_scan.py --run RUN_ID [--checkpoints-dir DIR] [--lengths 300 1000]
        [--every 1] [--old-positions 12] [--spearman-genes 6] [--threads 2]

For each length, the real E. coli K-12 gene (prepared data, `ecoli_k12` test split, else train)
closest to it is scanned in a fresh child process (so peak RSS is the scan's own): exact and local.
`--every K` scans every K-th position of the exact scan and extrapolates the time to the whole
gene (positions are evenly spread, so cost per position averages out; the figure is marked
"extrapolated"); local scans always run whole. Beside wall time: the process's CPU seconds, which a
busy shared machine inflates less (with one thread, CPU s / wall s is the share of a core it got).

Peer in the same run: the old implementation (every mutant gene built and rescored with
score_genes) and the exact scan on the same `--old-positions` evenly spread positions, in one
child; the ratio is what the shared machine cannot blur.

Then, on `--spearman-genes` real genes of at most `--spearman-max-codons` codons, full exact and
local scans: Spearman correlation local vs exact per gene, and the mean LLR by variant kind
(nonsense < missense < synonymous is the sanity check).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from codonlm.data.codons import frame_gene
from codonlm.data.layout import run_split_path
from codonlm.evaluate.perplexity import score_genes
from codonlm.evaluate.variants import KINDS, VariantScanner
from codonlm.io import read_split_genes
from codonlm.model.load import load_model


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def real_genes(processed_dir: str | None, cfg=None, run_id: str | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Codon arrays and names of the E. coli genes (test split first, then train) under `processed_dir`, else
    under the prepared data the run recorded (cfg, run_id)."""
    if processed_dir is None:
        processed_dir = str(run_split_path(cfg, run_id, "test").parent.parent)
    codons, names = [], []
    for split in ("test", "train"):
        genes = read_split_genes(f"{processed_dir}/ecoli_k12/{split}.npz")
        codons += [genes.codons(g) for g in range(len(genes.genes))]
        names += genes.names
    return codons, names


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def old_mutate(model, codons: np.ndarray, positions, stride: int | None) -> tuple[float, np.ndarray]:
    """The implementation this replaces: every mutant gene built and scored with score_genes at once.
    Returns the seconds and the LLRs (positions ascending, alternatives in token order)."""
    gene = frame_gene(codons)
    variants = [gene]
    for p in positions:
        for alt in range(4, 68):
            if alt != gene[p]:
                mutant = gene.copy()
                mutant[p] = alt
                variants.append(mutant)
    t0 = time.perf_counter()
    ll = np.array([np.sum(s.logp, dtype=np.float64) for s in score_genes(model, variants, stride=stride)])
    return time.perf_counter() - t0, ll[1:] - ll[0]


def timed_scan(model, codons, positions, llr: str, stride: int | None) -> tuple[float, float, VariantScanner, list]:
    scanner = VariantScanner(model, llr=llr, stride=stride)
    t0, c0 = time.perf_counter(), cpu_s()
    results = list(scanner.scan(codons, positions))
    return time.perf_counter() - t0, cpu_s() - c0, scanner, results


def child(args) -> None:
    """One measurement in this process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    model, cfg, state = load_model(args.run, args.checkpoints_dir)
    genes, names = real_genes(args.processed_dir, cfg, state.get("run_id"))
    g = int(np.argmin([abs(c.size - args.length) for c in genes]))
    codons, n = genes[g], genes[g].size
    rss_loaded = peak_rss_mb()
    out = {"gene": names[g], "codons": int(n), "method": args.child, "threads": torch.get_num_threads()}
    if args.child == "old":
        positions = sorted({int(p) for p in np.linspace(1, n, args.old_positions).round()})
        out["positions"] = len(positions)
        out["old_s"], old_llr = old_mutate(model, codons, positions, args.stride)
        out["old_peak_rss_mb"] = peak_rss_mb()
        out["exact_s"], _, _, results = timed_scan(model, codons, positions, "exact", args.stride)
        out["max_abs_diff"] = float(np.abs(np.concatenate([r.llr for r in results]) - old_llr).max())
    else:
        positions = list(range(1, n + 1, args.every if args.child == "exact" else 1))
        seconds, cpu, scanner, _ = timed_scan(model, codons, positions, args.child, args.stride)
        sizes = [rows * length for rows, _, length in scanner.batch_shapes]
        out.update(positions=len(positions), seconds=seconds, whole_gene_s=seconds * n / len(positions),
                   whole_gene_cpu_s=cpu * n / len(positions), stride=scanner.stride,
                   extrapolated=len(positions) < n, batches=len(sizes), suffix_tokens=int(sum(sizes)),
                   largest_batch_tokens=max(sizes, default=0))
    out.update(rss_after_load_mb=rss_loaded, peak_rss_mb=peak_rss_mb(), load_avg=os.getloadavg()[0])
    print(json.dumps(out))


def run_child(args, method: str, length: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--length", str(length), "--run", args.run,
           "--every", str(args.every), "--old-positions", str(args.old_positions),
           "--threads", str(args.threads)] + (["--processed-dir", args.processed_dir] if args.processed_dir else [])
    cmd += ["--checkpoints-dir", args.checkpoints_dir] if args.checkpoints_dir else []
    cmd += ["--stride", str(args.stride)] if args.stride else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def spearman_and_kinds(args) -> None:
    from scipy.stats import spearmanr

    torch.set_num_threads(args.threads)
    model, cfg, state = load_model(args.run, args.checkpoints_dir)
    genes, names = real_genes(args.processed_dir, cfg, state.get("run_id"))
    picks = [i for i in range(len(genes)) if 60 <= genes[i].size <= args.spearman_max_codons][: args.spearman_genes]
    totals = {k: [0.0, 0] for k in KINDS}
    for i in picks:
        t0 = time.perf_counter()
        exact = list(VariantScanner(model).scan(genes[i]))
        seconds = time.perf_counter() - t0
        local = list(VariantScanner(model, llr="local").scan(genes[i]))
        e = np.concatenate([s.llr for s in exact])
        lo = np.concatenate([s.llr for s in local])
        kinds = np.concatenate([s.kinds for s in exact])
        for k, name in enumerate(KINDS):
            totals[name][0] += float(e[kinds == k].sum())
            totals[name][1] += int((kinds == k).sum())
        means = ", ".join(f"{name} {e[kinds == k].mean():.3f}" for k, name in enumerate(KINDS) if (kinds == k).any())
        print(f"  {names[i]} ({genes[i].size} codons, exact {seconds:.0f} s): Spearman local vs exact "
              f"{spearmanr(lo, e).statistic:.3f}; mean exact LLR {means}", flush=True)
    print("  pooled mean exact LLR: " + ", ".join(f"{k} {t / n:.3f} (n={n})" for k, (t, n) in totals.items() if n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="run id under --checkpoints-dir, or a .pt path")
    ap.add_argument("--checkpoints-dir", help="default: the run's outputs.out_dir (runs/<RUN_ID>/config.yaml)")
    ap.add_argument("--processed-dir", help="prepared data (default: the run config's data.processed_dir)")
    ap.add_argument("--lengths", type=int, nargs="*", default=[300, 1000], help="gene lengths to time (none: skip)")
    ap.add_argument("--methods", nargs="+", default=["exact", "local"], choices=["exact", "local"])
    ap.add_argument("--every", type=int, default=1, help="scan every K-th position (time extrapolated)")
    ap.add_argument("--old-positions", type=int, default=12, help="positions for the old-vs-new peer (0: skip)")
    ap.add_argument("--spearman-genes", type=int, default=6)
    ap.add_argument("--spearman-max-codons", type=int, default=150)
    ap.add_argument("--stride", type=int, help="window advance for long genes (default block_size/4, as score)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    print(f"torch threads {args.threads}; load average at start {os.getloadavg()[0]:.1f} (shared machine)", flush=True)
    for length in args.lengths:
        for method in args.methods:
            r = run_child(args, method, length)
            note = f" (extrapolated from {r['positions']} positions)" if r["extrapolated"] else ""
            print(f"{method:>5} {r['gene']} {r['codons']} codons, stride {r['stride']}: {r['whole_gene_s']:.1f} s{note} "
                  f"({r['whole_gene_cpu_s']:.1f} CPU s) -> {r['codons'] / r['whole_gene_s']:.2f} codons/s; "
                  f"{r['suffix_tokens'] * r['codons'] / r['positions']:,.0f} suffix tokens; peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(after loading {r['rss_after_load_mb']:.0f} MB); {r['batches']} batches, largest "
                  f"{r['largest_batch_tokens']} tokens; load avg {r['load_avg']:.1f}", flush=True)
        if args.old_positions:
            r = run_child(args, "old", length)
            print(f"  old vs new on the same {r['positions']} positions of {r['gene']}: old {r['old_s']:.1f} s "
                  f"(peak RSS {r['old_peak_rss_mb']:.0f} MB), exact {r['exact_s']:.1f} s -> "
                  f"{r['old_s'] / r['exact_s']:.2f}x faster; largest |LLR difference| {r['max_abs_diff']:.1e}; "
                  f"load avg {r['load_avg']:.1f}", flush=True)
    if args.spearman_genes:
        print(f"local vs exact on {args.spearman_genes} real E. coli genes of 60-{args.spearman_max_codons} codons:")
        spearman_and_kinds(args)


if __name__ == "__main__":
    main()
