"""Step 3 of the analysis: per-layer linear probes on the residual stream.

`python scripts/probe_linear.py RUN_ID [--force] [--checkpoints-dir DIR] [--quiet]` is
`codonlm analyze RUN_ID --steps probe_linear`; writes runs/<RUN_ID>/analysis/probe_linear/.
"""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:], "--steps", "probe_linear"]))
