"""./main.sh: the stages of a run, run like `make`.

The same config continues the same run: a stage whose stamp (runs/<RUN_ID>/stages/<stage>.json,
written last) records the same inputs (the config's sha256 and the checksums of every earlier
stage's outputs) and whose outputs are still as it left them is skipped; an interrupted training
resumes from its last.pt; any other interrupted stage runs again from the start (every file is
written atomically). A changed config is a new run. Each stage is one `codonlm` command, so a
stage can always be run by hand as well; adding a stage is one line in STAGES.

Each stage's wall and CPU seconds (this process and its child processes, all threads) go into the
closing summary and its stamp: CPU far below wall means the stage waited (a busy machine, disk, network).

The pipeline sits below the command line (codonlm.cli imports it, never the reverse): `codonlm pipeline`
hands it the function that runs one `codonlm` command line (cli.main), so a stage runs exactly what a
user would type, and the banner shows it.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from codonlm.config import Config, config_sha256, load_config, parse_config
from codonlm.errors import UserError
from codonlm.headlines import headline_lines
from codonlm.io import folder_lock
from codonlm.log import log, run_log
from codonlm.log import quiet as log_quiet
from codonlm.provenance import checksums, mark_stage_done, read_stamp, run_lock, snapshot, stage_is_done

CommandRunner = Callable[[list[str]], int]
"""Runs one `codonlm` command line (its arguments) and returns its exit code: cli.main."""


@dataclass
class RunContext:
    """The run the stages work on, and what they need to name their commands and outputs."""

    cfg: Config
    run_id: str
    prepare_force: bool = False
    quiet: bool = False

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.outputs.runs_dir) / self.run_id

    @property
    def config(self) -> str:
        """The run's own config snapshot: every stage reads the config the run was started with."""
        return str(self.run_dir / "config.yaml")

    @property
    def checkpoints(self) -> Path:
        return Path(self.cfg.outputs.out_dir) / self.run_id

    @property
    def reports(self) -> Path:
        """Where stage 2 writes (outputs/reports/<RUN_ID>/stage2/; not a config key in the manual)."""
        return Path("outputs/reports")

    @property
    def scores(self) -> Path:
        return Path(self.cfg.outputs.scores_dir) / self.run_id

    def raw_files(self) -> list[Path]:
        return [Path(f) for d in self.cfg.data.datasets for f in [*d.files, *d.companions] if f is not None]

    def prepared(self) -> list[Path]:
        from codonlm.data.layout import data_key, key_dir

        return [key_dir(Path(self.cfg.data.processed_dir), data_key(self.cfg).key) / "all"]

    def flags(self, **extra: bool) -> list[str]:
        """--quiet (and the other given switches) when on."""
        return [f"--{k}" for k, on in {"quiet": self.quiet, **extra}.items() if on]

    def train_command(self) -> list[str]:
        last = self.checkpoints / "last.pt"
        if last.is_file():  # an interrupted (or finished) training continues where it stopped
            return ["train", "--resume", str(last)]
        return ["train", "-c", self.config, "--run-id", self.run_id]


@dataclass(frozen=True)
class Stage:
    name: str
    command: Callable[[RunContext], list[str]]  # `codonlm` arguments
    outputs: Callable[[RunContext], list[Path]]  # what it writes: checksummed into its stamp
    options: Callable[[RunContext], dict] = field(default=lambda r: {})  # settings that change its result


