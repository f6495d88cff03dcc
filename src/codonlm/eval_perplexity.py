"""Perplexity entry point with the manual's name (src/codonlm/eval_perplexity.py).

    python -m codonlm.eval_perplexity RUN_ID                      held-out test metrics + baselines
    python -m codonlm.eval_perplexity RUN_ID --fasta cds.fasta    one row per sequence
"""

import sys

from codonlm.cli import main


def _argv(args: list[str]) -> list[str]:
    return ["eval-perplexity", *args] if "--fasta" in args else ["evaluate", *args]


if __name__ == "__main__":
    sys.exit(main(_argv(sys.argv[1:])))
