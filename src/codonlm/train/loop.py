"""The training loop, readable top to bottom: data, model, optimizer, then epochs of steps.

Resume is exact: data order depends only on (seed, epoch), checkpoints carry the RNG state and
the position within the epoch, so a resumed run repeats an uninterrupted one step for step.
"""

from __future__ import annotations

import contextlib
import csv
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from codonlm.config import Config, config_to_yaml, parse_config
from codonlm.data.codons import ITOS, loss_mask
from codonlm.data.layout import run_split_path
from codonlm.data.loader import EpochSampler, WindowDataset, make_loader
from codonlm.errors import UserError
from codonlm.io import atomic_path
from codonlm.model.tinygpt import TinyGPT
from codonlm.train.checkpoint import load_checkpoint, save_checkpoint
from codonlm.train.distributed import DistInfo, all_reduce_sum, init_distributed, shutdown
from codonlm.train.optim import build_optimizer
from codonlm.train.schedule import Plateau, cosine_lr

CURVE_COLUMNS = ["step", "train_loss", "val_loss", "perplexity", "lr"]


class TrainingDiverged(UserError):
    exit_code = 3


def pick_device(choice: str) -> torch.device:
    if choice != "auto":
        if choice == "cuda" and not torch.cuda.is_available():
            raise UserError("train.device is 'cuda' but no CUDA GPU is visible; set train.device: auto or cpu")
        if choice == "mps" and not torch.backends.mps.is_available():
            raise UserError("train.device is 'mps' but MPS is not available; set train.device: auto or cpu")
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_factory(device: torch.device, enabled: bool, log=print):
    """bf16 autocast on CPU/CUDA; on MPS try fp16/bf16 and fall back to fp32 with a log line."""
    if not enabled:
        return contextlib.nullcontext
    if device.type in ("cpu", "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    for dtype in (torch.float16, torch.bfloat16):
        try:
            with torch.autocast("mps", dtype=dtype):
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
            log(f"[train] MPS autocast with {dtype}")
            return lambda dtype=dtype: torch.autocast("mps", dtype=dtype)
        except (RuntimeError, TypeError) as exc:
            log(f"[train] MPS autocast with {dtype} unsupported ({str(exc)[:80]}); trying next")
    log("[train] MPS autocast unsupported here: training in float32 (amp fallback)")
    return contextlib.nullcontext


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """Measured dense matmul throughput, the denominator of MFU (no vendor peak to trust on CPU)."""
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader, device: torch.device, autocast, dist_info: DistInfo) -> float:
    """Mean loss over scored targets of a split (summed across ranks)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for tokens, segments, positions in loader:
        tokens, segments, positions = tokens.to(device), segments.to(device), positions.to(device)
        targets = tokens[:, 1:]
        with autocast():
            logits, _ = model(tokens[:, :-1], segment_ids=segments[:, :-1], positions=positions[:, :-1])
        n = loss_mask(targets).sum()
        total[0] += TinyGPT.loss(logits, targets).double() * n
        total[1] += n
    all_reduce_sum(total, dist_info)
    model.train()
    return float(total[0] / total[1].clamp(min=1))


def plan_epochs(cfg: Config, n_params: int, tokens_per_epoch: int, log=print) -> int:
    if cfg.train.epochs != "auto":
        return int(cfg.train.epochs)
    target = cfg.train.tokens_per_param * n_params
    epochs = max(1, math.ceil(target / tokens_per_epoch))
    log(f"[train] epochs auto: tokens_per_param {cfg.train.tokens_per_param:g} x n_params {n_params:,} "
        f"= {target:,.0f} tokens / {tokens_per_epoch:,} scored tokens per epoch -> {epochs} epochs")
    return epochs


def _write_curve_row(path: Path, row: dict, last_step: int | None = None) -> None:
    """Append a row; on resume first drop rows past the checkpoint (written after it, then killed)."""
    rows = []
    if path.exists():
        with open(path) as fh:
            rows = [r for r in csv.DictReader(fh) if last_step is None or int(r["step"]) <= last_step]
    rows.append({k: row[k] for k in CURVE_COLUMNS})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def train(cfg: Config, run_id: str, resume: str | Path | None = None, log=print) -> dict:
    """Train TinyGPT on data/processed/all/{train,val}.npz; returns a summary dict."""
    # ---- resume: the checkpoint's config and run id win, so a resumed run is the same run ----
    state = None
    if resume is not None:
        state = load_checkpoint(resume)
        ckpt_cfg = parse_config(state["config"], source=str(resume))
        if config_to_yaml(ckpt_cfg) != config_to_yaml(cfg):
            log(f"[train] resuming with the config stored in {resume} (it differs from the one given)")
        cfg, run_id = ckpt_cfg, state["run_id"]

    device = pick_device(cfg.train.device)
    dist_info = init_distributed(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    if not dist_info.is_main:
        log = lambda *a, **k: None  # noqa: E731 - rank-0 logging only
    if cfg.system.num_threads:
        torch.set_num_threads(cfg.system.num_threads)
    torch.set_float32_matmul_precision(cfg.system.matmul_precision)
    torch.manual_seed(cfg.outputs.seed)

    ckpt_dir = Path(cfg.outputs.out_dir) / run_id
    scores_dir = Path(cfg.outputs.scores_dir) / run_id
    curves_path = scores_dir / cfg.outputs.log_csv
    if dist_info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        scores_dir.mkdir(parents=True, exist_ok=True)

    # ---- data ----
    train_ds, val_ds = WindowDataset(run_split_path(cfg, run_id, "train")), WindowDataset(run_split_path(cfg, run_id, "val"))
    if train_ds.block_size != cfg.model.block_size:
        raise UserError(f"{run_split_path(cfg, run_id, 'train')} was prepared with block_size {train_ds.block_size}, "
                        f"config says {cfg.model.block_size}; re-run 'codonlm prepare'")
    if len(val_ds) == 0:
        raise UserError(f"{run_split_path(cfg, run_id, 'val')} has no windows; set data.val_frac > 0 and re-run prepare")
    sampler = EpochSampler(len(train_ds), cfg.outputs.seed, True, dist_info.rank, dist_info.world_size)
    val_sampler = EpochSampler(len(val_ds), cfg.outputs.seed, False, dist_info.rank, dist_info.world_size)
    train_loader = make_loader(train_ds, cfg, sampler, cfg.train.batch_size)
    val_loader = make_loader(val_ds, cfg, val_sampler, cfg.train.batch_size)

    # ---- model and optimizer ----
    model = TinyGPT(cfg.model).to(device)
    if state is not None:
        model.load_state_dict(state["model"])
    model.gradient_checkpointing = cfg.train.use_checkpoint
    n_params = model.num_params()
    train_model: torch.nn.Module = model
    if cfg.system.compile:
        model.use_flex = device.type == "cuda"
        train_model = torch.compile(model, mode=cfg.system.compile_mode)
    if dist_info.enabled:
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, cfg.train, device.type)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    autocast = autocast_factory(device, cfg.train.amp, log)

    micro = cfg.train.batch_size
    accum = cfg.train.grad_accum_steps
    batches_per_epoch = math.ceil(len(sampler) / micro)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    tokens_per_epoch = train_ds.scored_targets()
    epochs = plan_epochs(cfg, n_params, tokens_per_epoch, log)
    total_steps = epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    plateau = Plateau(cfg.train.lr, cfg.schedule.min_lr, cfg.schedule.plateau_patience)
    peak = matmul_peak_flops(device, torch.bfloat16 if cfg.train.amp else torch.float32)
    flops_per_token = model.flops_per_token(cfg.model.block_size)
    log(f"[train] run {run_id} on {device} x{dist_info.world_size}: {n_params:,} params, "
        f"{len(train_ds):,} train windows, {steps_per_epoch} steps/epoch x {epochs} epochs = {total_steps} steps, "
        f"global batch {micro * accum * dist_info.world_size} windows; amp={cfg.train.amp}; "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s")

    # ---- progress carried by checkpoints ----
    step = state["step"] if state else 0
    epoch = state["epoch"] if state else 0
    batch_in_epoch = state["batch_in_epoch"] if state else 0
    best_val = state["best_val"] if state else math.inf
    stale_epochs = state["stale_epochs"] if state else 0
    epoch_loss = state["epoch_loss"] if state else [0.0, 0.0]
    nonfinite_in_row = state["nonfinite_in_row"] if state else 0
    nonfinite_total = state["nonfinite_total"] if state else 0
    if state is not None:
        plateau.load_state_dict(state["plateau"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        log(f"[train] resumed from {resume} at epoch {epoch}, step {step}")

    def lr_for(s: int) -> float:
        if cfg.schedule.scheduler == "plateau":
            return plateau.lr_at(s, cfg.schedule.warmup_steps)
        return cosine_lr(s, cfg.train.lr, cfg.schedule.min_lr, cfg.schedule.warmup_steps, total_steps)

    def checkpoint(name: str) -> None:
        if not dist_info.is_main:
            return
        payload = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "config": cfg.model_dump(mode="json"), "run_id": run_id, "itos": list(ITOS),
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best_val": best_val,
            "stale_epochs": stale_epochs, "epoch_loss": list(epoch_loss), "plateau": plateau.state_dict(),
            "nonfinite_in_row": nonfinite_in_row, "nonfinite_total": nonfinite_total,
            "rng_cpu": torch.get_rng_state(), "n_params": n_params,
        }
        if device.type == "cuda":
            payload["rng_cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(ckpt_dir / name, payload)

    stopped_early = False
    t_run = time.perf_counter()
    train_model.train()
    while epoch < epochs and step < total_steps and not stopped_early:
        sampler.set_epoch(epoch, skip=batch_in_epoch * micro)
        t_epoch, epoch_tokens = time.perf_counter(), 0
        batches = iter(train_loader)
        while step < total_steps:
            group = [b for _, b in zip(range(accum), batches, strict=False)]
            if not group:
                break
            lr = lr_for(step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            counts = torch.tensor([float(loss_mask(b[0][:, 1:]).sum()) for b in group], dtype=torch.float64)
            global_count = all_reduce_sum(counts.sum().clone(), dist_info).clamp(min=1)
            step_loss = torch.zeros((), dtype=torch.float64)
            for i, (tokens, segments, positions) in enumerate(group):
                tokens, segments, positions = tokens.to(device), segments.to(device), positions.to(device)
                sync = contextlib.nullcontext() if (i == len(group) - 1 or not dist_info.enabled) else train_model.no_sync()
                with sync:
                    with autocast():
                        logits, _ = train_model(tokens[:, :-1], segment_ids=segments[:, :-1], positions=positions[:, :-1])
                    loss = TinyGPT.loss(logits, tokens[:, 1:], cfg.train.label_smoothing)
                    # token-weighted: every scored target in the global batch counts the same
                    scaled = loss * (counts[i] / global_count * dist_info.world_size).to(loss.dtype)
                    scaled.backward()
                step_loss += loss.detach().double().cpu() * counts[i]
            all_reduce_sum(step_loss, dist_info)
            batch_in_epoch += len(group)
            if not torch.isfinite(step_loss):
                optimizer.zero_grad(set_to_none=True)
                nonfinite_in_row += 1
                nonfinite_total += 1
                log(f"[train] step {step}: non-finite loss, step skipped ({nonfinite_in_row} in a row)")
                if nonfinite_in_row >= cfg.train.max_nonfinite_steps:
                    checkpoint("last.pt")
                    raise TrainingDiverged(
                        f"loss was non-finite for {nonfinite_in_row} steps in a row (step {step}); re-prep with "
                        "--force, reduce label_smoothing, or set amp: false (see the manual's NaNs section)")
                continue
            nonfinite_in_row = 0
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_loss[0] += float(step_loss)
            epoch_loss[1] += float(global_count)
            epoch_tokens += int(global_count)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                checkpoint("last.pt")
            if step % 50 == 0:
                log(f"[train] epoch {epoch + 1} step {step}/{total_steps} loss {float(step_loss / global_count):.4f} "
                    f"lr {lr:.2e}")
        if batch_in_epoch < batches_per_epoch and step >= total_steps:
            log(f"[train] reached max_steps {total_steps} inside epoch {epoch + 1}")
        # ---- end of epoch (or of the step budget): validate, record, checkpoint ----
        seconds = time.perf_counter() - t_epoch
        train_loss = epoch_loss[0] / max(epoch_loss[1], 1)
        val_loss = evaluate_loss(model, val_loader, device, autocast, dist_info)  # unwrapped: no DDP collectives
        improved = val_loss < best_val
        if cfg.schedule.scheduler == "plateau":
            plateau.step(val_loss)
        if improved:
            best_val, stale_epochs = val_loss, 0
        else:
            stale_epochs += 1
        tokens_per_s = epoch_tokens / seconds if seconds > 0 else 0.0
        mfu = tokens_per_s * flops_per_token / peak if peak else 0.0
        log(f"[train] epoch {epoch + 1}/{epochs}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
            f"ppl {math.exp(val_loss):.2f} | {seconds:.1f}s, {tokens_per_s:,.0f} tokens/s, MFU {100 * mfu:.1f}%"
            f"{' (best)' if improved else ''}")
        if dist_info.is_main:
            _write_curve_row(curves_path, {"step": step, "train_loss": f"{train_loss:.6f}",
                                           "val_loss": f"{val_loss:.6f}", "perplexity": f"{math.exp(val_loss):.4f}",
                                           "lr": f"{lr_for(step):.6e}"}, last_step=step)
        epoch += 1
        batch_in_epoch, epoch_loss = 0, [0.0, 0.0]
        if improved:
            checkpoint("best.pt")
        checkpoint("last.pt")
        if stale_epochs >= cfg.schedule.early_stop_patience:
            log(f"[train] early stop: val loss has not improved for {stale_epochs} epochs")
            stopped_early = True

    summary = {"run_id": run_id, "steps": step, "epochs_done": epoch, "best_val_loss": best_val,
               "best_perplexity": math.exp(best_val) if math.isfinite(best_val) else None,
               "n_params": n_params, "nonfinite_steps": nonfinite_total, "stopped_early": stopped_early,
               "seconds": round(time.perf_counter() - t_run, 1), "checkpoints": str(ckpt_dir),
               "curves": str(curves_path)}
    log(f"[train] done: {summary}")
    shutdown(dist_info)
    return summary
