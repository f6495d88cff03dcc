"""Does the loader keep the device fed? Training steps on batches the real loader reads from the prepared
NPZ, against the same model on batches already in device memory.

Both feeds run in one process on one model and optimizer, in alternating blocks of --block-steps steps
(loader, in memory, loader, ...), so a machine whose speed drifts hits both alike. A loader step is
timed from asking the DataLoader for the batch to the end of the optimizer step (reading rows from
disk, int64 conversion, the host-to-device copy and the step); an in-memory step is the same step on
one of --resident batches that were read once and moved to the device before timing. The ratio of the
medians says what the loader costs: 1.00x means the device never waits for data. With --epoch, one
whole epoch is also run from the loader, and its wall time is compared with the same number of
in-memory steps (the device's busy share of the epoch).

    python bench/loader_feed.py                                    # CPU, default config, about 2 min on 2 cores
    python bench/loader_feed.py --device cuda --num-workers 4 --epoch
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import time

import torch

from codonlm.config import load_config
from codonlm.data.layout import prepare_workers
from codonlm.data.loader import EpochSampler, WindowDataset, make_loader
from codonlm.data.prepare import prepare
from codonlm.log import log_to
from codonlm.model.tinygpt import TinyGPT
from codonlm.train.loop import single_step
from codonlm.train.optim import build_optimizer
from codonlm.train.precision import pick_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _on_device(batch, device: torch.device):
    return tuple(t.to(device, non_blocking=True) for t in batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny_cpu.yaml")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    ap.add_argument("--blocks", type=int, default=6, help="blocks per feed, alternating")
    ap.add_argument("--block-steps", type=int, default=20)
    ap.add_argument("--resident", type=int, default=8, help="batches held in device memory for the in-memory feed")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on for CUDA, off elsewhere)")
    ap.add_argument("--epoch", action="store_true", help="also time one whole epoch from the loader")
    args = ap.parse_args()

    cfg = load_config(args.config)
    if args.num_workers is not None:
        cfg.system.num_workers = args.num_workers
    device = pick_device(args.device)
    cfg.system.pin_memory = device.type == "cuda"
    with log_to(None):
        report = prepare(cfg, show_progress=False, workers=prepare_workers("auto"))
    dataset = WindowDataset(f"{report['processed']}/all/train.npz")
    torch.manual_seed(cfg.outputs.seed)
    model = TinyGPT(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.train, device.type)
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    batch_size = cfg.train.batch_size
    sampler = EpochSampler(len(dataset), cfg.outputs.seed)
    batches = iter(make_loader(dataset, cfg, sampler, batch_size))
    resident = [_on_device(next(batches), device) for _ in range(args.resident)]
    in_memory = itertools.cycle(resident)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'host'}), "
          f"{'bf16 autocast' if bf16 else 'fp32'}, batch {batch_size} x {cfg.model.block_size + 1} tokens, "
          f"DataLoader workers {cfg.system.num_workers}, {len(dataset):,} training windows in "
          f"{dataset.path}")

    def step(feed) -> float:
        t0 = time.perf_counter()
        single_step(model, optimizer, _on_device(next(feed), device), autocast)
        _sync(device)
        return time.perf_counter() - t0

    for feed in (batches, in_memory, batches, in_memory):  # warm-up: allocator, kernels, page cache
        step(feed)
    times: dict[str, list[float]] = {"loader": [], "in memory": []}
    for block in range(2 * args.blocks):
        name, feed = ("loader", batches) if block % 2 == 0 else ("in memory", in_memory)
        times[name].extend(step(feed) for _ in range(args.block_steps))
    loader, resident_s = statistics.median(times["loader"]), statistics.median(times["in memory"])
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        print(f"{name:>9}: median {1000 * statistics.median(ts):.1f} ms a step (quartiles {1000 * q[0]:.1f} / "
              f"{1000 * q[2]:.1f} ms, {len(ts)} steps)")
    print(f"loader vs in memory: {loader / resident_s:.3f}x the step time (1.00x: the device never waits for data)")

    if args.epoch:
        sampler.set_epoch(1)
        steps = 0
        t0 = time.perf_counter()
        for batch in make_loader(dataset, cfg, sampler, batch_size):
            single_step(model, optimizer, _on_device(batch, device), autocast)
            steps += 1
        _sync(device)
        wall = time.perf_counter() - t0
        busy = steps * resident_s / wall
        print(f"one epoch from the loader: {steps} steps in {wall:.1f} s = "
              f"{steps * batch_size * cfg.model.block_size / wall:,.0f} tokens/s; the same steps in memory would "
              f"take {steps * resident_s:.1f} s: the device is busy {100 * busy:.0f}% of the epoch")


if __name__ == "__main__":
    main()
