"""How steady `train.amp: auto`'s CPU choice is: its timing (interleaved bf16/fp32 training steps of the
config's model on TIMING_WINDOWS windows, as training runs it at start) repeated --trials times, one JSON
line per trial with the choice and the bf16 speed-up of every timed pair.

On a busy machine step times swing several-fold; run it with --threads 2 and --threads 1 to see how
far the choice holds with the cores shared and not.

    python bench/amp_choice.py --trials 6 --threads 2     # ~1-6 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from codonlm.config import load_config
from codonlm.data.codons import CODON_OFFSET, VOCAB_SIZE
from codonlm.model.tinygpt import TinyGPT
from codonlm.train.loop import TIMING_WINDOWS, single_step
from codonlm.train.optim import build_optimizer
from codonlm.train.precision import choose_precision, step_timer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="configs/tiny_cpu.yaml")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = TinyGPT(cfg.model)
    width = cfg.model.block_size + 1  # a prepared window: block_size inputs and their targets
    tokens = torch.randint(CODON_OFFSET, VOCAB_SIZE, (TIMING_WINDOWS, width))
    batch = (tokens, torch.zeros_like(tokens), torch.arange(width).expand(TIMING_WINDOWS, width).contiguous())
    cpu = torch.device("cpu")
    for trial in range(args.trials):
        t0 = time.perf_counter()
        timer = step_timer(model, lambda m: build_optimizer(m, cfg.train, "cpu"), batch, cpu, single_step)
        chosen = choose_precision("auto", cpu, timer)
        print(json.dumps({"trial": trial, "threads": args.threads, "seconds": round(time.perf_counter() - t0, 1),
                          "dtype": chosen.dtype, "bf16_speedups": chosen.measurement["bf16_speedup_per_repeat"],
                          "tokens_per_s_median": chosen.measurement["tokens_per_s_median"]}), flush=True)


if __name__ == "__main__":
    main()
