"""Wall-clock and CPU time of each analysis step on a run (target: all six within 3 minutes on 2 cores).

    .venv/bin/python bench/analysis_time.py RUN_ID [--steps STEP ...] [--checkpoints-dir DIR]

Re-runs the steps (force) and prints one row per step: wall seconds, CPU seconds of this process
(all threads), and the wall time in units of a peer measured in the same run (one fp32 forward pass
of the run's model over 16 windows of block_size tokens, median of 5, before and after the steps),
with the 1-minute load average, so a figure from a shared machine reads as such and converts to
another machine. The step outputs in runs/<RUN_ID>/analysis/ are rewritten (same seeds, same numbers).
"""

from __future__ import annotations

import argparse
import os
import time

from codonlm.analysis.runner import analyze


def reference_forward_seconds(model, block_size: int, repeats: int = 5) -> float:
    """Median wall time of one forward pass over 16 random windows: the peer the steps are measured against."""
    import torch

    idx = torch.randint(4, 68, (16, block_size), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        model(idx)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(idx)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id")
    parser.add_argument("--steps", nargs="+")
    parser.add_argument("--checkpoints-dir", help="default: the run's outputs.out_dir (runs/<RUN_ID>/config.yaml)")
    args = parser.parse_args()
    import torch

    from codonlm.analysis.context import load_context

    load_before = os.getloadavg()[0]
    ctx = load_context(args.run_id, args.checkpoints_dir, quiet=True)
    ref_before = reference_forward_seconds(ctx.model, ctx.cfg.model.block_size)
    t0 = time.perf_counter()
    results = analyze(args.run_id, args.steps, force=True, context=ctx)
    total = time.perf_counter() - t0
    ref = (ref_before + reference_forward_seconds(ctx.model, ctx.cfg.model.block_size)) / 2
    print(f"\n{'step':<20}{'status':>10}{'wall s':>10}{'CPU s':>10}{'x ref':>10}")
    for name, s in results.items():
        wall = s.get("seconds", float("nan"))
        print(f"{name:<20}{s.get('status', '?'):>10}{wall:>10.1f}{s.get('cpu_seconds', float('nan')):>10.1f}"
              f"{wall / ref:>10.0f}")
    print(f"{'total':<30}{total:>10.1f}{'':>10}{total / ref:>10.0f}")
    print(f"ref = one forward of 16 x {ctx.cfg.model.block_size} tokens: {ref:.3f} s ({ref_before:.3f} s before); "
          f"torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
