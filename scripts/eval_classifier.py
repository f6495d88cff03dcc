"""python -m scripts.eval_classifier ... (the manual's Stage-2 command; = `codonlm eval-classifier`)."""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval-classifier", *sys.argv[1:]]))
