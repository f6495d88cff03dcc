"""Model selection for the default config: candidates trained for the same compute budget, ranked
by held-out validation perplexity against the best baseline of the same evaluation table.

Each candidate is the base config (configs/tiny_cpu.yaml) with a few keys changed (CANDIDATES below:
width vs depth at about equal compute, learning rate, batch size, torch.compile). For each one, in
its own child process on --threads torch threads:

  1. a probe: 30 real training steps of that candidate (the same code as `codonlm train`); the
     median CPU seconds per optimizer step (steps 6..30) give the number of steps that fit in
     --budget CPU seconds; the cosine schedule is then planned for exactly those steps
     (train.max_steps), so every candidate anneals fully;
  2. the training itself (its wall and CPU seconds are reported: the budget is an estimate, the
     seconds are measured);
  3. `evaluate_run(split="val")`: the model's perplexity over whole validation genes beside the
     baselines fitted on the train split (unigram, per-genome unigram, Kneser-Ney 3 and 5), i.e. the
     table `codonlm evaluate` writes, on val. Selection never looks at the test split. The baselines
     do not depend on the candidate (same windows, same genes): the Kneser-Ney ones are fitted once,
     in the first candidate's evaluation, and the ratio is to the best baseline over the table.

The budget is CPU seconds, not wall seconds: on a shared machine a candidate that got less of the
CPU still gets the same compute (wall time would favour whoever ran on a quiet minute). With
--threads 1 (the default) CPU seconds are the compute; --parallel 2 keeps both cores busy.

    python bench/model_selection.py                                  # every candidate, 300 CPU s each
    python bench/model_selection.py --budget 120 --only base lr3e-3  # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# name -> keys changed from the base config ({section: {key: value}})
CANDIDATES: dict[str, dict] = {
    "base": {},
    "lr3e-3": {"train": {"lr": 3e-3}, "schedule": {"min_lr": 3e-4}},
    "lr1e-3": {"train": {"lr": 1e-3}, "schedule": {"min_lr": 1e-4}},
    "batch16": {"train": {"batch_size": 16}},
    "batch64": {"train": {"batch_size": 64}},
    "wide3L_d160": {"model": {"n_layer": 3, "n_head": 5, "n_embd": 160}},
    "deep6L_d96": {"model": {"n_layer": 6, "n_head": 4, "n_embd": 96}},
    "deep8L_d64": {"model": {"n_layer": 8, "n_head": 4, "n_embd": 64}},
    "compile": {"system": {"compile": True}},
    "block128": {"model": {"block_size": 128}, "train": {"batch_size": 64}},
    "block128_lr3e-3": {"model": {"block_size": 128}, "train": {"batch_size": 64, "lr": 3e-3},
                        "schedule": {"min_lr": 3e-4}},
    "lr3e-3_batch16": {"train": {"lr": 3e-3, "batch_size": 16}, "schedule": {"min_lr": 3e-4}},
}


def candidate_config(base: dict, changes: dict, workdir: Path) -> dict:
    raw = json.loads(json.dumps(base))
    for section, keys in changes.items():
        raw.setdefault(section, {}).update(keys)
    for d in raw["data"]["datasets"]:
        d["gbff"] = str((ROOT / d["gbff"]).resolve())
    raw["data"]["processed_dir"] = str(ROOT / raw["data"].get("processed_dir", "data/processed"))
    raw["outputs"].update(runs_dir=str(workdir / "runs"), out_dir=str(workdir / "checkpoints"),
                          scores_dir=str(workdir / "scores"),
                          itos_path=str(ROOT / raw["outputs"].get("itos_path", "data/processed/itos.json")))
    raw["train"].update(checkpoint_every=0)
    return raw


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child(config_path: str, name: str, budget: float, threads: int, kn_orders: tuple[int, ...]) -> None:
    """Probe, train for the budget, evaluate on val; print one JSON line."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from codonlm.config import load_config
    from codonlm.data.prepare import prepare
    from codonlm.evaluate.heldout import evaluate_run
    from codonlm.log import log_to
    from codonlm.train.loop import train

    torch.set_num_threads(threads)
    cfg = load_config(config_path)
    cfg.system.num_threads = threads
    probe_cfg = cfg.model_copy(deep=True)
    probe_cfg.train.max_steps = 30
    probe_cfg.data.val_frac = 0.002  # its end-of-run validation is not what it is for: keep it short
    with log_to(None):
        prepare(probe_cfg, show_progress=False)
        prepare(cfg, show_progress=False)  # a candidate with its own block_size has its own windows
    stamps: list[float] = []
    hook = register_optimizer_step_post_hook(lambda *_: stamps.append(time.process_time()))
    with log_to(None):
        train(probe_cfg, f"{name}-probe")
    hook.remove()
    cpu_per_step = statistics.median(b - a for a, b in zip(stamps[5:], stamps[6:], strict=False))
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum_steps * cfg.model.block_size
    steps = max(50, int(budget / cpu_per_step))
    cfg.train.max_steps, cfg.train.epochs = steps, 100
    cfg.train.eval_every = 0  # validation at the end only: the budget goes to training
    cpu0 = _cpu_seconds()
    with log_to(None):
        summary = train(cfg, name)
    cpu = _cpu_seconds() - cpu0
    metrics = evaluate_run(name, checkpoints_dir=cfg.outputs.out_dir, split="val", kn_orders=kn_orders,
                           out_dir=Path(cfg.outputs.runs_dir) / name / "evaluate_val")
    print(json.dumps({
        "candidate": name, "params": summary["n_params"], "threads": threads,
        "probe_cpu_s_per_step": round(cpu_per_step, 4), "steps": summary["steps"],
        "tokens_seen": summary["steps"] * tokens_per_step, "train_s": summary["seconds"], "train_cpu_s": round(cpu, 1),
        "val_perplexity": metrics["model"]["perplexity"],
        "baselines": {k: v["perplexity"] for k, v in metrics["baselines"].items()},
        "precision": summary["precision"],
    }))


