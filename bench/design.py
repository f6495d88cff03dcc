"""Design speed: greedy, beam 4, 10 samples and greedy with DnaChisel constraints on a ~1,000-aa real protein;
with --all, greedy design of every held-out protein of every host, each translated back.

    .venv/bin/python bench/design.py --run RUN_ID [--host ecoli_k12] [--length 1000] [--repeats 2]
    .venv/bin/python bench/design.py --run RUN_ID --all [--batch 32]

The protein is the host's training gene closest to `--length` codons (prepared data of the run). Each
mode runs `--repeats` times through `CodonLM.design` (the host reference is built once before timing);
the best wall time is reported beside CPU seconds and the load average (a busy shared machine inflates
wall time; ratios within one process blur less). The sliding-window cost is ms per codon of greedy
decoding inside the context (the first block_size - 2 residues alone) against the whole protein, past it.
Issue 21's targets (2 cores): greedy <= 5 s, beam 4 <= 20 s, 10 samples <= 20 s, constraints <= 3x greedy.

--all: every test-split protein of every host, greedy, in length-sorted batches through the decoder
`codonlm design` uses (`design_every_heldout`); each design is checked by codonlm's own check and again by
Biopython (a CDS: a start codon of the host's table, one stop, at the end, encoding exactly the protein).
Prints per host the proteins designed, refused (a stop inside: selenoproteins) and back-translation
failures (must be 0; exit status 1 otherwise), and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from Bio.Data.CodonTable import TranslationError
from Bio.Seq import Seq

from codonlm import CodonLM
from codonlm.data.codons import decode, translate
from codonlm.data.layout import run_split_path
from codonlm.io import read_split_genes

CONSTRAINTS = {"avoid": "EcoRI,BsaI", "gc": "0.3-0.7", "gc_window": 100, "max_homopolymer": 6}


def timed(fn, repeats: int) -> dict:
    best, cpu = float("inf"), 0.0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best, cpu = min(best, time.perf_counter() - t0), time.process_time() - c0
    return {"wall_s": round(best, 2), "cpu_s": round(cpu, 2)}


def biopython_mismatch(dna: str, protein: str, table_id: int) -> bool:
    """True unless Biopython reads `dna` as a CDS of exactly `protein` (a fragment not starting with M:
    a codon of its first residue, then the protein and one stop)."""
    try:
        if protein.startswith("M"):
            return str(Seq(dna).translate(table=table_id, cds=True)) != protein
        return str(Seq(dna).translate(table=table_id)) != protein + "*"
    except TranslationError:  # not a CDS: no start codon, a stop inside, ...
        return True


def every_heldout(lm: CodonLM, runs_dir: str | None, batch: int) -> int:
    """Greedy design of every held-out protein of every host; per-host counts and the wall time. Exit status."""
    from codonlm.evaluate.design_bench import design_every_heldout

    t0, load = time.perf_counter(), os.getloadavg()
    results = design_every_heldout(lm.model, lm.design_prompt, lm.cfg, str(lm.run_id), runs_dir=runs_dir,
                                   batch=batch, device=lm.device)
    print(f"{'host':40s} {'designed':>8s} {'refused':>7s} {'failures':>8s} {'biopython':>9s} {'seconds':>8s}")
    failures = 0
    for r in results:
        bio = sum(biopython_mismatch(decode(ids), protein, r.table_id) for _, protein, ids in r.designs)
        failures += len(r.failures) + bio
        print(f"{r.host:40s} {len(r.designs):8d} {len(r.refused):7d} {len(r.failures):8d} {bio:9d} {r.seconds:8.1f}")
        for name, reason in r.refused:
            print(f"  refused {name}: {reason}")
    print(f"{sum(len(r.designs) for r in results)} proteins designed, {failures} back-translation failures, "
          f"{time.perf_counter() - t0:.0f} s wall (run {lm.run_id}, batch {batch}, load average {load[0]:.1f} "
          f"before, {os.getloadavg()[0]:.1f} after)")
    return 1 if failures else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--host", default="ecoli_k12")
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--all", action="store_true", help="greedy design of every held-out protein of every host")
    ap.add_argument("--batch", type=int, default=32, help="--all: proteins decoded together (default: 32)")
    ap.add_argument("--runs-dir")
    args = ap.parse_args()
    lm = CodonLM.load(args.run, runs_dir=args.runs_dir)
    if args.all:
        raise SystemExit(every_heldout(lm, args.runs_dir, args.batch))
    train = read_split_genes(run_split_path(lm.cfg, str(lm.run_id), "train", runs_dir=args.runs_dir))
    d = train.dataset_names.index(args.host)
    genes = [train.codons(g) for g in train.of_dataset(d)]
    gene = min(genes, key=lambda g: abs(len(g) - 1 - args.length))
    protein = translate(gene, next(s.transl_table for s in lm.cfg.data.datasets if s.name == args.host))
    lm.design(protein[:20], args.host)  # builds the host reference, outside the timings
    block = lm.model.cfg.block_size
    short = protein[: block - 2]
    out = {"run": str(lm.run_id), "host": args.host, "protein_length": len(protein), "block_size": block,
           "load_average": os.getloadavg(), "torch_threads_in_decoding": 1}
    out["greedy"] = timed(lambda: lm.design(protein, args.host), args.repeats)
    out["beam4"] = timed(lambda: lm.design(protein, args.host, beam=4), args.repeats)
    out["samples10"] = timed(lambda: lm.design(protein, args.host, samples=10), args.repeats)
    out["greedy_constrained"] = timed(lambda: lm.design(protein, args.host, **CONSTRAINTS), args.repeats)
    out["constrained_over_greedy"] = round(out["greedy_constrained"]["wall_s"] / out["greedy"]["wall_s"], 2)
    inside = timed(lambda: lm.design(short, args.host), args.repeats)
    out["ms_per_codon_inside_block"] = round(1e3 * inside["wall_s"] / (len(short) + 1), 2)
    out["ms_per_codon_whole_protein"] = round(1e3 * out["greedy"]["wall_s"] / (len(protein) + 1), 2)
    out["load_average_after"] = os.getloadavg()
    out["constraints"] = CONSTRAINTS
    print(json.dumps(out, indent=1, default=lambda x: np.round(x, 2).tolist()))


if __name__ == "__main__":
    main()
