"""Fault injection for tests: a codonlm process that kills itself at a chosen point, with no timing race.

Nothing of this lives in src/. A test asks for a fault through the environment of the process it starts
(`fault_env(...)`): that puts tests/support on PYTHONPATH, so Python runs tests/support/sitecustomize.py
at start-up, which calls `install()` here; `install()` wraps the codonlm functions at the fault points.
This reaches every process a test starts, also through ./main.sh and its `codonlm` console script, which
a monkeypatch inside the pytest process could not.

- KILL_IN_STAGE_ENV='<stage>[:<n>[:<SIG>]]': inside that pipeline stage, just after the n-th file the
  stage puts in place through codonlm.io.atomic_path (default 1; as the stage's command returns, before
  its stamp, when it writes fewer), the process sends itself SIGKILL (or SIG<SIG>, e.g. INT: Ctrl-C).
- KILL_AT_STEP_ENV='<k>[:<SIG>]': the trainer sends itself SIGKILL (or SIG<SIG>, e.g. TERM) right after
  step k (its curves row and, when due, its last.pt written).
"""

from __future__ import annotations

import functools
import os
import signal
from contextlib import contextmanager
from pathlib import Path

KILL_IN_STAGE_ENV = "CODONLM_TEST_KILL_IN_STAGE"
KILL_AT_STEP_ENV = "CODONLM_TEST_KILL_AT_STEP"
SUPPORT = Path(__file__).resolve().parent


COMMAND_OF_STAGE = {"design": "design-bench"}  # the stages whose command is not named after them


def fault_env(base: dict | None = None, kill_in_stage: str | None = None, kill_at_step: str | None = None) -> dict:
    """`base` (default os.environ) with tests/support first on PYTHONPATH and the faults asked for (others
    removed), for a subprocess."""
    env = dict(os.environ if base is None else base)
    env.pop(KILL_IN_STAGE_ENV, None)
    env.pop(KILL_AT_STEP_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), *filter(None, [env.get("PYTHONPATH")])])
    for name, value in ((KILL_IN_STAGE_ENV, kill_in_stage), (KILL_AT_STEP_ENV, kill_at_step)):
        if value:
            env[name] = value
    return env


def _signal(spec: list[str]) -> signal.Signals:
    return signal.Signals[f"SIG{spec[0]}"] if spec and spec[0] else signal.SIGKILL


def install() -> None:
    """Wrap the fault points this process's environment asks for (a no-op without them)."""
    if os.environ.get(KILL_IN_STAGE_ENV):
        _kill_in_stage(*os.environ[KILL_IN_STAGE_ENV].split(":"))
    if os.environ.get(KILL_AT_STEP_ENV):
        _kill_at_step(*os.environ[KILL_AT_STEP_ENV].split(":"))


def _kill_in_stage(stage: str, after: str = "", *sig: str) -> None:
    """Count the stage's writes (codonlm.io.atomic_path, wrapped before any codonlm module binds it) and
    signal this process at the n-th; the stage is the `codonlm` command line whose first word is `stage`
    (or its COMMAND_OF_STAGE)."""
    import codonlm.io
    from codonlm.log import log

    n, sig_, pid = int(after or 1), _signal(list(sig)), os.getpid()
    writes: list[Path | None] = []
    counting = [False]

    def wrote(path: Path | None) -> None:
        writes.append(path)
        if len(writes) == n and os.getpid() == pid:  # not in a worker process
            where = f"after its write {n} ({path})" if path else "as its command returns"
            log(f"[test faults] {sig_.name} to this process in stage {stage}, {where}")
            os.kill(pid, sig_)

    real_atomic_path = codonlm.io.atomic_path

    @contextmanager
    def atomic_path(path):
        with real_atomic_path(path) as tmp:
            yield tmp
        if counting[0]:
            wrote(Path(path))

    command = COMMAND_OF_STAGE.get(stage, stage)

    def in_stage(run_command):
        @functools.wraps(run_command)
        def run(argv: list[str]) -> int:
            if argv[0] != command:
                return run_command(argv)
            counting[0] = True
            try:
                code = run_command(argv)
            finally:
                counting[0] = False
            while len(writes) < n:  # the stage wrote fewer files: as its command returns
                wrote(None)
            return code

        return run

    codonlm.io.atomic_path = atomic_path  # first: modules imported from here on bind this one
    import codonlm.pipeline

    real_run_pipeline = codonlm.pipeline.run_pipeline

    @functools.wraps(real_run_pipeline)
    def run_pipeline(codonlm_command, *args, **kwargs):
        return real_run_pipeline(in_stage(codonlm_command), *args, **kwargs)

    codonlm.pipeline.run_pipeline = run_pipeline


def _kill_at_step(step: str, *sig: str) -> None:
    """Signal this process as the trainer's bookkeeping of step k returns (loop.after_step: its curves row,
    and its last.pt when one is due, are written)."""
    from codonlm.train import loop

    k, sig_, real_after_step = int(step), _signal(list(sig)), loop.after_step

    @functools.wraps(real_after_step)
    def after_step(run, state, *args) -> None:
        real_after_step(run, state, *args)
        if state.step == k:
            os.kill(os.getpid(), sig_)

    loop.after_step = after_step