def run_candidate(name: str, base: dict, args: argparse.Namespace, workdir: Path, kn_orders: str) -> dict:
    raw = candidate_config(base, CANDIDATES[name], workdir)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, dir=workdir) as f:
        yaml.safe_dump(raw, f)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", f.name, "--name", name, "--budget", str(args.budget),
                          "--threads", str(args.threads), "--kn-orders", kn_orders], capture_output=True, text=True, cwd=ROOT)
    Path(f.name).unlink()
    if out.returncode != 0:
        return {"candidate": name, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"  {name}: val perplexity {row['val_perplexity']:.2f} after {row['steps']} steps, {row['train_cpu_s']:.0f} CPU s", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny_cpu.yaml", help="base config")
    ap.add_argument("--budget", type=float, default=300.0, help="training CPU seconds per candidate")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per candidate")
    ap.add_argument("--parallel", type=int, default=2, help="candidates trained at once")
    ap.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="these candidates (default: all)")
    ap.add_argument("--workdir", default="outputs/bench/model_selection")
    ap.add_argument("--json", help="also write the table here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--kn-orders", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.name, args.budget, args.threads, tuple(int(k) for k in args.kn_orders.split(",") if k))
        return

    from codonlm.config import parse_config
    from codonlm.data.prepare import prepare
    from codonlm.log import log_to

    base = yaml.safe_load((ROOT / args.config).read_text())
    names = args.only or list(CANDIDATES)
    workdir = (ROOT / args.workdir / time.strftime("%Y%m%d-%H%M%S")).resolve()
    workdir.mkdir(parents=True)
    with log_to(None):
        prepare(parse_config(candidate_config(base, {}, workdir)), show_progress=False)
    print(f"model selection: {len(names)} candidates x {args.budget:.0f} CPU s of training, {args.threads} thread(s) each, "
          f"{args.parallel} at once; base {args.config}; outputs in {workdir}", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda n: run_candidate(n, base, args, workdir, "3,5" if n == names[0] else ""), names))
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: r["val_perplexity"])
    baselines = {k: v for r in ok for k, v in r["baselines"].items()}
    best = min(baselines, key=baselines.get) if baselines else None
    for r in ok:
        r["best_baseline"], r["best_baseline_perplexity"] = best, baselines[best]
        r["ratio"] = r["val_perplexity"] / baselines[best]
    print("baselines on val: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(baselines.items(), key=lambda kv: kv[1])))
    print("\n| candidate | params | steps | tokens seen | train wall s (CPU s) | val perplexity | best baseline (val) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in ok:
        print(f"| {r['candidate']} | {r['params']:,} | {r['steps']:,} | {r['tokens_seen'] / 1e6:.1f}M | "
              f"{r['train_s']:.0f} ({r['train_cpu_s']:.0f}) | {r['val_perplexity']:.2f} | "
              f"{r['best_baseline']} {r['best_baseline_perplexity']:.2f} | {r['ratio']:.3f} |")
    for r in rows:
        if "error" in r:
            print(f"{r['candidate']}: FAILED: {r['error']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if ok and math.isfinite(ok[0]["val_perplexity"]):
        print(f"best: {ok[0]['candidate']} ({ok[0]['ratio']:.3f}x the best baseline on val)")


if __name__ == "__main__":
    main()
