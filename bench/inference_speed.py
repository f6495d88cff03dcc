"""Inference speed in one table: scoring, embeddings and the exact variant scan, each as codons/s (or
seconds) and as a ratio against the bare forward pass of the same tokens, measured in the same process.

    .venv/bin/python bench/inference_speed.py [--run RUN_ID] [--genes 2000] [--scan-codons 300 1000]
        [--scan-every 10] [--amp] [--threads N] [--device cuda] [--synthetic]

Rows (genes: the test split, then train, of the run's prepared data; with no --run, an untrained TinyGPT of
configs/tiny_cpu.yaml on data/processed, since speed does not depend on the weights):

    bare forward      model(idx) over non-overlapping windows of block_size tokens: every token once, the floor
    score (sliding)   score_genes, default: sliding-window attention, each token computed once
    score (stride/4)  score_genes(stride=block_size // 4): the earlier default, strided windows
    embed + loglik    read_genes, every layer, mean pool, with each gene's mean log-likelihood (stage 2's pass)
    scan exact        VariantScanner (bf16 with --amp) on the E. coli gene nearest each --scan-codons length,
                      every --scan-every-th position, time extrapolated to the whole gene; its work in forward
                      tokens is n + 1 + 63 x sum over positions of (n + 1 - i) (`scan_work_tokens`). Each scan
                      runs in a fresh process: its peak RSS is the scan's own (the kernel's peak mark is reset
                      once the model is loaded; torch + model alone are ~264 MB), and its ratio is against
                      the bare forward of 200 real genes timed in that process before and after the scan

Rounds alternate the rows and the best of --repeats is kept, so load slows all alike; the header prints the
CPU model (lscpu), whether it has native bf16 (avx512_bf16 / amx_bf16) and the load average. Runs in about
a minute on an idle 2-core machine with the defaults.
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

from codonlm.config import load_config
from codonlm.data.codons import decode, frame_gene
from codonlm.data.layout import data_key, key_dir, run_split_path
from codonlm.evaluate.perplexity import score_genes
from codonlm.evaluate.sliding import gene_rows, row_batches
from codonlm.evaluate.variants import VariantScanner, scan_work_tokens
from codonlm.io import read_split_genes
from codonlm.model.load import load_model
from codonlm.model.tinygpt import TinyGPT
from codonlm.stage2.embeddings import read_genes


def machine() -> tuple[str, bool]:
    """lscpu's model name, and whether the CPU has native bf16 arithmetic."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        text = ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in text.splitlines() if line.startswith("Flags")), "")
    return name, "avx512_bf16" in flags or "amx_bf16" in flags


def load(args) -> tuple[TinyGPT, list[np.ndarray], str | None]:
    """The model and real gene token arrays (`<BOS> codons <EOS>`), test split first (random codons of
    50-800 codons with --synthetic, which needs no prepared data)."""
    if args.synthetic:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        genes = [frame_gene(rng.integers(4, 68, n).astype(np.uint8)) for n in rng.integers(50, 800, args.genes)]
        return TinyGPT(load_config(args.config).model).eval(), genes, None
    if args.run:
        model, cfg, _ = load_model(args.run, args.checkpoints_dir)
        paths = [run_split_path(cfg, args.run, s) for s in ("test", "train")]
    else:
        cfg = load_config(args.config)
        torch.manual_seed(0)
        model = TinyGPT(cfg.model).eval()
        paths = [key_dir(cfg.data.processed_dir, data_key(cfg).key) / "all" / f"{s}.npz" for s in ("test", "train")]
    genes = [g for p in paths for g in read_split_genes(p).genes]
    return model, genes, str(paths[0].parent.parent)


def bare_forward(model, genes: list[np.ndarray], amp: bool) -> None:
    T = model.cfg.block_size
    device = next(model.parameters()).device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for _, idx in row_batches(genes, gene_rows([g.size - 1 for g in genes], T, T), 16384):
            idx = idx.to(device)
            model(idx, segment_ids=torch.ones_like(idx))


def scan_pool(processed: str) -> list[np.ndarray]:
    """Codon arrays of the E. coli K-12 genes, test split then train, each with its name as `.name`."""
    pool = []
    for split in ("test", "train"):
        path = f"{processed}/ecoli_k12/{split}.npz"
        if os.path.exists(path):
            genes = read_split_genes(path)
            for g in range(len(genes.genes)):
                codons = genes.codons(g).view(NamedCodons)
                codons.name = genes.names[g]
                pool.append(codons)
    return pool


class NamedCodons(np.ndarray):
    """A codon array that carries its gene's name."""

    name = "?"


