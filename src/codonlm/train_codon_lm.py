"""Training entry point with the manual's name.

    python -m src.codonlm.train_codon_lm -c configs/tiny_cpu.yaml [--resume outputs/checkpoints/<RUN_ID>/last.pt]
    torchrun --nproc_per_node 2 -m codonlm.train_codon_lm -c CONFIG      (DDP)

Same as `codonlm train`; the loop itself lives in codonlm.train.loop.
"""

import sys

from codonlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
