"""Device and numeric precision: which device trains, whether under bf16 autocast, and the matmul peak.

`amp: auto` decides by measurement where the answer depends on the machine: on CPU, bf16 is about
2x faster than fp32 on some cores (AMX, or a fast bf16 GEMM) and slower on others (AVX-512 BF16
without AMX, or AVX2 only), so steps of the actual model are timed each way at start, in interleaved
repeats, and bf16 is taken only when it is BF16_MARGIN faster in every repeat. On a busy machine step
times swing several-fold (measured: 0.7-11 s for the same step), so an answer that rests on one step,
or on a best-of or median of a few, flips between runs; noisy evidence keeps fp32, the safe default.
On CUDA bf16 is used where the GPU supports it; on MPS autocast is tried as before. `train.amp:
true|false` pins the choice.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from codonlm.errors import UserError
from codonlm.log import log

AutocastFactory = Callable[[], contextlib.AbstractContextManager]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BF16_MARGIN = 1.15  # amp auto leaves fp32 only when bf16 is at least this much faster in every repeat
TIMED_REPEATS = 5  # interleaved (bf16, fp32) pairs of steps timed after a warm-up pair
# inference amp auto times one batch of TIMING_TOKENS up to 2 x (TIMED_REPEATS + 1) = 12 times, about 50k tokens
# of forward work; bf16 saves at most ~25% (1.33x measured on AVX-512 BF16), so a job repays the timing from
# about 200k tokens; smaller CPU jobs run float32 untimed (and stay exact fp32)
TIMING_TOKENS = 4096
AUTO_MIN_TOKENS = 200_000
DECISION_RULE = (f"bfloat16 when fp32 step seconds / bf16 step seconds is at least {BF16_MARGIN} in each of "
                 f"{TIMED_REPEATS} interleaved repeats after a warm-up pair, else float32 (timing stops at the "
                 f"first repeat below {BF16_MARGIN})")


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
    measurement: dict | None = None  # amp auto on CPU: the timed steps behind the choice (StepTiming.record)

    @property
    def amp(self) -> bool:
        return self.dtype != "float32"

    def autocast(self, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
        """A factory of fresh autocast contexts (one per forward)."""
        if not self.amp:
            return contextlib.nullcontext
        dtype = DTYPES[self.dtype]
        return lambda: torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class StepTiming:
    """Seconds of whole training steps per dtype, one per interleaved repeat (the warm-up pair left out)."""

    tokens: int  # tokens per step
    seconds: dict[str, list[float]]  # "bfloat16" / "float32" -> seconds of its step in each repeat

    @property
    def bf16_speedups(self) -> list[float]:
        """fp32 over bf16 step time within each repeat: both met the same load, so the ratio is fair."""
        return [f / b for b, f in zip(self.seconds["bfloat16"], self.seconds["float32"], strict=True)]

    def tokens_per_s(self, dtype: str) -> float:
        return self.tokens / statistics.median(self.seconds[dtype])

    def record(self) -> dict:
        """What the run keeps (runs/<RUN_ID>/precision.json, the checkpoint): every figure and the rule."""
        return {"tokens_per_step": self.tokens, "repeats": len(self.bf16_speedups), "warmup_repeats": 1,
                "seconds_per_step": self.seconds,
                "tokens_per_s_median": {d: round(self.tokens_per_s(d), 1) for d in self.seconds},
                "bf16_speedup_per_repeat": [round(r, 4) for r in self.bf16_speedups],
                "bf16_speedup_min": round(min(self.bf16_speedups), 4), "rule": DECISION_RULE}


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


def choose_precision(amp: bool | str, device: torch.device, measure: Callable[[], StepTiming] | None,
                     pin: str = "train.amp") -> Precision:
    """Apply `train.amp` (`pin`: the setting's name); for `auto` on CPU, `measure()` times steps of the real
    model per dtype (training steps, or forward batches for inference)."""
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
    timing = measure()
    speedups = timing.bf16_speedups
    best = "bfloat16" if min(speedups) >= BF16_MARGIN else "float32"
    low, high = f"{min(speedups):.2f}", f"{max(speedups):.2f}"
    n = len(speedups)
    return Precision(best, f"amp auto on CPU, timed on this model: bf16 {timing.tokens_per_s('bfloat16'):,.0f} "
                           f"tokens/s, fp32 {timing.tokens_per_s('float32'):,.0f} tokens/s -> {best} "
                           f"(bf16 {low if low == high else f'{low}-{high}'}x fp32 in {n} interleaved "
                           f"repeat{'s' * (n > 1)}; bf16 needs {BF16_MARGIN:.2f}x in each; pin with {pin} "
                           f"true or false)", timing.record())


def step_timer(model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
               batch, device: torch.device, run_step: Callable) -> Callable[[], StepTiming]:
    """A `measure() -> StepTiming` over whole training steps of a copy of `model` on `batch` (`interleaved_timer`).

    The copy and its own optimizer keep the real model untouched, and the RNG is restored afterwards
    (dropout draws from it), so timing never changes what training computes.
    """

    def measure() -> StepTiming:
        clone = copy.deepcopy(model)
        optimizer = make_optimizer(clone)
        return interleaved_timer(lambda autocast: run_step(clone, optimizer, batch, autocast), device)()

    return measure


def forward_timer(forward: Callable[[AutocastFactory], int], device: torch.device) -> Callable[[], StepTiming]:
    """A `measure() -> StepTiming` over inference: `forward(autocast)` runs one batch of the job under
    inference_mode and returns its token count, bf16 autocast and float32 in interleaved pairs."""

    def run(autocast: AutocastFactory) -> int:
        with torch.inference_mode():
            return forward(autocast)

    return interleaved_timer(run, device)


def interleaved_timer(run: Callable[[AutocastFactory], int], device: torch.device) -> Callable[[], StepTiming]:
    """A `measure() -> StepTiming` of `run(autocast)` (returns tokens done) in bf16 and float32, interleaved.

    Each pair exposes both dtypes to the same load, and which goes first alternates (no dtype always
    meets the state the other left); the first pair warms up. TIMED_REPEATS pairs are timed, or fewer:
    the first pair in which bf16 is not BF16_MARGIN faster settles the choice (fp32), which keeps the
    timing short on a CPU that emulates bf16, where a bf16 step takes seconds. The RNG is restored.
    """

    def measure() -> StepTiming:
        seconds: dict[str, list[float]] = {"bfloat16": [], "float32": []}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for i in range(TIMED_REPEATS + 1):
                for dtype in ("bfloat16", "float32") if i % 2 else ("float32", "bfloat16"):
                    t0 = time.perf_counter()
                    tokens = run(Precision(dtype, "").autocast(device))
                    _sync(device)
                    if i:  # the first pair warms up (allocations, kernel selection)
                        seconds[dtype].append(time.perf_counter() - t0)
                timing = StepTiming(tokens, seconds)
                if i and timing.bf16_speedups[-1] < BF16_MARGIN:
                    break
        return timing

    return measure


def inference_precision(amp: bool | str, device: torch.device, job_tokens: int,
                        forward: Callable[[AutocastFactory], int]) -> Precision:
    """Scoring's and embedding's `--amp auto|true|false`: `choose_precision` with a timed forward batch of the
    job; a CPU job under AUTO_MIN_TOKENS runs float32 untimed (the timing would cost more than bf16 saves)."""
    if amp == "auto" and device.type == "cpu" and job_tokens < AUTO_MIN_TOKENS:
        return Precision("float32", f"amp auto: {job_tokens:,} tokens, under the {AUTO_MIN_TOKENS:,} that repay "
                                    "timing bf16 against fp32; float32 untimed (pin with --amp true)")
    return choose_precision(amp, device, forward_timer(forward, device), pin="--amp")


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
