"""Run the analysis steps of a trained run in order, each once: `codonlm analyze RUN_ID [--steps ...]`.

Each step is the module `codonlm.analysis.<step>` (imported by name, so a new step is one module and
one STEPS entry). A finished step leaves a stage stamp keyed by what decides its outputs (the
checkpoint's sha256, the step's code, its settings), so a re-run skips it until one of those changes;
`force` re-runs. A step that cannot run (its module or its inputs are missing) is recorded as
"not run: <why>" in its summary.json, which the report shows, and the other steps still run.
"""

from __future__ import annotations

import importlib
import time
import traceback
from pathlib import Path
from types import ModuleType

from codonlm.analysis import STEPS
from codonlm.analysis.context import AnalysisContext, load_context
from codonlm.errors import UserError
from codonlm.io import read_json, sha256_file, write_json
from codonlm.log import log
from codonlm.provenance import mark_stage_done, stage_is_done

# Config keys that decide a step's outputs, for steps whose module does not define `settings(ctx)`.
CONFIG_SETTINGS = {"analyze_saliency": ("saliency_window", "saliency_top")}


class StepNotRun(Exception):
    """A step could not run for a reason the user can fix (recorded, shown in the report)."""


def parse_steps(steps: list[str] | str | None) -> list[str]:
    """Requested steps (names, or comma-separated) in STEPS order; unknown names are a UserError."""
    if not steps:
        return list(STEPS)
    names = [n.strip() for item in ([steps] if isinstance(steps, str) else steps) for n in item.split(",")]
    unknown = [n for n in names if n and n not in STEPS]
    if unknown:
        raise UserError(f"unknown analysis step '{unknown[0]}'; steps: {', '.join(STEPS)}")
    return [s for s in STEPS if s in names]


def step_module(name: str) -> ModuleType:
    """The step's module; StepNotRun when it (or a package it needs) is not installed."""
    full = f"codonlm.analysis.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name == full:
            raise StepNotRun(f"module {full} is not in this version of codonlm") from None
        raise StepNotRun(f"needs the Python package '{exc.name}' (pip install it)") from None


def step_inputs(module: ModuleType, ctx: AnalysisContext, checkpoint_sha256: str) -> dict:
    """What decides a step's outputs: the checkpoint, the step's code, the seed and its settings."""
    name = module.NAME
    settings = {k: getattr(ctx.cfg.outputs, k) for k in CONFIG_SETTINGS.get(name, ())}
    if hasattr(module, "settings"):
        settings.update(module.settings(ctx))
    return {"checkpoint_sha256": checkpoint_sha256, "code_sha256": sha256_file(module.__file__),
            "seed": ctx.seed, "settings": settings}


def summary_path(run_dir: Path, step: str) -> Path:
    return Path(run_dir) / "analysis" / step / "summary.json"


def _record_not_run(ctx: AnalysisContext, name: str, why: str) -> dict:
    summary = {"step": name, "status": "not run", "reason": why}
    write_json(summary_path(ctx.run_dir, name), summary)
    log(f"[analyze] {name}: not run: {why}")
    return summary


def run_step(ctx: AnalysisContext, name: str, checkpoint_sha256: str, force: bool = False) -> dict:
    """Run one step (or skip it when its stamp matches); returns its summary as written."""
    try:
        module = step_module(name)
    except StepNotRun as exc:
        return _record_not_run(ctx, name, str(exc))
    inputs = step_inputs(module, ctx, checkpoint_sha256)
    stage = f"analysis_{name}"
    previous = read_json(summary_path(ctx.run_dir, name), {})
    if not force and previous.get("status") == "done" and stage_is_done(ctx.run_dir, stage, inputs):
        log(f"[analyze] {name}: done before with the same checkpoint and settings; skipped (--force re-runs)")
        return previous
    log(f"[analyze] {name}: running")
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        result = module.run(ctx)
    except (UserError, StepNotRun) as exc:
        return _record_not_run(ctx, name, str(exc))
    except Exception as exc:  # a bug in one step: keep the other steps, show the traceback, fail at the end
        traceback.print_exc()
        summary = {"step": name, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        write_json(summary_path(ctx.run_dir, name), summary)
        return summary
    seconds = round(time.perf_counter() - t0, 2)
    cpu_seconds = round(time.process_time() - cpu0, 2)  # all threads: on a shared machine the honest cost
    summary = {"step": name, "status": "done", "seconds": seconds, "cpu_seconds": cpu_seconds, **result}
    write_json(summary_path(ctx.run_dir, name), summary)
    files = sorted(p.name for p in ctx.out_dir(name).iterdir() if not p.name.startswith("."))
    mark_stage_done(ctx.run_dir, stage, inputs, {"files": files, "seconds": seconds, "cpu_seconds": cpu_seconds})
    log(f"[analyze] {name}: done in {seconds:.1f}s ({cpu_seconds:.1f}s CPU): {result.get('reading', '')}")
    return summary


def write_run_record(ctx: AnalysisContext, checkpoint_sha256: str) -> None:
    """analysis/run.json: what the report needs to know about the run without loading the model."""
    from codonlm.config import config_to_yaml

    cfg = ctx.cfg
    write_json(ctx.run_dir / "analysis" / "run.json", {
        "run_id": ctx.run_id, "checkpoint": str(ctx.checkpoint), "checkpoint_sha256": checkpoint_sha256,
        "n_params": ctx.model.num_params(), "config_yaml": config_to_yaml(cfg),
        "paths": {"scores_dir": str(Path(cfg.outputs.scores_dir) / ctx.run_id),
                  "checkpoints_dir": str(ctx.checkpoint.parent), "processed_dir": cfg.data.processed_dir},
    })


def analyze(run_id: str, steps: list[str] | str | None = None, checkpoints_dir: str | None = None,
            runs_dir: str | Path | None = None, force: bool = False, device: str = "cpu", seed: int = 0,
            quiet: bool = False, context: AnalysisContext | None = None) -> dict[str, dict]:
    """Run the requested steps (default: all) in STEPS order; returns {step: summary}."""
    names = parse_steps(steps)
    ctx = context or load_context(run_id, checkpoints_dir, runs_dir, device=device, seed=seed, quiet=quiet)
    checkpoint_sha256 = sha256_file(ctx.checkpoint)
    write_run_record(ctx, checkpoint_sha256)
    results = {}
    for i, name in enumerate(names, 1):
        log(f"[analyze] step {i}/{len(names)}: {name}")
        results[name] = run_step(ctx, name, checkpoint_sha256, force=force)
    return results
