"""python -m scripts.train_classifier ... (the manual's Stage-2 command; = `codonlm train-classifier`)."""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-classifier", *sys.argv[1:]]))
