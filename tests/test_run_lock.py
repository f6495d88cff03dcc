"""One writer per run: two pipelines on one config at once make one run, trained once, and the second finds
the work done; a run in use makes a second invocation wait with a line naming the holder, or refuse with
--no-wait; a holder killed with SIGKILL leaves a lock the next invocation takes over."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from codonlm_faults import fault_env

from codonlm.provenance import WRITER, run_lock

pytestmark = pytest.mark.slow  # whole pipelines (fetch-data, prepare, train), several per test
STAGES = "fetch-data,prepare,train"


@pytest.fixture
def study(tmp_path, make_corpus, tiny_config, write_config) -> tuple[Path, Path]:
    """A fixture corpus and a tiny config (a few training steps), every output under tmp_path."""
    files, _ = make_corpus(tmp_path, n_genes=20)
    raw = tiny_config(tmp_path, files, epochs=1, max_steps=6, checkpoint_every=2, log_every=2, eval_every=0)
    return tmp_path, write_config(tmp_path / "study.yaml", raw)


def start(folder: Path, config: Path, *flags: str, kill_in_stage: str | None = None) -> subprocess.Popen:
    """`codonlm pipeline -c CONFIG --stages STAGES` (what ./main.sh runs), unbuffered, in its own process."""
    env = fault_env({**os.environ, "CODONLM_QUIET": "1", "PYTHONUNBUFFERED": "1"}, kill_in_stage=kill_in_stage)
    env.pop("CODONLM_TEED", None)
    return subprocess.Popen([sys.executable, "-m", "codonlm.cli", "pipeline", "-c", str(config), "--stages", STAGES,
                             *flags], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def ran(stdout: str) -> list[str]:
    """The stages this invocation ran ('=== [stage] <time>: codonlm ...')."""
    return re.findall(r"^=== \[([\w-]+)\] \d{4}-", stdout, flags=re.MULTILINE)


def runs(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "runs").iterdir() if p.is_dir())


def test_two_pipelines_at_once_make_one_run_with_one_writer(study):
    folder, config = study
    first, second = start(folder, config), start(folder, config)
    results = [finish(first), finish(second)]
    for code, out, err in results:
        assert code == 0, out[-3000:] + err[-3000:]
    assert len(runs(folder)) == 1, runs(folder)  # both continue the one run of this config
    worked = [i for i, (_, out, _) in enumerate(results) if ran(out)]
    assert len(worked) == 1, [ran(out) for _, out, _ in results]  # one writer: each stage ran once
    writer, other = results[worked[0]][1], results[1 - worked[0]][1]
    assert ran(writer) == STAGES.split(",")
    assert other.count("done before") == 3 and not ran(other)  # the second found the work done
    if "is in use by" in other:  # it came while the first was working: it waited for that process
        assert f"is in use by process {(first, second)[worked[0]].pid} " in other
    assert not (folder / "runs" / runs(folder)[0] / WRITER).exists()  # released


def test_a_run_in_use_makes_the_next_invocation_wait_or_refuse(study):
    folder, config = study
    code, out, err = finish(start(folder, config, "--stages", "fetch-data"))
    assert code == 0, out[-3000:] + err[-3000:]
    run_dir = folder / "runs" / runs(folder)[0]
    with run_lock(run_dir):  # this test process is the run's writer now
        holder = json.loads((run_dir / WRITER).read_text())
        assert holder["pid"] == os.getpid()
        code, out, err = finish(start(folder, config, "--no-wait"))
        assert code == 2 and "Traceback" not in err, out[-3000:] + err[-3000:]
        assert err.strip().splitlines()[-1] == (
            f"codonlm pipeline: error: run {run_dir.name} is in use by process {os.getpid()} on {holder['host']} "
            f"({holder['command']}, since {holder['since']}); wait for it to finish, or run again without "
            "--no-wait to wait for it")
        assert not ran(out) and not (run_dir / "log.txt").read_text().count("--no-wait")  # nothing written
        waiting = start(folder, config)
        deadline = time.monotonic() + 120
        line = ""
        while "is in use by" not in line and time.monotonic() < deadline:
            line = waiting.stdout.readline()
        assert f"run {run_dir.name} is in use by process {os.getpid()} " in line, line
        assert "waiting for it to finish" in line
        time.sleep(1)
        assert waiting.poll() is None and not (folder / "processed").exists()  # still waiting, nothing done
    code, out, err = finish(waiting)  # the lock is free: it goes on
    assert code == 0 and ran(out) == ["prepare", "train"], out[-3000:] + err[-3000:]


def test_a_lock_left_by_a_killed_holder_is_taken_over(study):
    folder, config = study
    code, out, err = finish(start(folder, config, kill_in_stage="train:2:KILL"))
    assert code == -signal.SIGKILL, out[-3000:] + err[-3000:]
    run_dir = folder / "runs" / runs(folder)[0]
    assert (run_dir / WRITER).is_file()  # its record stays, but the kernel dropped its lock
    code, out, err = finish(start(folder, config, "--no-wait"))
    assert code == 0, out[-3000:] + err[-3000:]  # --no-wait would have refused a lock still held
    assert "is in use" not in out + err
    assert ran(out) == ["train"] and out.count("done before") == 2  # it finished what the killed one left
    assert not (run_dir / WRITER).exists()