def scan_gene(processed: str | None, n_codons: int) -> np.ndarray:
    """The E. coli K-12 gene (test split, then train) whose length is nearest n_codons (random codons
    without prepared data)."""
    if processed is None:
        return np.random.default_rng(1).integers(4, 68, n_codons).astype(np.uint8)
    return min(scan_pool(processed), key=lambda c: abs(c.size - n_codons))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="run id (default: an untrained tiny_cpu model)")
    ap.add_argument("--checkpoints-dir")
    ap.add_argument("--config", default="configs/tiny_cpu.yaml")
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--scan-codons", type=int, nargs="*", default=[300, 1000], help="exact scans of the real genes "
                    "nearest these lengths, each in a fresh process (none: skip)")
    ap.add_argument("--scan-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--scan-every", type=int, default=10, help="scan every k-th position, extrapolate (1: all)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for every row")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--synthetic", action="store_true", help="random genes and an untrained model (no data needed)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, genes, processed = load(args)
    device = torch.device(args.device)
    model.to(device)
    if args.scan_child:
        del genes
        scan_child(args, model, processed, device)
        return
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    genes = genes[: args.genes]
    codons = sum(g.size - 2 for g in genes)
    seqs = [decode(g[1:-1]) for g in genes]
    T = model.cfg.block_size
    rows = {"bare forward": lambda: bare_forward(model, genes, args.amp),
            "score (sliding)": lambda: score_genes(model, genes, device, amp=args.amp),
            f"score (stride {T // 4})": lambda: score_genes(model, genes, device, amp=args.amp, stride=T // 4),
            "embed + loglik": lambda: read_genes(model, seqs, "all", amp=args.amp, show_progress=False)}
    best = {name: float("inf") for name in rows}
    for _ in range(args.repeats):
        for name, run in rows.items():
            t0 = time.perf_counter()
            run()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    bare = best["bare forward"]

    name, native = machine()
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (host: {name})"
    print(f"# {name}; native bf16: {'yes' if native else 'no'}; precision: {'bf16' if args.amp else 'fp32'}; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    print(f"# model {model.num_params():,} params, block {T}; {len(genes):,} genes, {codons:,} codons; "
          f"best of {args.repeats}")
    print(f"{'row':22s} {'seconds':>9s} {'codons/s':>10s} {'x bare':>7s}")
    for row, seconds in best.items():
        print(f"{row:22s} {seconds:9.2f} {codons / seconds:10,.0f} {seconds / bare:7.2f}", flush=True)
    for length in args.scan_codons:
        r = json.loads(subprocess.run([sys.executable, __file__, *sys.argv[1:], "--scan-child", str(length)],
                                      capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        label = f"scan exact {r['codons']} codons"
        print(f"{label:22s} {r['seconds']:9.1f} {'':>10s} {r['ratio']:7.2f}   "
              f"({r['gene']}: {r['work']:,} forward tokens; {r['positions']} of {r['codons']} positions timed"
              f"{', extrapolated' * r['extrapolated']}; scan {r['tokens_per_s']:,.0f} tokens/s vs bare forward "
              f"{r['bare_tokens_per_s']:,.0f} in its own process; peak RSS {r['peak_rss_mb']:,.0f} MB, "
              f"{r['start_rss_mb']:,.0f} MB before the scan; load {r['load']:.1f})", flush=True)


def scan_child(args, model, processed: str | None, device: torch.device) -> None:
    """One exact scan in a fresh process (its peak RSS is the scan's own), between two timed bare forward
    passes of 200 real genes in the same process (the ratio's denominator); prints one JSON line."""
    wt = scan_gene(processed, args.scan_child)
    n, T = wt.size, model.cfg.block_size
    reference = [frame_gene(c) for c in scan_pool(processed)[:200]] if processed else [frame_gene(wt)] * 20
    ref_tokens = sum(g.size - 1 for g in reference)
    positions = list(range(1, n + 1, args.scan_every))
    bare = [timed(lambda: bare_forward(model, reference, args.amp), device)]
    start_rss = reset_peak_rss()
    scanner = VariantScanner(model, amp=args.amp)
    part = timed(lambda: [None for _ in scanner.scan(wt, positions)], device)
    peak = peak_rss_mb()
    bare.append(timed(lambda: bare_forward(model, reference, args.amp), device))
    work, done = scan_work_tokens(n, range(1, n + 1)), scan_work_tokens(n, positions)
    bare_tps = ref_tokens / min(bare)
    print(json.dumps({"gene": getattr(wt, "name", "random"), "codons": n, "positions": len(positions),
                      "extrapolated": done < work, "work": work, "seconds": part * work / done,
                      "tokens_per_s": done / part, "bare_tokens_per_s": bare_tps, "ratio": bare_tps * part / done,
                      "peak_rss_mb": peak, "start_rss_mb": start_rss, "load": os.getloadavg()[0], "block": T}))


def timed(run, device: torch.device) -> float:
    t0 = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def reset_peak_rss() -> float:
    """Resident MB now, after resetting the kernel's peak-RSS mark (Linux /proc/self/clear_refs), so that the
    peak read later is what came after; where it cannot be reset, the peak stays the process's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return proc_status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    return proc_status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None

if __name__ == "__main__":
    main()
