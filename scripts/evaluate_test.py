"""Held-out evaluation (the manual's scripts/evaluate_test.py): same as `codonlm evaluate RUN_ID`."""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
