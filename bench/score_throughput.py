"""Scoring throughput: genes/s and codons/s of batched whole-gene scoring (what `codonlm query
--mode score` and `eval-perplexity` use), beside an unbatched loop over the same windows in the same run.

    .venv/bin/python bench/score_throughput.py [--run RUN_ID] [--genes 10000] [--naive-genes 300]

Uses the genes of the run's prepared {train,test} splits (data/processed/<key>/all/); with no --run,
the config's, and a freshly initialised TinyGPT of configs/tiny_cpu.yaml (speed does not depend on
the weights).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from codonlm.config import load_config
from codonlm.data.layout import data_key, key_dir, run_split_path
from codonlm.evaluate.perplexity import gene_windows, score_genes
from codonlm.io import read_split_genes
from codonlm.model.load import load_model
from codonlm.model.tinygpt import TinyGPT


def naive_scores(model: TinyGPT, genes: list[np.ndarray], amp: bool) -> float:
    """The same windows as score_genes, one forward each: what a hand-rolled loop over genes does."""
    total = 0.0
    T = model.cfg.block_size
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        for g in genes:
            for a, lo, hi in gene_windows(g.size - 1, T, T // 4):
                piece = torch.from_numpy(g[a : a + T + 1].astype(np.int64))[None]
                logits, _ = model(piece[:, :-1])
                lp = torch.log_softmax(logits.float(), -1).gather(-1, piece[:, 1:, None])[0, :, 0]
                total += float(lp[lo - a - 1 : hi - a].sum())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="run id (found from runs/<RUN_ID>/config.yaml; default: untrained tiny_cpu model)")
    ap.add_argument("--config", default="configs/tiny_cpu.yaml")
    ap.add_argument("--genes", type=int, default=10000)
    ap.add_argument("--naive-genes", type=int, default=300)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for the batched path")
    args = ap.parse_args()

    if args.run:
        model, cfg, _ = load_model(args.run)
    else:
        cfg = load_config(args.config)
        torch.manual_seed(0)
        model = TinyGPT(cfg.model).eval()
    if args.run:  # the run's own prepared data
        train_path, test_path = (run_split_path(cfg, args.run, s) for s in ("train", "test"))
    else:  # the config's
        train_path, test_path = (key_dir(cfg.data.processed_dir, data_key(cfg).key) / "all" / f"{s}.npz"
                                 for s in ("train", "test"))
    genes = read_split_genes(train_path).genes
    test = read_split_genes(test_path).genes
    genes = (test + genes)[: args.genes]
    codons = sum(g.size - 2 for g in genes)
    print(f"model: {model.num_params():,} params, block {cfg.model.block_size}; {len(genes):,} genes, "
          f"{codons:,} codons; torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    score_genes(model, genes, amp=args.amp, stride=cfg.model.block_size // 4)
    batched = time.perf_counter() - t0
    print(f"batched score_genes (stride block/4; the default sliding window: bench/inference_speed.py): {batched:.1f} s -> {len(genes) / batched:,.0f} genes/s, "
          f"{codons / batched:,.0f} codons/s")

    sub = genes[: args.naive_genes]
    sub_codons = sum(g.size - 2 for g in sub)
    t0 = time.perf_counter()
    naive_scores(model, sub, args.amp)
    naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_genes(model, sub, amp=args.amp, stride=model.cfg.block_size // 4)
    batched_sub = time.perf_counter() - t0
    print(f"unbatched loop (one forward per window, same windows) on {len(sub)} genes: {sub_codons / naive:,.0f} "
          f"codons/s; batched on the same genes: {sub_codons / batched_sub:,.0f} codons/s; "
          f"batched is {naive / batched_sub:.1f}x faster")


if __name__ == "__main__":
    main()
