"""python -m scripts.extract_embeddings ... (the manual's Stage-2 command; = `codonlm extract-embeddings`)."""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract-embeddings", *sys.argv[1:]]))
