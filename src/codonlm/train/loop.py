"""The training loop, readable top to bottom: data, model, optimizer, precision, then epochs of steps.

Resume is exact: data order depends only on (seed, epoch), and the checkpoint is the TrainState
(model, optimizer, RNG, position within the epoch, curve rows), so a resumed run repeats an
uninterrupted one step for step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from codonlm.config import Config, config_to_yaml, parse_config
from codonlm.data.codons import loss_mask
from codonlm.data.layout import run_split_path
from codonlm.data.loader import EpochSampler, WindowDataset, make_loader
from codonlm.errors import Interrupted, TrainingDiverged, UserError
from codonlm.io import write_json
from codonlm.log import log, log_to, progress
from codonlm.model.checkpoint import divergence_advice, load_checkpoint
from codonlm.model.tinygpt import TinyGPT
from codonlm.train.curves import curve_row, plot_curves, write_curves_csv
from codonlm.train.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    init_distributed,
    is_main_rank,
    shutdown,
)
from codonlm.train.optim import adafactor_lr_warning, build_optimizer
from codonlm.train.precision import (
    DTYPES,
    Precision,
    choose_precision,
    matmul_peak_flops,
    pick_device,
    step_timer,
)
from codonlm.train.schedule import Plateau, cosine_lr
from codonlm.train.state import TrainState

TIMING_WINDOWS = 8  # windows per step when amp: auto times bf16 against fp32
ESTIMATE_STEPS = 5  # timed steps, after the first, behind the training-time estimate logged at the start


@dataclass
class Data:
    train: WindowDataset
    sampler: EpochSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader  # the full validation split
    val_subset_loader: torch.utils.data.DataLoader  # a fixed sample of it, for validation within an epoch


@dataclass
class Plan:
    epochs: int
    steps_per_epoch: int
    batches_per_epoch: int
    total_steps: int


class StopSignal:
    """SIGINT (Ctrl-C) or SIGTERM while training: the step in progress finishes, last.pt is saved, then
    training stops with errors.Interrupted. A repeated signal changes nothing (torchrun forwards the
    terminal's Ctrl-C to workers that already got it). Not installed outside the main thread, nor over
    an ignored SIGINT (a background job's)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0  # the first signal received, 0 while none

    def __call__(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        saved = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s, handler in saved.items():
            if handler is not signal.SIG_IGN:
                signal.signal(s, self)
        try:
            yield
        finally:
            for s, handler in saved.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)


@dataclass
class Run:
    """What stays fixed while training: settings, where things go, the wrapped model (and the two things
    that do not: a stop request, and when last.pt was last written)."""

    cfg: Config
    device: torch.device
    dist: DistInfo
    data: Data
    plan: Plan
    train_model: torch.nn.Module  # compiled and/or DDP-wrapped; state.model is the plain module
    autocast: object
    peak: float  # measured matmul FLOP/s in the training dtype (the MFU denominator)
    ckpt_dir: Path
    curves_path: Path
    stop: StopSignal = field(default_factory=StopSignal)
    saved_at: float = field(default_factory=time.monotonic)  # when last.pt was last written (or training began)


class Meter:
    """Training throughput: tokens over seconds spent in training steps (not validation, checkpoints
    or the first step after compiling)."""

    def __init__(self, compiling: bool) -> None:
        self.tokens, self.seconds, self.t_start, self.steps = 0, 0.0, time.perf_counter(), 0
        self.compiling = compiling  # the next step compiles the model

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens, self.seconds, self.steps = self.tokens + tokens, self.seconds + seconds, self.steps + 1

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def eta(self, steps_left: int) -> str:
        if not self.steps:
            return "?"
        s = int((time.perf_counter() - self.t_start) / self.steps * steps_left)
        return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def duration(seconds: float) -> str:
    """'~2 h 05 min', '~7 min', '~40 s'."""
    minutes = round(seconds / 60)
    if minutes >= 60:
        return f"~{minutes // 60} h {minutes % 60:02d} min"
    return f"~{minutes} min" if minutes else f"~{max(1, round(seconds))} s"


class Estimate:
    """The training-time estimate, logged once near the start: the wall time per optimizer step (data,
    logging and checkpoints included) over ESTIMATE_STEPS steps after the first (which allocates, and
    compiles when asked), times the steps this invocation will take."""

    def __init__(self, first_step: int) -> None:
        self.first_step, self.t0, self.seconds = first_step, 0.0, None

    def step_done(self, run: Run, state: TrainState) -> None:
        timed = state.step - self.first_step - 1
        if self.seconds is not None or timed < 0:
            return
        if timed == 0:
            self.t0 = time.perf_counter()
            return
        if timed < ESTIMATE_STEPS:
            return
        per_step = (time.perf_counter() - self.t0) / timed
        steps = run.plan.total_steps - self.first_step
        self.seconds = steps * per_step
        threads = torch.get_num_threads()
        where = f"cpu ({threads} thread{'s' * (threads > 1)})" if run.device.type == "cpu" else str(run.device)
        log(f"=== [train] estimate: {steps:,} steps x {per_step:.3g} s/step = {duration(self.seconds)} on {where}; "
                f"validation adds a little")


def load_data(cfg: Config, run_id: str, dist: DistInfo) -> Data:
    """The run's own prepared windows (codonlm.data.layout.run_split_path checks them against its record)."""
    train_path, val_path = run_split_path(cfg, run_id, "train"), run_split_path(cfg, run_id, "val")
    train_ds, val_ds = WindowDataset(train_path), WindowDataset(val_path)
    if train_ds.block_size != cfg.model.block_size:
        raise UserError(f"{train_path} was prepared with block_size {train_ds.block_size}, "
                        f"config says {cfg.model.block_size}; re-run 'codonlm prepare'")
    if len(val_ds) == 0:
        raise UserError(f"{val_path} has no windows; set data.val_frac > 0 and re-run prepare")
    seed, batch = cfg.outputs.seed, cfg.train.batch_size
    sampler = EpochSampler(len(train_ds), seed, True, dist.rank, dist.world_size)
    pick = torch.randperm(len(val_ds), generator=torch.Generator().manual_seed(seed))[: cfg.train.eval_windows]
    subset = torch.utils.data.Subset(val_ds, sorted(pick.tolist()))
    return Data(train_ds, sampler, make_loader(train_ds, cfg, sampler, batch),
                make_loader(val_ds, cfg, EpochSampler(len(val_ds), seed, False, dist.rank, dist.world_size), batch),
                make_loader(subset, cfg, EpochSampler(len(subset), seed, False, dist.rank, dist.world_size), batch))


def plan_epochs(cfg: Config, n_params: int, tokens_per_epoch: int) -> int:
    if cfg.train.epochs != "auto":
        return int(cfg.train.epochs)
    target = cfg.train.tokens_per_param * n_params
    epochs = max(1, math.ceil(target / tokens_per_epoch))
    log(f"[train] epochs auto: tokens_per_param {cfg.train.tokens_per_param:g} x n_params {n_params:,} "
        f"= {target:,.0f} tokens / {tokens_per_epoch:,} scored tokens per epoch -> {epochs} epochs")
    return epochs


def plan_steps(cfg: Config, data: Data, n_params: int) -> Plan:
    batches = math.ceil(len(data.sampler) / cfg.train.batch_size)
    steps_per_epoch = math.ceil(batches / cfg.train.grad_accum_steps)
    epochs = plan_epochs(cfg, n_params, data.train.scored_targets())
    total = epochs * steps_per_epoch
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    return Plan(epochs, steps_per_epoch, batches, total)


def lr_at(cfg: Config, state: TrainState, plan: Plan, step: int) -> float:
    if cfg.schedule.scheduler == "plateau":
        return state.plateau.lr_at(step, cfg.schedule.warmup_steps)
    return cosine_lr(step, cfg.train.lr, cfg.schedule.min_lr, cfg.schedule.warmup_steps, plan.total_steps)


def forward_loss(model: torch.nn.Module, tokens: torch.Tensor, segments: torch.Tensor, positions: torch.Tensor,
                 autocast, label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token loss of one batch of windows (float32 loss, model under `autocast`)."""
    with autocast():
        logits, _ = model(tokens[:, :-1], segment_ids=segments[:, :-1], positions=positions[:, :-1])
    return TinyGPT.loss(logits, tokens[:, 1:], label_smoothing)


def single_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch, autocast) -> int:
    """One plain optimizer step on one batch (what `amp: auto` times); returns the tokens processed."""
    forward_loss(model, *batch, autocast).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return batch[0][:, 1:].numel()


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader, device: torch.device, autocast, dist_info: DistInfo) -> float:
    """Mean loss over scored targets of a split (summed across ranks)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for tokens, segments, positions in loader:
        tokens, segments, positions = tokens.to(device), segments.to(device), positions.to(device)
        n = loss_mask(tokens[:, 1:]).sum()
        total[0] += forward_loss(model, tokens, segments, positions, autocast).double() * n
        total[1] += n
    all_reduce_sum(total, dist_info)
    model.train()
    return float(total[0] / total[1].clamp(min=1))


def accumulate(run: Run, state: TrainState, group: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward over the micro-batches of one optimizer step; token-weighted, so every
    scored target in the global batch counts the same. Returns (summed loss, scored targets)."""
    counts = torch.tensor([float(loss_mask(b[0][:, 1:]).sum()) for b in group], dtype=torch.float64)
    global_count = all_reduce_sum(counts.sum().clone(), run.dist).clamp(min=1)
    step_loss = torch.zeros((), dtype=torch.float64)
    for i, batch in enumerate(group):
        tokens, segments, positions = (t.to(run.device) for t in batch)
        last = i == len(group) - 1 or not run.dist.enabled
        with contextlib.nullcontext() if last else run.train_model.no_sync():
            loss = forward_loss(run.train_model, tokens, segments, positions, run.autocast,
                                run.cfg.train.label_smoothing)
            (loss * (counts[i] / global_count * run.dist.world_size).to(loss.dtype)).backward()
        step_loss += loss.detach().double().cpu() * counts[i]
    return all_reduce_sum(step_loss, run.dist), global_count


def skip_nonfinite(run: Run, state: TrainState, what: str) -> None:
    """Drop the step's gradients (the weights stay finite); after `max_nonfinite_steps` in a row, save
    last.pt and stop. `what` was non-finite: the loss, or the gradient norm of a finite loss."""
    state.optimizer.zero_grad(set_to_none=True)
    state.nonfinite_in_row += 1
    state.nonfinite_total += 1
    log(f"[train] step {state.step}: non-finite {what}, step skipped ({state.nonfinite_in_row} in a row)")
    if state.nonfinite_in_row >= run.cfg.train.max_nonfinite_steps:
        checkpoint(run, state, "last.pt")
        raise TrainingDiverged(
            f"{what} was non-finite for {state.nonfinite_in_row} steps in a row (step {state.step}); "
            + divergence_advice(run.cfg.train.lr, state.precision["dtype"]))


def train_step(run: Run, state: TrainState, group: list) -> tuple[float, int] | None:
    """One optimizer step; returns (mean loss, scored targets), or None when the loss was non-finite."""
    lr = lr_at(run.cfg, state, run.plan, state.step)
    for g in state.optimizer.param_groups:
        g["lr"] = lr
    step_loss, count = accumulate(run, state, group)
    state.batch_in_epoch += len(group)
    if not torch.isfinite(step_loss):
        skip_nonfinite(run, state, "loss")
        return None
    params = [p for p in state.model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if not torch.isfinite(grad_norm):  # a step with these would write NaN into the weights
        skip_nonfinite(run, state, "gradient norm")
        return None
    state.nonfinite_in_row = 0
    if run.cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grads_with_norm_(params, run.cfg.train.grad_clip, grad_norm)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    for sums in (state.epoch_loss, state.row_loss):
        sums[0] += float(step_loss)
        sums[1] += float(count)
    return float(step_loss / count), int(count)


def checkpoint(run: Run, state: TrainState, name: str) -> None:
    if run.dist.is_main:
        state.save(run.ckpt_dir / name)
    if name == "last.pt":
        run.saved_at = time.monotonic()


def checkpoint_due(run: Run, state: TrainState) -> bool:
    """A mid-epoch last.pt every checkpoint_every steps, and once checkpoint_minutes of wall time passed
    since the last one (a slow machine loses at most that much work)."""
    t = run.cfg.train
    by_steps = bool(t.checkpoint_every) and state.step % t.checkpoint_every == 0
    return by_steps or (t.checkpoint_minutes > 0 and time.monotonic() - run.saved_at >= 60 * t.checkpoint_minutes)


def agreed_stop(run: Run) -> int:
    """The stop signal any rank received (0: none), the same on every rank so that all stop at one step."""
    if not run.dist.enabled:
        return run.stop.signum
    return int(all_reduce_max(torch.tensor([run.stop.signum], device=run.device), run.dist).item())


def interrupted(run: Run, state: TrainState, signum: int) -> Interrupted:
    """Save last.pt at this step boundary (exact resume) and say how to continue."""
    checkpoint(run, state, "last.pt")
    shutdown(run.dist)
    name, last = signal.Signals(signum).name, run.ckpt_dir / "last.pt"
    log(f"[train] {name}: saved {last} at step {state.step}")
    return Interrupted(f"interrupted by {name} at step {state.step}/{run.plan.total_steps}; saved {last}: "
                       f"continue with 'codonlm train -r {last}' (or run ./main.sh again)", signum)


def write_curves(run: Run, state: TrainState, plot: bool = False) -> None:
    if run.dist.is_main:
        write_curves_csv(run.curves_path, state.curves)
        if plot and state.curves:
            plot_curves(run.curves_path.with_suffix(".png"), state.curves, state.run_id)


def record_row(run: Run, state: TrainState, meter: Meter) -> None:
    """Every log_every steps a curves.csv row; every eval_every steps with the validation subset."""
    t, lr = run.cfg.train, state.optimizer.param_groups[0]["lr"]  # the lr of the step just taken
    evaluate = bool(t.eval_every) and state.step % t.eval_every == 0
    if state.step % t.log_every and not evaluate:
        return
    val = evaluate_loss(state.model, run.data.val_subset_loader, run.device, run.autocast, run.dist) \
        if evaluate else None
    train_loss = state.row_loss[0] / max(state.row_loss[1], 1)
    state.curves.append(curve_row(state.step, train_loss, lr, val, "subset" if evaluate else None))
    state.row_loss = [0.0, 0.0]
    write_curves(run, state)
    if evaluate or not t.eval_every:
        val_txt = f" val_loss {val:.4f} (subset of {len(run.data.val_subset_loader.dataset)} windows)" if evaluate else ""
        log(f"[train] step {state.step}/{run.plan.total_steps} epoch {state.epoch + 1}: train_loss "
            f"{train_loss:.4f}{val_txt} lr {lr:.2e} | {meter.tokens_per_s:,.0f} tokens/s, "
            f"ETA {meter.eta(run.plan.total_steps - state.step)}")


def end_epoch(run: Run, state: TrainState, meter: Meter) -> bool:
    """Full validation, schedule, early stopping, curve row, best.pt/last.pt; True to stop early."""
    cfg, plan = run.cfg, run.plan
    if state.batch_in_epoch < plan.batches_per_epoch and state.step >= plan.total_steps:
        log(f"[train] reached max_steps {plan.total_steps} inside epoch {state.epoch + 1}")
    val_loss = evaluate_loss(state.model, run.data.val_loader, run.device, run.autocast, run.dist)
    lr = state.optimizer.param_groups[0]["lr"]  # of the last step taken
    improved = val_loss < state.best_val
    if cfg.schedule.scheduler == "plateau":
        state.plateau.step(val_loss)
    state.best_val = min(state.best_val, val_loss)
    state.stale_epochs = 0 if improved else state.stale_epochs + 1
    if state.curves and state.curves[-1]["step"] == state.step:  # a row was written at this very step
        state.curves[-1].update(val_loss=val_loss, val_set="full")
    else:
        since_row = state.row_loss[0] / state.row_loss[1] if state.row_loss[1] else math.nan
        state.curves.append(curve_row(state.step, since_row, lr, val_loss, "full"))
    train_loss = state.epoch_loss[0] / max(state.epoch_loss[1], 1)
    mfu = meter.tokens_per_s * state.model.flops_per_token(cfg.model.block_size) / run.peak if run.peak else 0.0
    log(f"[train] epoch {state.epoch + 1}/{plan.epochs}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
        f"ppl {math.exp(val_loss):.2f} | {meter.tokens_per_s:,.0f} tokens/s over {meter.seconds:.1f}s of "
        f"steps, MFU {100 * mfu:.1f}% of the measured {state.precision['dtype']} matmul peak"
        f"{' (best)' if improved else ''}")
    write_curves(run, state, plot=True)
    state.epoch += 1
    state.batch_in_epoch, state.epoch_loss, state.row_loss = 0, [0.0, 0.0], [0.0, 0.0]
    if improved:
        checkpoint(run, state, "best.pt")
    checkpoint(run, state, "last.pt")
    if state.stale_epochs >= cfg.schedule.early_stop_patience:
        log(f"[train] early stop: val loss has not improved for {state.stale_epochs} epochs")
        return True
    return False


def run_epoch(run: Run, state: TrainState, meter: Meter, bar, estimate: Estimate) -> None:
    """The steps of one epoch (or until the step budget), from where the state left off."""
    accum = run.cfg.train.grad_accum_steps
    run.data.sampler.set_epoch(state.epoch, skip=state.batch_in_epoch * run.cfg.train.batch_size)
    batches = iter(run.data.train_loader)
    while state.step < run.plan.total_steps:
        if signum := agreed_stop(run):
            raise interrupted(run, state, signum)
        group = [b for _, b in zip(range(accum), batches, strict=False)]
        if not group:
            return
        t0 = time.perf_counter()
        result = train_step(run, state, group)
        if result is not None:
            after_step(run, state, meter, bar, estimate, *result, time.perf_counter() - t0)


def after_step(run: Run, state: TrainState, meter: Meter, bar, estimate: Estimate, loss: float, tokens: int,
               seconds: float) -> None:
    """The bookkeeping of an optimizer step just taken: throughput, progress bar, curves row, the time
    estimate, and last.pt when one is due. When it returns, the step is complete on disk as planned."""
    if meter.compiling:  # this step compiled the model: say so, and keep it out of tokens/s
        meter.compiling = False
        log(f"[train] compiled in {seconds:.1f}s (first step); tokens/s excludes it")
    else:
        meter.add(tokens, seconds)
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{meter.tokens_per_s:,.0f}", refresh=False)
    record_row(run, state, meter)
    estimate.step_done(run, state)
    if checkpoint_due(run, state):
        checkpoint(run, state, "last.pt")


def resumed_config(resume: str | Path, cfg: Config | None) -> tuple[dict, Config, str]:
    """The checkpoint's payload, config and run id: a resumed run is the same run."""
    payload = load_checkpoint(resume)
    ckpt_cfg = parse_config(payload["config"], source=str(resume))
    if cfg is not None and config_to_yaml(ckpt_cfg) != config_to_yaml(cfg):
        log(f"[train] resuming with the config stored in {resume} (it differs from the one given)")
    return payload, ckpt_cfg, payload["run_id"]


def pick_precision(cfg: Config, run_id: str, device: torch.device, dist: DistInfo, data: Data,
                   model: TinyGPT) -> dict:
    """The run's precision (train.amp, timed on CPU for auto), recorded in runs/<RUN_ID>/precision.json."""
    timer = None
    if cfg.train.amp == "auto" and device.type == "cpu":
        # a few windows tell the dtypes' speed ratio as well as a full batch, at a fraction of the cost
        # (a CPU that emulates bf16 runs one full batch for half a minute)
        batch = tuple(t[:TIMING_WINDOWS].to(device) for t in next(iter(data.train_loader)))
        timer = step_timer(model, lambda m: build_optimizer(m, cfg.train, device.type), batch, device, single_step)
    precision = vars(choose_precision(cfg.train.amp, device, timer))
    if dist.is_main:
        write_json(Path(cfg.outputs.runs_dir) / run_id / "precision.json", {"amp": cfg.train.amp, **precision})
    return precision


def build(cfg: Config, run_id: str, payload: dict | None,
          init: Callable[[TinyGPT], None] | None = None) -> tuple[Run, TrainState]:
    """Device, data, model, optimizer and precision; the state restored from `payload` when resuming. init:
    sets the new model's starting weights and what trains (add-host) before the optimizer sees it."""
    device = pick_device(cfg.train.device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    if cfg.system.num_threads:
        torch.set_num_threads(cfg.system.num_threads)
    torch.set_float32_matmul_precision(cfg.system.matmul_precision)
    torch.manual_seed(cfg.outputs.seed)
    data = load_data(cfg, run_id, dist)
    model = TinyGPT(cfg.model)
    if init is not None:
        init(model)
    model = model.to(device)
    model.gradient_checkpointing = cfg.train.use_checkpoint
    state = TrainState(model, build_optimizer(model, cfg.train, device.type),
                       Plateau(cfg.train.lr, cfg.schedule.min_lr, cfg.schedule.plateau_patience),
                       run_id, cfg.model_dump(mode="json"))
    if payload is not None and payload.get("precision"):  # chosen once per run; a resumed run keeps it
        state.precision = payload["precision"]
    else:
        state.precision = pick_precision(cfg, run_id, device, dist, data, model)
    # Measured here, before a resumed state restores the RNG: the peak's random matrices draw from it,
    # at the same point for fresh and resumed runs, so both see the same dropout masks afterwards.
    peak = matmul_peak_flops(device, DTYPES[state.precision["dtype"]])
    if payload is not None:
        state.load_state_dict(payload)
    train_model: torch.nn.Module = model
    if cfg.system.compile:
        model.use_flex = device.type == "cuda"
        train_model = torch.compile(model, mode=cfg.system.compile_mode)
    if dist.enabled:
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    plan = plan_steps(cfg, data, state.n_params)
    run = Run(cfg, device, dist, data, plan, train_model, Precision(**state.precision).autocast(device), peak,
              Path(cfg.outputs.out_dir) / run_id, Path(cfg.outputs.scores_dir) / run_id / cfg.outputs.log_csv)
    if dist.is_main:
        run.ckpt_dir.mkdir(parents=True, exist_ok=True)
        run.curves_path.parent.mkdir(parents=True, exist_ok=True)
    return run, state


def announce(run: Run, state: TrainState, resume: str | Path | None) -> None:
    """The run's opening log lines: size, plan, precision, warnings."""
    cfg, plan = run.cfg, run.plan
    log(f"[train] run {state.run_id} on {run.device} x{run.dist.world_size}: {state.n_params:,} params, "
        f"{len(run.data.train):,} train windows, {plan.steps_per_epoch} steps/epoch x {plan.epochs} epochs "
        f"= {plan.total_steps} steps, global batch "
        f"{cfg.train.batch_size * cfg.train.grad_accum_steps * run.dist.world_size} windows")
    log(f"[train] precision {state.precision['dtype']}: {state.precision['reason']}; "
        f"matmul peak {run.peak / 1e9:.1f} GFLOP/s in {state.precision['dtype']}")
    if warning := adafactor_lr_warning(cfg.train):
        log(f"[train] warning: {warning}")
    if resume is not None:
        log(f"[train] resumed from {resume} at epoch {state.epoch}, step {state.step}")
    if cfg.system.compile:
        log(f"[train] compiling the model (torch.compile, mode {cfg.system.compile_mode}) during the first step")


def run_epochs(run: Run, state: TrainState, meter: Meter, estimate: Estimate) -> bool:
    """Epochs until the plan, the step budget or early stopping (True); on SIGINT/SIGTERM, last.pt at the
    next step boundary, then errors.Interrupted."""
    plan, stopped_early = run.plan, False
    state.model.train()
    with run.stop.installed(), progress(total=plan.total_steps, initial=state.step, desc="train", unit="step",
                                        leave=False, disable=not run.dist.is_main) as bar:
        while state.epoch < plan.epochs and state.step < plan.total_steps and not stopped_early:
            run_epoch(run, state, meter, bar, estimate)
            stopped_early = end_epoch(run, state, meter)
        if signum := agreed_stop(run):  # it came during the last validation: training is complete and saved
            raise interrupted(run, state, signum)
    return stopped_early


def train(cfg: Config | None, run_id: str | None = None, resume: str | Path | None = None,
          init: Callable[[TinyGPT], None] | None = None) -> dict:
    """Train TinyGPT on the prepared train/val windows; returns a summary dict. Only rank 0 logs. init: see
    `build` (a resumed run's checkpoint holds the weights, so init is only for a fresh start)."""
    with contextlib.nullcontext() if is_main_rank() else log_to(None):
        payload = None
        if resume is not None:
            payload, cfg, run_id = resumed_config(resume, cfg)
        run, state = build(cfg, run_id, payload, init if payload is None else None)
        announce(run, state, resume)
        if payload is not None and "curves" in payload:
            write_curves(run, state)  # drop rows the interrupted run wrote after that checkpoint
        meter, t_run = Meter(cfg.system.compile), time.perf_counter()
        estimate = Estimate(state.step)
        stopped_early = run_epochs(run, state, meter, estimate)
        if not math.isfinite(state.best_val):  # no best.pt: a finished run must not look like a result
            raise TrainingDiverged(f"the validation loss was never finite ({state.epoch} epoch end(s), step "
                                   f"{state.step}), so there is no best.pt; "
                                   + divergence_advice(cfg.train.lr, state.precision["dtype"]))
        summary = {"run_id": run_id, "steps": state.step, "steps_per_epoch": run.plan.steps_per_epoch,
                   "total_steps": run.plan.total_steps, "epochs_done": state.epoch,
                   "best_val_loss": state.best_val,
                   "best_perplexity": math.exp(state.best_val) if math.isfinite(state.best_val) else None,
                   "n_params": state.n_params, "nonfinite_steps": state.nonfinite_total,
                   "stopped_early": stopped_early, "precision": state.precision["dtype"],
                   "tokens_per_s": round(meter.tokens_per_s, 1), "timed_steps": meter.steps,
                   "estimated_seconds": estimate.seconds,
                   "seconds": round(time.perf_counter() - t_run, 1), "checkpoints": str(run.ckpt_dir),
                   "curves": str(run.curves_path)}
        log(f"[train] done: {summary}")
        if run.dist.is_main:  # what the report says about the training (steps, not the configured epochs)
            write_json(Path(cfg.outputs.runs_dir) / run_id / "train_summary.json", summary)
        shutdown(run.dist)
    return summary
