"""python -m scripts.query_model RUN_ID --mode next|generate|score|mutate --dna ATG... (= `codonlm query`)."""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["query", *sys.argv[1:]]))
