"""Run folders and what they record: config snapshot + sha256, hardware, git commit, stage timings; and
the run's lock (one writer per run)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from codonlm.config import (
    OVERRIDES_ENV,
    Config,
    config_overrides,
    config_sha256,
    config_to_yaml,
)
from codonlm.errors import UserError
from codonlm.io import atomic_write, folder_lock, read_json, sha256_file, write_json
from codonlm.log import log


def run_dir(cfg: Config, run_id: str) -> Path:
    path = Path(cfg.outputs.runs_dir) / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def list_runs(runs_dir: str | Path = "runs") -> list[str]:
    runs = Path(runs_dir)
    return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def unknown_run(run_id: str, missing: Path | str, runs_dir: str | Path = "runs") -> UserError:
    """The one-line error for a run id that does not exist, listing the runs that do."""
    known = list_runs(runs_dir)
    listing = ", ".join(known) if known else "none yet (run ./main.sh)"
    return UserError(f"unknown run id '{run_id}' (no {missing}); runs that exist: {listing}")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def hardware() -> dict:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    except ImportError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def snapshot(cfg: Config, directory: Path, config_path: str | None = None) -> str:
    """Write config.yaml, config.sha256 and provenance.json into a run folder; returns the sha256."""
    digest = config_sha256(cfg)
    atomic_write(directory / "config.yaml", config_to_yaml(cfg))
    atomic_write(directory / "config.sha256", digest + "\n")
    prov_path = directory / "provenance.json"
    prov = read_json(prov_path, {})
    prov.update({"config_path": config_path, "config_sha256": digest, "git_commit": git_commit(),
                 "hardware": hardware(), "argv": sys.argv})
    prov.pop("config_overrides", None)
    if overrides := config_overrides():  # already merged into config.yaml; named so the run says how it was made
        prov["config_overrides"] = {"env": OVERRIDES_ENV, "path": overrides[0], "merged": overrides[1]}
        print(f"[config] {OVERRIDES_ENV}={overrides[0]} merged over {config_path}: the run's config.yaml holds "
              "the result", flush=True)
    prov.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json(prov_path, prov)
    return digest


@contextmanager
def timed_stage(directory: Path | None, stage: str):
    """Time a stage, log it, and add it to runs/<RUN_ID>/timings.json."""
    t0 = time.perf_counter()
    log(f"[{stage}] start")
    yield
    seconds = round(time.perf_counter() - t0, 3)
    log(f"[{stage}] done in {seconds:.1f}s")
    if directory is not None:
        path = Path(directory) / "timings.json"
        timings = read_json(path, {})
        timings[stage] = seconds
        write_json(path, timings)


def _stamp_path(directory: Path, stage: str) -> Path:
    return Path(directory) / "stages" / f"{stage}.json"


def checksums(paths: list[Path]) -> dict[str, str | None]:
    """sha256 of every file under `paths` (folders recursively; temporary files left out), None if missing."""
    out: dict[str, str | None] = {}
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if not f.name.startswith("."):
                out[str(f)] = sha256_file(f) if f.is_file() else None
    return out


def stage_is_done(directory: Path, stage: str, inputs: dict, outputs: dict | None = None) -> bool:
    """True when `stage` finished in this run folder with exactly these inputs (checksums, settings)
    and, when `outputs` is given, its outputs are still exactly what it left."""
    stamp = read_json(_stamp_path(directory, stage))
    if not stamp or stamp.get("inputs") != json.loads(json.dumps(inputs, default=str)):
        return False
    return outputs is None or stamp.get("outputs") == outputs


def read_stamp(directory: Path, stage: str) -> dict | None:
    return read_json(_stamp_path(directory, stage))


def mark_stage_done(directory: Path, stage: str, inputs: dict, outputs: dict | None = None,
                    seconds: float | None = None, cpu_seconds: float | None = None) -> None:
    """Write the stage's stamp: last, after every output is in place, so a killed stage has none.
    `seconds` is wall time, `cpu_seconds` the CPU time it took (all threads and child processes)."""
    write_json(_stamp_path(directory, stage), {"stage": stage, "inputs": inputs, "outputs": outputs or {},
                                               "seconds": seconds, "cpu_seconds": cpu_seconds,
                                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


WRITER = ".writer.json"
"""In a run folder while a process holds the run's lock: which process (removed when it lets go)."""
_locked_runs: set[Path] = set()  # the run folders this process holds the lock of


def _writer_line(run_directory: Path) -> str:
    """'process 123 on host (codonlm pipeline ..., since ...)', from the holder's WRITER record."""
    w = read_json(Path(run_directory) / WRITER) or {}
    if "pid" not in w:
        return "another process"
    return f"process {w['pid']} on {w.get('host', '?')} ({w.get('command', '?')}, since {w.get('since', '?')})"


@contextmanager
def run_lock(run_directory: Path, wait: bool = True) -> Iterator[None]:
    """Be the run's one writer while the block runs: an exclusive flock on its folder (io.folder_lock, as
    prepare locks a data key). Another holder makes this process wait, with a line naming that process, or
    with wait=False refuse (UserError). The kernel drops a killed holder's lock, so the next one takes over.
    Re-entrant: the stages that `codonlm pipeline` runs in its own process take the lock it holds."""
    folder = Path(run_directory).resolve()
    if folder in _locked_runs:
        yield
        return

    def busy() -> None:
        holder = _writer_line(folder)
        if not wait:
            raise UserError(f"run {folder.name} is in use by {holder}; wait for it to finish, or run again "
                            "without --no-wait to wait for it")
        log(f"[run] run {folder.name} is in use by {holder}; waiting for it to finish (one writer per run)")

    with folder_lock(folder, on_wait=busy):
        write_json(folder / WRITER, {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(
            ["codonlm", *sys.argv[1:]]), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        _locked_runs.add(folder)
        try:
            yield
        finally:
            _locked_runs.discard(folder)
            (folder / WRITER).unlink(missing_ok=True)
