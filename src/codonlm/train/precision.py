"""Device and numeric precision: which device trains, whether under bf16 autocast, and the matmul peak.

`amp: auto` decides by measurement where the answer depends on the machine: on CPU, bf16 is about
2x faster than fp32 on some cores (AMX, or a fast bf16 GEMM) and slower on others (AVX-512 BF16
without AMX, or AVX2 only), so a few steps of the actual model are timed each way at start and the
faster wins. On CUDA bf16 is used where the GPU supports it; on MPS autocast is tried as before.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from codonlm.errors import UserError
from codonlm.log import log

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


@dataclass(frozen=True)
class Precision:
    """The compute dtype of training (float32 = no autocast) and why it was chosen."""

    dtype: str
    reason: str

    @property
    def amp(self) -> bool:
        return self.dtype != "float32"

    def autocast(self, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
        """A factory of fresh autocast contexts (one per forward)."""
        if not self.amp:
            return contextlib.nullcontext
        dtype = DTYPES[self.dtype]
        return lambda: torch.autocast(device.type, dtype=dtype)


def _mps_dtype(device: torch.device) -> str:
    """fp16, else bf16 autocast on MPS; float32 with a log line where neither works."""
    for dtype in (torch.float16, torch.bfloat16):
        try:
            with torch.autocast("mps", dtype=dtype):
                torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
            return str(dtype).removeprefix("torch.")
        except (RuntimeError, TypeError) as exc:
            log(f"[train] MPS autocast with {dtype} unsupported ({str(exc)[:80]}); trying next")
    return "float32"


def choose_precision(amp: bool | str, device: torch.device,
                     measure: Callable[[], dict[str, float]] | None) -> Precision:
    """Apply `train.amp`; for `auto` on CPU, `measure()` gives tokens/s of the real model per dtype."""
    if device.type == "mps" and amp is not False:
        dtype = _mps_dtype(device)
        if dtype == "float32":
            return Precision("float32", "MPS autocast unsupported here: training in float32 (amp fallback)")
        return Precision(dtype, f"MPS autocast with {dtype} (amp: {amp})")
    if amp is True:
        return Precision("bfloat16", "amp: true forces bf16 autocast")
    if amp is False:
        return Precision("float32", "amp: false forces float32")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bfloat16", f"amp auto: {torch.cuda.get_device_name(device)} supports bf16")
        return Precision("float32", f"amp auto: {torch.cuda.get_device_name(device)} has no bf16; float32")
    if measure is None:
        return Precision("float32", "amp auto: nothing to time; float32")
    speed = measure()
    best = max(speed, key=speed.get)
    other = min(speed, key=speed.get)
    return Precision(best, f"amp auto on CPU, timed on this model: bf16 {speed['bfloat16']:,.0f} tokens/s, "
                           f"fp32 {speed['float32']:,.0f} tokens/s -> {best} "
                           f"({speed[best] / max(speed[other], 1e-9):.2f}x)")


def step_timer(model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
               batch, device: torch.device, run_step: Callable, steps: int = 3,
               clear_ratio: float = 2.5) -> Callable[[], dict[str, float]]:
    """A `measure() -> {dtype: tokens/s}` over whole training steps of a copy of `model` on `batch`,
    bf16 autocast and float32 taken in turns.

    The copy and its own optimizer keep the real model untouched, and the RNG is restored afterwards
    (dropout draws from it), so timing never changes what training computes. For each dtype the
    fastest step counts: on a shared machine other processes only ever slow a step down, and taking
    turns exposes both dtypes to the same load. The first turn warms up; then `steps` turns are
    timed, but once one dtype is `clear_ratio` times slower than the other (a CPU without fast bf16
    runs it several times slower) the answer is clear and timing stops, so it costs little there.
    """

    def measure() -> dict[str, float]:
        clone = copy.deepcopy(model)
        optimizer = make_optimizer(clone)
        best = {"bfloat16": float("inf"), "float32": float("inf")}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for i in range(steps + 1):
                for dtype in best:
                    t0 = time.perf_counter()
                    tokens = run_step(clone, optimizer, batch, Precision(dtype, "").autocast(device))
                    _sync(device)
                    if i:  # the first turn warms up (allocations, kernel selection)
                        best[dtype] = min(best[dtype], time.perf_counter() - t0)
                slow, fast = max(best["bfloat16"], best["float32"]), min(best["bfloat16"], best["float32"])
                if i and slow > clear_ratio * fast:
                    break
        return {dtype: tokens / seconds for dtype, seconds in best.items()}

    return measure


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """Measured dense matmul throughput in `dtype`, the denominator of MFU (no vendor peak to trust on CPU).

    The square size doubles from 256 while one product takes under 0.25 s (up to 1024 on CPU, 8192
    on GPU): a CPU without fast bf16 needs seconds for one 1024^3 bf16 product, and small products
    understate the peak. The matrices are drawn at full size from the global RNG, as earlier
    versions did, so that the dropout masks of a run (fresh or resumed) stay what they were.
    """
    n_max = 1024 if device.type == "cpu" else 8192
    a_full = torch.randn(n_max, n_max, device=device, dtype=dtype)
    b_full = torch.randn(n_max, n_max, device=device, dtype=dtype)
    n = min(256, n_max)
    while True:
        a, b = a_full[:n, :n].contiguous(), b_full[:n, :n].contiguous()
        a @ b  # warm-up at this size
        fastest = float("inf")
        for _ in range(3):  # the fastest of three: other processes only ever slow a product down
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            fastest = min(fastest, time.perf_counter() - t0)
        if n >= n_max or fastest > 0.25 / 8:  # the next size takes 8x as long
            break
        n *= 2
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
