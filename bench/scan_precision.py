"""How far bf16 autocast moves exact variant-scan LLRs from float32, on real E. coli genes.

    .venv/bin/python bench/scan_precision.py --run RUN_ID [--lengths 120 200 300] [--threads N]

For each length, the real E. coli K-12 gene (test split, then train) nearest it is scanned whole
(every position, every alternative) twice in one process, float32 and bf16 autocast, and the LLRs
compared: max and mean |bf16 - fp32|, Spearman, the share of sign flips among variants with
|LLR fp32| > 0.5 (those a reader would call better or worse), the overlap of the 5% most harmful
variants, and the mean LLR by kind in each precision; per gene, then pooled. The seconds of each scan
(and their ratio, fp32 / bf16) come from the same process, alternating which precision runs first.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from scipy.stats import spearmanr
from variant_scan import real_genes

from codonlm.evaluate.variants import KINDS, VariantScanner
from codonlm.model.load import load_model


def scan(model, codons: np.ndarray, amp: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """Seconds, LLRs and kinds of a whole exact scan."""
    t0 = time.perf_counter()
    results = list(VariantScanner(model, amp=amp).scan(codons))
    seconds = time.perf_counter() - t0
    return seconds, np.concatenate([r.llr for r in results]), np.concatenate([r.kinds for r in results])


def drift(fp32: np.ndarray, bf16: np.ndarray, kinds: np.ndarray) -> str:
    diff = np.abs(bf16 - fp32)
    clear = np.abs(fp32) > 0.5
    flips = np.sign(bf16[clear]) != np.sign(fp32[clear])
    k = max(1, len(fp32) // 20)
    worst = len(set(np.argsort(fp32)[:k]) & set(np.argsort(bf16)[:k])) / k
    means = "; ".join(f"{name} {fp32[kinds == i].mean():.3f} vs {bf16[kinds == i].mean():.3f}"
                      for i, name in enumerate(KINDS) if (kinds == i).any())
    return (f"{len(fp32):,} variants: max |diff| {diff.max():.3f}, mean |diff| {diff.mean():.4f} "
            f"(mean |LLR| {np.abs(fp32).mean():.3f}), Spearman {spearmanr(fp32, bf16).statistic:.5f}, "
            f"sign flips {flips.sum()} of {clear.sum():,} with |LLR| > 0.5 ({flips.mean():.2%}), "
            f"5% most harmful shared {worst:.1%}\n    mean LLR fp32 vs bf16: {means}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="run id under --checkpoints-dir, or a .pt path")
    ap.add_argument("--checkpoints-dir")
    ap.add_argument("--processed-dir", help="prepared data (default: the run config's data.processed_dir)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[120, 200, 300])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg, state = load_model(args.run, args.checkpoints_dir)
    genes, names = real_genes(args.processed_dir, cfg, state.get("run_id"))
    print(f"torch threads {args.threads}; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    pooled: dict[str, list[np.ndarray]] = {"fp32": [], "bf16": [], "kinds": []}
    for i, length in enumerate(args.lengths):
        g = int(np.argmin([abs(c.size - length) for c in genes]))
        order = (False, True) if i % 2 == 0 else (True, False)
        runs = {amp: scan(model, genes[g], amp) for amp in order}
        (s32, fp32, kinds), (s16, bf16, _) = runs[False], runs[True]
        for key, value in (("fp32", fp32), ("bf16", bf16), ("kinds", kinds)):
            pooled[key].append(value)
        print(f"{names[g]} ({genes[g].size} codons): fp32 {s32:.1f} s, bf16 {s16:.1f} s ({s32 / s16:.2f}x); "
              f"load {os.getloadavg()[0]:.1f}\n  {drift(fp32, bf16, kinds)}", flush=True)
    print(f"pooled:\n  {drift(*(np.concatenate(pooled[k]) for k in ('fp32', 'bf16', 'kinds')))}")


if __name__ == "__main__":
    main()
