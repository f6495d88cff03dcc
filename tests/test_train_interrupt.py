"""Training keeps its work: SIGINT/SIGTERM save last.pt at the step reached, checkpoints also follow wall
time (train.checkpoint_minutes), and non-finite gradients never reach the weights (issue 18, items 2, 3)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from codonlm_faults import fault_env

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.errors import TrainingDiverged, UserError
from codonlm.model.checkpoint import load_checkpoint, nonfinite_weights
from codonlm.model.load import checkpoint_path
from codonlm.train import loop


@pytest.fixture(scope="module")
def corpus(prepared_corpus):
    return prepared_corpus(40)  # 38 steps per epoch


def _curve_steps(cfg, run_id: str) -> list[int]:
    with open(Path(cfg.outputs.scores_dir) / run_id / "curves.csv") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def _curves_text(cfg, run_id: str) -> str:
    return (Path(cfg.outputs.scores_dir) / run_id / "curves.csv").read_text()


def _as_in_a_terminal() -> None:
    """Ctrl-C's default (a background job's shell passes SIGINT ignored), in a process group of its own
    that the test signals as a terminal does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _train(cfg_path: Path, run_id: str, kill_at_step: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "codonlm.cli", "train", "-c", str(cfg_path), "--run-id", run_id],
                            env=fault_env({**os.environ, "CODONLM_QUIET": "1"}, kill_at_step=kill_at_step),
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_as_in_a_terminal, start_new_session=True)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0)


@pytest.mark.slow  # two trainings in subprocesses (> 10 s)
def test_sigterm_between_two_checkpoints_saves_that_step_and_the_curve_continues(
        corpus, tiny_config, write_config, tmp_path):
    """SIGTERM right after step 51, between the checkpoints of steps 48 and 52: last.pt holds step 51,
    the process exits 143, and the resumed run ends exactly as an uninterrupted one."""
    raw = tiny_config(*corpus, epochs=3, checkpoint_every=4)
    cfg, cfg_path = parse_config(raw), write_config(tmp_path / "cfg.yaml", raw)
    loop.train(cfg, "straight")
    proc = _train(cfg_path, "stopped", kill_at_step="51:TERM")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    last = Path(cfg.outputs.out_dir) / "stopped" / "last.pt"
    assert err.strip().splitlines()[-1] == (f"codonlm train: interrupted by SIGTERM at step 51/114; saved {last}: "
                                            f"continue with 'codonlm train -r {last}' (or run ./main.sh again)")
    assert load_checkpoint(last)["step"] == 51
    assert _curve_steps(cfg, "stopped")[-1] == 50
    assert main(["train", "--resume", str(last)]) == 0
    steps = _curve_steps(cfg, "stopped")
    assert steps == sorted(set(steps)) and {50, 60} <= set(steps)  # no gap, no duplicate at the seam
    assert _curves_text(cfg, "stopped") == _curves_text(cfg, "straight")
    _assert_same_weights(last, Path(cfg.outputs.out_dir) / "straight" / "last.pt")


@pytest.mark.slow  # two trainings in subprocesses (> 10 s)
def test_ctrl_c_to_the_whole_process_group_with_loader_workers_saves_last_pt(
        corpus, tiny_config, write_config, tmp_path):
    """A real Ctrl-C (SIGINT to the trainer and its DataLoader worker) mid-epoch, with no step or time
    checkpoint due: last.pt holds the step reached, and the resumed run continues the curve from it."""
    raw = tiny_config(*corpus, epochs=4, checkpoint_every=0, checkpoint_minutes=0, log_every=1, eval_every=0)
    raw["system"]["num_workers"] = 1
    cfg, cfg_path = parse_config(raw), write_config(tmp_path / "cfg.yaml", raw)
    proc = _train(cfg_path, "ctrl-c")
    curves = Path(cfg.outputs.scores_dir) / "ctrl-c" / "curves.csv"
    deadline = time.monotonic() + 240
    while not (curves.is_file() and len(curves.read_text().splitlines()) > 5) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "codonlm train: interrupted by SIGINT at step " in err and "Traceback" not in err, err[-3000:]
    stopped_at = load_checkpoint(Path(cfg.outputs.out_dir) / "ctrl-c" / "last.pt")["step"]
    assert _curve_steps(cfg, "ctrl-c")[-1] == stopped_at  # a row every step: the curve ends where last.pt is
    assert main(["train", "--resume", str(Path(cfg.outputs.out_dir) / "ctrl-c" / "last.pt")]) == 0
    assert _curve_steps(cfg, "ctrl-c") == list(range(1, 4 * 38 + 1))  # continued from that step, no gap


