"""Prefix generation evaluation (the manual's scripts/eval_generation_prefix.py).

    python scripts/eval_generation_prefix.py RUN_ID [--temperatures 0.7,1.0,1.3] [--per-genome 50] ...

Writes outputs/scores/<RUN_ID>/gen_prefix/{samples.csv,summary.csv,summary.json,temperature_tradeoff.png};
see `codonlm.evaluate.generation.run_prefix_generation` for the metrics and defaults.
"""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate-prefix", *sys.argv[1:]]))
