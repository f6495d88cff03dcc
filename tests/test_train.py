"""Training loop on a small prepared fixture corpus: outputs, safety, exact resume, DDP equivalence."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from codonlm_faults import fault_env

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.errors import TrainingDiverged, UserError
from codonlm.model.checkpoint import load_checkpoint, save_checkpoint
from codonlm.train import loop


@pytest.fixture(scope="module")
def corpus(prepared_corpus):
    return prepared_corpus(40)


@pytest.fixture
def cfg_for(corpus, tiny_config):
    def make(**train):
        return parse_config(tiny_config(*corpus, **train))

    return make


def _curves(cfg, run_id) -> list[dict]:
    with open(Path(cfg.outputs.scores_dir) / run_id / "curves.csv") as fh:
        return list(csv.DictReader(fh))


def test_train_writes_curves_and_safe_checkpoints(cfg_for):
    cfg = cfg_for()  # 2 epochs of 38 steps; log_every 10, eval_every 50 (defaults)
    summary = loop.train(cfg, "plain")
    rows = _curves(cfg, "plain")
    assert list(rows[0]) == ["step", "train_loss", "val_loss", "perplexity", "lr"]
    # a row every 10 steps, one at 50 with the validation subset, one at each epoch end (38, 76)
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 38, 40, 50, 60, 70, 76]
    with_val = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    assert set(with_val) == {38, 50, 76}
    assert with_val[76] < with_val[38] < 4.3  # learning: below ln(68)
    assert with_val[76] == pytest.approx(summary["best_val_loss"], abs=1e-6)
    for r in rows:
        assert (r["perplexity"] == "") == (r["val_loss"] == "")
        assert 0 < float(r["train_loss"]) < 4.3 and float(r["lr"]) > 0
    assert (Path(cfg.outputs.scores_dir) / "plain" / "curves.png").stat().st_size > 10_000
    ckpt = Path(cfg.outputs.out_dir) / "plain"
    state = torch.load(ckpt / "last.pt", weights_only=True)
    assert state["step"] == summary["steps"] == 76 and state["run_id"] == "plain"
    assert [r["step"] for r in state["curves"]] == [int(r["step"]) for r in rows]  # the checkpoint holds them
    assert load_checkpoint(ckpt / "best.pt")["best_val"] == pytest.approx(summary["best_val_loss"])


def test_curve_rows_follow_log_every(cfg_for):
    cfg = cfg_for(epochs=1, log_every=7, eval_every=0)
    loop.train(cfg, "every7")
    rows = _curves(cfg, "every7")
    assert [int(r["step"]) for r in rows] == [7, 14, 21, 28, 35, 38]
    assert [bool(r["val_loss"]) for r in rows] == [False] * 5 + [True]  # only the epoch end validates


def test_training_time_estimate_is_logged_once_from_timed_steps(cfg_for, capsys):
    import re

    summary = loop.train(cfg_for(epochs=1, max_steps=12), "estimate")
    lines = capsys.readouterr().out.splitlines()
    found = [m for line in lines if (m := re.fullmatch(
        r"=== \[train\] estimate: (\d+) steps x ([\d.e+-]+) s/step = ~(\d+ h \d\d min|\d+ min|\d+ s) on cpu "
        r"\((\d+) threads?\); validation adds a little", line))]
    assert len(found) == 1, lines
    steps, per_step, _, threads = found[0].groups()
    assert int(steps) == 12 and float(per_step) > 0 and int(threads) == torch.get_num_threads()
    assert summary["estimated_seconds"] == pytest.approx(12 * float(per_step), rel=0.01)
    assert lines.index(found[0].string) < next(i for i, line in enumerate(lines) if "epoch 1/1" in line)
    assert loop.duration(7530) == "~2 h 06 min" and loop.duration(420) == "~7 min" and loop.duration(20) == "~20 s"


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    save_checkpoint(path, {"model": {}, "config": {}, "payload": Path("/etc/passwd")})  # a non-tensor object
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)


@pytest.mark.slow  # two trainings in subprocesses (> 10 s)
def test_resume_after_sigkill_matches_uninterrupted_run(corpus, tiny_config, write_config, tmp_path):
    """The trainer SIGKILLs itself right after step 51 (hook), between a checkpoint (48) and the next,
    after a curves row (50) that the resumed run must drop and write again identically."""
    raw = tiny_config(*corpus, epochs=3, checkpoint_every=4)
    cfg_path = write_config(tmp_path / "cfg.yaml", raw)
    cfg = parse_config(raw)
    loop.train(cfg, "straight")
    env = fault_env({**os.environ, "CODONLM_QUIET": "1"}, kill_at_step="51")
    proc = subprocess.run([sys.executable, "-m", "codonlm.cli", "train", "-c", str(cfg_path), "--run-id", "killed"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = Path(cfg.outputs.out_dir) / "killed" / "last.pt"
    assert load_checkpoint(last)["step"] == 48
    assert int(_curves(cfg, "killed")[-1]["step"]) == 50  # written after the checkpoint, then killed
    assert main(["train", "--resume", str(last)]) == 0
    straight = Path(cfg.outputs.scores_dir) / "straight" / "curves.csv"
    assert (Path(cfg.outputs.scores_dir) / "killed" / "curves.csv").read_text() == straight.read_text()
    wa = torch.load(Path(cfg.outputs.out_dir) / "straight" / "last.pt", weights_only=True)["model"]
    wb = torch.load(last, weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0)


def _nan_loss(monkeypatch):
    real_loss = loop.TinyGPT.loss
    monkeypatch.setattr(loop.TinyGPT, "loss", staticmethod(lambda *a, **k: real_loss(*a, **k) * float("nan")))


def test_nonfinite_losses_stop_with_advice(cfg_for, monkeypatch):
    _nan_loss(monkeypatch)
    with pytest.raises(TrainingDiverged) as exc:
        loop.train(cfg_for(max_nonfinite_steps=3), "nan")
    text = str(exc.value)
    assert "3 steps in a row" in text and "lower train.lr (now 0.003)" in text
    assert "amp: false" not in text  # amp is already off in this config
    with pytest.raises(TrainingDiverged, match=r"set train.amp: false \(training runs in bfloat16\)"):
        loop.train(cfg_for(max_nonfinite_steps=2, amp=True), "nan-bf16")
    assert not (Path(cfg_for().outputs.out_dir) / "nan" / "best.pt").exists()
    assert not issubclass(TrainingDiverged, UserError)  # a failed run, not a user mistake


def test_diverged_training_is_one_line_exit_3(corpus, tiny_config, write_config, tmp_path, monkeypatch, capsys):
    _nan_loss(monkeypatch)
    monkeypatch.setenv("CODONLM_QUIET", "1")  # no progress bar on stderr
    cfg_path = write_config(tmp_path / "cfg.yaml", tiny_config(*corpus, max_nonfinite_steps=2))
    capsys.readouterr()
    assert main(["train", "-c", str(cfg_path), "--run-id", "nan-cli"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("codonlm train: error: loss was non-finite"), err
    log = (Path(tiny_config(*corpus)["outputs"]["runs_dir"]) / "nan-cli" / "log.txt").read_text()
    assert "error: loss was non-finite for 2 steps in a row" in log  # the run's log says why it stopped


def test_early_stopping_and_best_only_on_improvement(cfg_for, monkeypatch):
    cfg = cfg_for(epochs=10, eval_every=0)
    cfg.schedule.early_stop_patience = 2
    vals = iter([3.0, 3.5, 3.6, 3.7, 3.8])
    monkeypatch.setattr(loop, "evaluate_loss", lambda *a, **k: next(vals))
    summary = loop.train(cfg, "early")
    assert summary["stopped_early"] and summary["epochs_done"] == 3
    best = load_checkpoint(Path(cfg.outputs.out_dir) / "early" / "best.pt")
    assert best["epoch"] == 1 and best["best_val"] == 3.0  # saved after the first epoch completed


def test_plateau_halves_after_exactly_patience_stalled_epochs():
    from codonlm.train.schedule import Plateau

    for patience in (1, 2, 3):
        plateau = Plateau(lr=1.0, min_lr=0.1, patience=patience)
        plateau.step(3.0)  # the first epoch sets the best
        lrs = []
        for stalled in range(1, 2 * patience + 1):
            plateau.step(3.0 + stalled)
            lrs.append(plateau.lr)
        # halved by the patience-th stalled epoch, again by the (2 x patience)-th
        assert lrs == [1.0] * (patience - 1) + [0.5] * patience + [0.25], patience
        plateau.step(1.0)  # an improvement resets the count and keeps the lr
        assert (plateau.lr, plateau.bad_epochs) == (0.25, 0)


def test_plateau_lr_in_training_halves_in_the_epoch_after_the_stalled_one(cfg_for, monkeypatch):
    cfg = cfg_for(epochs=3, eval_every=0, log_every=38)  # one curves row per epoch (38 steps each)
    cfg.schedule.scheduler, cfg.schedule.plateau_patience = "plateau", 1
    vals = iter([3.0, 3.5, 3.6])  # epoch 2 is the first (and, with patience 1, the only) stalled epoch needed
    monkeypatch.setattr(loop, "evaluate_loss", lambda *a, **k: next(vals))
    loop.train(cfg, "plateau")
    lrs = [float(r["lr"]) for r in _curves(cfg, "plateau")]
    assert lrs == pytest.approx([3e-3, 3e-3, 1.5e-3])


def test_plateau_patience_zero_is_refused():
    from codonlm.config import ScheduleConfig

    with pytest.raises(ValueError, match="plateau_patience"):
        ScheduleConfig(plateau_patience=0)


def test_epochs_auto_prints_derivation(cfg_for, capsys):
    loop.train(cfg_for(epochs="auto", tokens_per_param=0.5, max_steps=3), "auto")
    lines = capsys.readouterr().out.splitlines()
    assert any("epochs auto: tokens_per_param 0.5 x n_params" in line for line in lines)


@pytest.mark.parametrize("optimizer,scheduler", [("adafactor", "plateau"), ("adamw", "cosine")])
def test_optimizers_schedulers_and_bf16(cfg_for, optimizer, scheduler, capsys):
    cfg = cfg_for(optimizer=optimizer, amp=True, use_checkpoint=True, grad_accum_steps=2, epochs=1)
    cfg.schedule.scheduler = scheduler
    summary = loop.train(cfg, f"{optimizer}-{scheduler}")
    lines = capsys.readouterr().out.splitlines()
    assert summary["nonfinite_steps"] == 0 and summary["best_val_loss"] < 4.3
    assert summary["precision"] == "bfloat16"
    warned = [line for line in lines if "warning: optimizer adafactor with lr 0.003" in line]
    assert len(warned) == (optimizer == "adafactor")


def test_adafactor_at_its_own_lr_is_not_warned(cfg_for):
    from codonlm.train.optim import adafactor_lr_warning

    assert adafactor_lr_warning(cfg_for(optimizer="adafactor", lr=1e-2).train) is None
    assert "AdamW" in adafactor_lr_warning(cfg_for(optimizer="adafactor", lr=1e-3).train)


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(corpus, tiny_config, tmp_path):
    base = tiny_config(*corpus, epochs=1, max_steps=6, batch_size=2)
    base["model"]["dropout"] = 0.0
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(base))
    base["train"]["batch_size"] = 4
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(base))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port, so parallel runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          port, "-m", "codonlm.train_codon_lm", "-c", str(two), "--run-id", "ddp"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-6000:]
    assert main(["train", "-c", str(one), "--run-id", "single"]) == 0
    cfg = parse_config(base)
    a, b = _curves(cfg, "ddp"), _curves(cfg, "single")
    assert a[-1]["step"] == b[-1]["step"] == "6"
    assert float(a[-1]["train_loss"]) == pytest.approx(float(b[-1]["train_loss"]), abs=1e-4)
    assert float(a[-1]["val_loss"]) == pytest.approx(float(b[-1]["val_loss"]), abs=1e-4)
