"""Print the run id for a config (the manual's scripts/make_run_id.py): same as `codonlm make-run-id`."""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-run-id", *sys.argv[1:]]))
