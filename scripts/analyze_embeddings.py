"""Step 4 of the analysis: codon embedding geometry.

`python scripts/analyze_embeddings.py RUN_ID [--force] [--checkpoints-dir DIR] [--quiet]` is
`codonlm analyze RUN_ID --steps analyze_embeddings`; writes runs/<RUN_ID>/analysis/analyze_embeddings/.
"""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:], "--steps", "analyze_embeddings"]))
