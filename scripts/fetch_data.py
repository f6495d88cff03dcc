"""Fetch the default corpus: same as `codonlm fetch-data`."""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["fetch-data", *sys.argv[1:]]))
