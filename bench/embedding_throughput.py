"""Embedding throughput: genes/s and codons/s of `embed_genes` (what extract_embeddings and `codonlm stage2`
run), beside the bare forward pass (logits, no hooks, no pooling) of exactly the same batches, in the same run.

    .venv/bin/python bench/embedding_throughput.py [--run RUN_ID] [--genes 400] [--repeats 3] [--amp]

Goal: extraction within 1.25x of the bare forward. Rounds alternate extraction and bare forward and the best
round of each is kept, so a shared, noisy machine slows both alike. Genes: the test split of
data/processed/all; with no --run, a freshly initialised TinyGPT of configs/tiny_cpu.yaml (speed does not
depend on the weights).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from codonlm.config import load_config
from codonlm.data.codons import decode, encode
from codonlm.evaluate.sliding import gene_rows, row_batches
from codonlm.io import read_split_genes
from codonlm.model.load import load_model
from codonlm.model.tinygpt import TinyGPT
from codonlm.stage2.embeddings import embed_genes


def bare_forward(model: TinyGPT, seqs: list[str], max_tokens: int, amp: bool) -> None:
    """model(idx) over the same tokens in non-overlapping windows: the floor extraction is measured against."""
    T = model.cfg.block_size
    tokens = [encode(s, add_bos=True, add_eos=True) for s in seqs]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        for _, idx in row_batches(tokens, gene_rows([t.size - 1 for t in tokens], T, T), max_tokens):
            model(idx, segment_ids=torch.ones_like(idx))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="run id under --checkpoints-dir (default: untrained tiny_cpu model)")
    ap.add_argument("--checkpoints-dir", help="default: the run's outputs.out_dir (runs/<RUN_ID>/config.yaml)")
    ap.add_argument("--config", default="configs/tiny_cpu.yaml")
    ap.add_argument("--genes", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for both")
    args = ap.parse_args()

    if args.run:
        model, cfg, _ = load_model(args.run, args.checkpoints_dir)
    else:
        cfg = load_config(args.config)
        torch.manual_seed(0)
        model = TinyGPT(cfg.model).eval()
    test = read_split_genes(f"{cfg.data.processed_dir}/all/test.npz")
    pick = np.random.default_rng(0).choice(len(test.genes), size=min(args.genes, len(test.genes)), replace=False)
    seqs = [decode(test.codons(int(g))) for g in pick]
    codons = sum(len(s) // 3 for s in seqs)
    print(f"model: {model.num_params():,} params, block {cfg.model.block_size}; {len(seqs)} test genes, {codons:,} "
          f"codons; torch threads {torch.get_num_threads()}; amp {args.amp}")

    best = {"extract": float("inf"), "bare": float("inf")}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        embed_genes(model, seqs, max_tokens=args.batch_tokens, amp=args.amp, show_progress=False)
        best["extract"] = min(best["extract"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        bare_forward(model, seqs, args.batch_tokens, args.amp)
        best["bare"] = min(best["bare"], time.perf_counter() - t0)
    for name, seconds in best.items():
        print(f"{name:8s} {seconds:6.2f} s -> {len(seqs) / seconds:7.1f} genes/s, {codons / seconds:9,.0f} codons/s")
    print(f"extraction / bare forward = {best['extract'] / best['bare']:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
