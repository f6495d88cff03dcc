"""Step 6 of the analysis: saliency of chosen predictions and the motifs behind them.

`python scripts/analyze_saliency.py RUN_ID [--force] [--checkpoints-dir DIR] [--quiet]` is
`codonlm analyze RUN_ID --steps analyze_saliency`; writes runs/<RUN_ID>/analysis/analyze_saliency/.
"""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:], "--steps", "analyze_saliency"]))
