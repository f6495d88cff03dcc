"""Training memory does not grow with the corpus: peak RSS and step time of 50 training steps on the
default corpus and on 10x and 30x copies of it (every dataset repeated under new names).

Each training run is a fresh child process running `codonlm.train.loop.train` on the default config
(configs/tiny_cpu.yaml in fp32, val_frac and test_frac 0.01 so the end-of-run validation stays short), so its
peak RSS (ru_maxrss) is its own. Step time is measured between optimizer steps (a global optimizer
hook), the median of steps 6..N; after training, the same process times reading 200 random batches
(the loader's share of a step). Beside it: the bytes the windows would take as int64 tensors in RAM
(what the loader held before it read batches from disk).

Prepared data goes to --workdir and is reused on the next run (the key is the same), so only the
first run pays for preparing the 10x and 30x corpora (about 0.65 and 2 GB of GenBank text).

    python bench/train_memory.py                       # 1x, 10x, 30x
    python bench/train_memory.py --scales 1 10 --steps 30
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _child_train(config_path: str, steps: int) -> None:
    """Train `steps` steps; print a JSON line with peak RSS and the time between optimizer steps."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from codonlm.config import load_config
    from codonlm.log import log_to
    from codonlm.train.loop import train

    stamps: list[float] = []
    register_optimizer_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
    cfg = load_config(config_path)
    cfg.train.max_steps = steps
    with log_to(None):
        summary = train(cfg, "train-memory")
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][5:]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "step_s": statistics.median(gaps), "steps": summary["steps"],
                      "batch_read_s": _batch_read_seconds(cfg, "train-memory")}))


def _batch_read_seconds(cfg, run_id: str, batches: int = 200) -> float:
    """Median time to read one random training batch from disk (the loader's share of a step)."""
    import numpy as np

    from codonlm.data.layout import run_split_path
    from codonlm.data.loader import WindowDataset

    ds = WindowDataset(run_split_path(cfg, run_id, "train"))
    rng = np.random.default_rng(0)
    times = []
    for _ in range(batches):
        idx = rng.choice(len(ds), size=cfg.train.batch_size, replace=False)
        t0 = time.perf_counter()
        ds.__getitems__(idx)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scaled_config(base: dict, scale: int, workdir: Path, rundir: Path) -> dict:
    raw = json.loads(json.dumps(base))
    datasets = raw["data"]["datasets"]
    for d in datasets:
        d["gbff"] = str((ROOT / d["gbff"]).resolve())
    raw["data"]["datasets"] = [{**d, "name": f"{d['name']}_copy{k}"} if scale > 1 else d
                               for k in range(scale) for d in datasets]
    raw["data"].update(val_frac=0.01, test_frac=0.01, processed_dir=str(workdir / "processed"))
    # fp32: on CPUs without AVX-512 BF16 bf16 autocast is emulated and slow; memory is what is measured here
    raw["train"].update(epochs=1, checkpoint_every=0, amp=False)
    raw["outputs"].update(itos_path=str(workdir / "processed" / "itos.json"), runs_dir=str(rundir / "runs"),
                          out_dir=str(rundir / "ckpt"), scores_dir=str(rundir / "scores"))
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny_cpu.yaml")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 30])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--workdir", default="outputs/bench/train_memory", help="prepared data, kept for re-runs")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--child-train", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_train:
        _child_train(args.child_train, args.steps)
        return

    from codonlm.config import parse_config
    from codonlm.data.prepare import prepare
    from codonlm.log import log_to

    base = yaml.safe_load((ROOT / args.config).read_text())
    workdir = (ROOT / args.workdir).resolve()
    results = []
    for scale in args.scales:
        with tempfile.TemporaryDirectory(prefix="train_memory_") as td:
            raw = scaled_config(base, scale, workdir, Path(td))
            t0 = time.perf_counter()
            with log_to(None):
                report = prepare(parse_config(raw), show_progress=False)
            prep_s = time.perf_counter() - t0
            cfg_path = Path(td) / "config.yaml"
            cfg_path.write_text(yaml.safe_dump(raw))
            out = subprocess.run([sys.executable, __file__, "--child-train", str(cfg_path), "--steps", str(args.steps)],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                sys.exit(f"training at {scale}x failed:\n{out.stderr[-3000:]}")
        run = json.loads(out.stdout.strip().splitlines()[-1])
        train_split = report["splits"]["train"]
        int64_mb = train_split["windows"] * (raw["model"]["block_size"] + 1) * 3 * 8 / 1e6
        results.append({"scale": scale, "train_windows": train_split["windows"], "int64_in_ram_mb": int64_mb,
                        "prepare_s": prep_s, "prepare_reused": report["reused"], **run})
        r = results[-1]
        print(f"{scale:>3}x: {r['train_windows']:>9,} train windows (as int64 in RAM: {int64_mb:,.0f} MB) | "
              f"peak RSS {r['peak_rss_mb']:,.0f} MB | step {1000 * r['step_s']:.0f} ms (median of steps 6..{r['steps']}), "
              f"reading a batch {1000 * r['batch_read_s']:.2f} ms"
              f" | prepare {'reused' if r['prepare_reused'] else f'{prep_s:.0f} s'}", flush=True)
    small = results[0]
    for r in results[1:]:
        print(f"{r['scale']}x vs {small['scale']}x: peak RSS {r['peak_rss_mb'] / small['peak_rss_mb']:.2f}x "
              f"(goal <= 1.2x), step time {r['step_s'] / small['step_s']:.2f}x (goal within 5%), reading a batch "
              f"{r['batch_read_s'] / small['batch_read_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
