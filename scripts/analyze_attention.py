"""Step 5 of the analysis: attention heads (entropy, distance, cross-gene mass, ablation).

`python scripts/analyze_attention.py RUN_ID [--force] [--checkpoints-dir DIR] [--quiet]` is
`codonlm analyze RUN_ID --steps analyze_attention`; writes runs/<RUN_ID>/analysis/analyze_attention/.
"""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:], "--steps", "analyze_attention"]))
