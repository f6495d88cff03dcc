"""Data prep (the manual's scripts/pipeline_prepare.py): same as `codonlm prepare`."""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
