"""Wall-clock and CPU time of each analysis step on a run (target: all six within 3 minutes on 2 cores).

    .venv/bin/python bench/analysis_time.py RUN_ID [--steps STEP ...] [--checkpoints-dir DIR]

Re-runs the steps (force) and prints one row per step: wall seconds, CPU seconds of this process
(all threads), and the 1-minute load average before and after, so a figure from a shared machine
reads as such. The step outputs in runs/<RUN_ID>/analysis/ are rewritten (same seeds, same numbers).
"""

from __future__ import annotations

import argparse
import os
import time

from codonlm.analysis.runner import analyze


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id")
    parser.add_argument("--steps", nargs="+")
    parser.add_argument("--checkpoints-dir", default="outputs/checkpoints")
    args = parser.parse_args()
    import torch

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    results = analyze(args.run_id, args.steps, checkpoints_dir=args.checkpoints_dir, force=True, quiet=True)
    total = time.perf_counter() - t0
    print(f"\n{'step':<20}{'status':>10}{'wall s':>10}{'CPU s':>10}")
    for name, s in results.items():
        print(f"{name:<20}{s.get('status', '?'):>10}{s.get('seconds', float('nan')):>10.1f}"
              f"{s.get('cpu_seconds', float('nan')):>10.1f}")
    print(f"{'total (with loading)':<30}{total:>10.1f}")
    print(f"torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