STAGES = [
    Stage("fetch-data", lambda r: ["fetch-data", "--if-needed", "-c", r.config], RunContext.raw_files),
    Stage("prepare", lambda r: ["prepare", "-c", r.config, "--run-id", r.run_id, *r.flags(force=r.prepare_force)],
          RunContext.prepared, lambda r: {"force": r.prepare_force}),
    Stage("train", RunContext.train_command, lambda r: [r.checkpoints, r.scores / r.cfg.outputs.log_csv]),
    Stage("evaluate", lambda r: ["evaluate", r.run_id, "--checkpoints-dir", r.cfg.outputs.out_dir],
          lambda r: [r.run_dir / "evaluate"]),
    Stage("generate-prefix",
          lambda r: ["generate-prefix", r.run_id, "--checkpoints-dir", r.cfg.outputs.out_dir, *r.flags()],
          lambda r: [r.scores / "gen_prefix"]),
    Stage("design", lambda r: ["design-bench", r.run_id, "--checkpoints-dir", r.cfg.outputs.out_dir,
                               "--runs-dir", r.cfg.outputs.runs_dir], lambda r: [r.run_dir / "design"]),
    Stage("analyze", lambda r: ["analyze", r.run_id, "--checkpoints-dir", r.cfg.outputs.out_dir, *r.flags()],
          lambda r: [r.run_dir / "analysis"],
          lambda r: {"saliency_window": r.cfg.outputs.saliency_window, "saliency_top": r.cfg.outputs.saliency_top}),
    Stage("stage2", lambda r: ["stage2", r.run_id, "--checkpoints-dir", r.cfg.outputs.out_dir,
                                    "--runs-dir", r.cfg.outputs.runs_dir, *r.flags()],
          lambda r: [r.reports / r.run_id / "stage2"]),
    Stage("report", lambda r: ["report", r.run_id, "--runs-dir", r.cfg.outputs.runs_dir],
          lambda r: [r.run_dir / "report.html"]),
]
STAGE_NAMES = [s.name for s in STAGES]


def stage_list(text: str | None, flag: str) -> list[str]:
    """Comma-separated stage names, checked."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    for n in names:
        if n not in STAGE_NAMES:
            raise UserError(f"{flag}: unknown stage '{n}'; stages are {', '.join(STAGE_NAMES)}")
    return names


def resolve_run(config_path: str | None, run_id: str | None, resume: str | None, fresh: bool) -> tuple[Config, str]:
    """Which run this invocation works on: the checkpoint's (resume), the named one, the newest run
    made with this very config (continue it), or else a new run with a fresh id."""
    from codonlm.runid import claim_run, find_run

    if resume:
        if run_id or fresh:
            raise UserError("-r continues the checkpoint's run: it excludes --run-id and --fresh")
        from codonlm.model.checkpoint import load_checkpoint

        state = load_checkpoint(resume)
        cfg = parse_config(state["config"], source=resume)
        if config_path and config_sha256(load_config(config_path)) != config_sha256(cfg):
            log(f"[pipeline] {config_path} differs from the config of {resume}; continuing with the checkpoint's")
        directory = Path(cfg.outputs.runs_dir) / state["run_id"]
        if not (directory / "config.yaml").is_file():  # a checkpoint brought from elsewhere
            directory.mkdir(parents=True, exist_ok=True)
            snapshot(cfg, directory, resume)
        return cfg, state["run_id"]
    config_path = config_path or "configs/tiny_cpu.yaml"
    cfg = load_config(config_path)
    with folder_lock(Path(cfg.outputs.runs_dir)):  # one at a time: a second ./main.sh finds the first's run
        if run_id is None and not fresh and (existing := find_run(cfg)):
            return cfg, existing
        run_id, new = claim_run(cfg, run_id)
        if new:
            snapshot(cfg, Path(cfg.outputs.runs_dir) / run_id, config_path)
    return cfg, run_id


def _digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def cpu_seconds() -> float:
    """CPU time used so far by this process and its finished child processes (all threads)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_stages(ctx: RunContext, only: list[str], redo: list[str], codonlm: CommandRunner) -> tuple[list[dict], int]:
    """Run, skip or stop at each stage in order; returns (one summary row per stage, exit code)."""
    rows, upstream, code = [], {}, 0
    config_sha = config_sha256(ctx.cfg)
    for stage in STAGES:
        inputs = {"config_sha256": config_sha, "options": stage.options(ctx), "upstream": dict(upstream)}
        outputs = checksums(stage.outputs(ctx))
        if code:
            rows.append({"stage": stage.name, "status": "not run", "note": "an earlier stage failed"})
        elif only and stage.name not in only:
            rows.append({"stage": stage.name, "status": "skipped", "note": "not selected (--stages)"})
        elif stage.name not in redo and stage_is_done(ctx.run_dir, stage.name, inputs, outputs):
            rows.append({"stage": stage.name, "status": "skipped", "seconds": 0.0, "cpu_seconds": 0.0,
                         "note": "done before" + _took(read_stamp(ctx.run_dir, stage.name) or {})})
        else:
            argv = stage.command(ctx)
            log(f"=== [{stage.name}] {time.strftime('%Y-%m-%dT%H:%M:%S')}: codonlm {' '.join(argv)}")
            t0, cpu0 = time.perf_counter(), cpu_seconds()
            try:
                code = codonlm(argv)
            except KeyboardInterrupt:  # Ctrl-C between the command's own handling and here
                code = 130
            except Exception:  # a bug, not a user error: show it, and still close with the summary
                traceback.print_exc()
                code = 1
            seconds, cpu = round(time.perf_counter() - t0, 1), round(cpu_seconds() - cpu0, 1)
            log(f"=== [{stage.name}] {'finished' if code == 0 else f'failed (exit {code})'} in {seconds:.1f}s "
                f"({cpu:.1f}s CPU)")
            outputs = checksums(stage.outputs(ctx))
            if code == 0:
                mark_stage_done(ctx.run_dir, stage.name, inputs, outputs, seconds, cpu)
            rows.append({"stage": stage.name, "status": "done" if code == 0 else "failed", "seconds": seconds,
                         "cpu_seconds": cpu, "note": "" if code == 0 else f"exit {code}"})
        upstream[stage.name] = _digest(outputs)
    return rows, code