@pytest.mark.parametrize("minutes,saved_step", [(1e-9, 5), (0, None)])
def test_checkpoint_minutes_writes_last_pt_by_wall_time(corpus, tiny_config, write_config, tmp_path, minutes,
                                                        saved_step):
    """No step interval (checkpoint_every 0) and SIGKILL after step 5 of 38: with a wall-time interval
    that has always passed, last.pt holds step 5; with it off, there is none."""
    raw = tiny_config(*corpus, epochs=1, checkpoint_every=0, checkpoint_minutes=minutes)
    run_id = f"timed-{minutes}"
    proc = _train(write_config(tmp_path / "cfg.yaml", raw), run_id, kill_at_step="5")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    last = Path(parse_config(raw).outputs.out_dir) / run_id / "last.pt"
    assert (load_checkpoint(last)["step"] if last.exists() else None) == saved_step


def test_nonfinite_gradients_are_skipped_and_the_weights_stay_finite(corpus, tiny_config, monkeypatch):
    """A finite loss with NaN gradients (0 * sqrt'(0)) used to write NaN into the weights, and last.pt
    kept them; now the step is skipped like a NaN loss, and training stops with advice."""
    real_loss = loop.TinyGPT.loss

    def nan_gradients(logits, *args, **kwargs):
        return real_loss(logits, *args, **kwargs) + 0.0 * torch.sqrt(logits - logits.detach()).sum()

    monkeypatch.setattr(loop.TinyGPT, "loss", staticmethod(nan_gradients))
    cfg = parse_config(tiny_config(*corpus, max_nonfinite_steps=3))
    with pytest.raises(TrainingDiverged, match=r"^gradient norm was non-finite for 3 steps in a row \(step 0\); "
                                               r"lower train.lr \(now 0.003\)"):
        loop.train(cfg, "nan-grad")
    last = load_checkpoint(Path(cfg.outputs.out_dir) / "nan-grad" / "last.pt")
    assert last["step"] == 0 and nonfinite_weights(last["model"]) == []


def test_a_run_whose_validation_is_never_finite_fails_instead_of_finishing(corpus, tiny_config, monkeypatch):
    """Finite training steps but a NaN validation loss at every epoch end: no best.pt; training ended
    with exit 0 and 'best_val_loss inf' in its summary."""
    monkeypatch.setattr(loop, "evaluate_loss", lambda *a, **k: float("nan"))
    cfg = parse_config(tiny_config(*corpus, epochs=1, max_steps=4, eval_every=0))
    with pytest.raises(TrainingDiverged, match=r"^the validation loss was never finite \(1 epoch end\(s\), step 4\), "
                                               r"so there is no best.pt; lower train.lr"):
        loop.train(cfg, "nan-val")
    assert not (Path(cfg.outputs.out_dir) / "nan-val" / "best.pt").exists()
    assert load_checkpoint(Path(cfg.outputs.out_dir) / "nan-val" / "last.pt")["step"] == 4  # kept to inspect
    with pytest.raises(UserError, match=r"^run 'nan-val' has no best.pt: its validation loss was never finite"):
        checkpoint_path("nan-val", cfg.outputs.out_dir)  # and commands that need a model say so
