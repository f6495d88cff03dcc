"""Step 2 of the analysis: next-codon distributions vs codon usage, the loss split, stop and start handling.

`python scripts/probe_next_token.py RUN_ID [--force] [--checkpoints-dir DIR] [--quiet]` is
`codonlm analyze RUN_ID --steps probe_next_token`; writes runs/<RUN_ID>/analysis/probe_next_token/.
"""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:], "--steps", "probe_next_token"]))