def _took(stamp: dict) -> str:
    """' (took 9.2s, 15.1s CPU)' from a stage stamp ('' when it has no time)."""
    if stamp.get("seconds") is None:
        return ""
    cpu = stamp.get("cpu_seconds")
    return f" (took {stamp['seconds']:.1f}s" + (f", {cpu:.1f}s CPU)" if cpu is not None else ")")


def summary_lines(run_id: str, rows: list[dict], seconds: float, cpu: float) -> list[str]:
    lines = [f"=== summary of run {run_id} ({seconds:.1f}s in all, {cpu:.1f}s CPU; per stage: wall, CPU of "
             "all threads and child processes):"]
    for r in rows:
        took = f"{r['seconds']:8.1f}s {r['cpu_seconds']:8.1f}s CPU" if "seconds" in r else " " * 22
        lines.append(f"    {r['stage']:<16} {r['status']:<8} {took}  {r.get('note', '')}".rstrip())
    return lines


def run_pipeline(codonlm: CommandRunner, config_path: str | None = None, run_id: str | None = None,
                 resume: str | None = None, fresh: bool = False, stages: str | None = None, redo: str | None = None,
                 force: bool = False, quiet: bool = False, wait: bool = True) -> int:
    """./main.sh: resolve the run, then, as its one writer (provenance.run_lock: wait for another holder, or
    refuse when not `wait`), run its stages like make, each through `codonlm` (cli.main); returns the exit code."""
    only, again = stage_list(stages, "--stages"), stage_list(redo, "--redo")
    if quiet:
        os.environ["CODONLM_QUIET"] = "1"
    cfg, run_id = resolve_run(config_path, run_id, resume, fresh)
    ctx = RunContext(cfg, run_id, prepare_force=force, quiet=quiet or log_quiet())
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    with run_lock(ctx.run_dir, wait=wait), run_log(ctx.run_dir):
        log(f"=== codonlm run {run_id} (config {ctx.config}; outputs in {ctx.run_dir}, {ctx.checkpoints}, "
            f"{ctx.scores})")
        rows, code = run_stages(ctx, only, again, codonlm)
        for line in summary_lines(run_id, rows, time.perf_counter() - t0, cpu_seconds() - cpu0):
            log(line)
        for line in headline_lines(run_id, ctx.run_dir, ctx.checkpoints, ctx.scores, ctx.reports):
            log(line)
    return code
