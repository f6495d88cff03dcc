"""bench/gpu_check.sh is ready for a GPU machine: its CPU dry run runs every step and prints the one table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_prints_the_table(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "LOG_DIR": str(tmp_path)}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu-dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "== gpu_check (cpu, cpu dry run" in out
    for step in ("cuda-tests", "train", "inference"):
        assert any(line.startswith(step) and " ok " in line for line in out.splitlines()), out
    for row in ("bare forward", "score (sliding)", "embed + loglik", "scan exact"):
        assert row in out
    assert "design:" in out and "native bf16:" in out


def test_gpu_check_refuses_an_unknown_option():
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--fast"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option --fast" in done.stderr
