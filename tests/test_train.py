"""Training loop on a small prepared fixture corpus: outputs, safety, exact resume, DDP equivalence."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_prepare import make_corpus

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.prepare import prepare
from codonlm.errors import UserError
from codonlm.train import loop
from codonlm.train.checkpoint import load_checkpoint, save_checkpoint


def _raw_config(tmp_path: Path, files, **train) -> dict:
    return {
        "name": "t",
        "model": {"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.1},
        "data": {"datasets": [{"name": f"ds{i}", "gbff": str(f), "min_len": 10} for i, f in enumerate(files)],
                 "val_frac": 0.2, "test_frac": 0.1, "processed_dir": str(tmp_path / "processed")},
        "train": {"batch_size": 4, "epochs": 2, "lr": 3e-3, "amp": False, "checkpoint_every": 2, **train},
        "schedule": {"warmup_steps": 2, "min_lr": 1e-4, "early_stop_patience": 5},
        "system": {"num_threads": 1},
        "outputs": {"itos_path": str(tmp_path / "processed" / "itos.json"), "runs_dir": str(tmp_path / "runs"),
                    "out_dir": str(tmp_path / "ckpt"), "scores_dir": str(tmp_path / "scores"), "seed": 3},
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    files, _ = make_corpus(tmp, n_genes=40)
    prepare(parse_config(_raw_config(tmp, files)), show_progress=False)
    return tmp, files


def _cfg(corpus, **train):
    tmp, files = corpus
    return parse_config(_raw_config(tmp, files, **train))


def _curves(cfg, run_id) -> list[dict]:
    with open(Path(cfg.outputs.scores_dir) / run_id / "curves.csv") as fh:
        return list(csv.DictReader(fh))


def test_train_writes_curves_and_safe_checkpoints(corpus):
    cfg = _cfg(corpus)
    summary = loop.train(cfg, "plain")
    rows = _curves(cfg, "plain")
    assert list(rows[0]) == ["step", "train_loss", "val_loss", "perplexity", "lr"]
    assert len(rows) == 2 and int(rows[-1]["step"]) == summary["steps"]
    assert float(rows[1]["val_loss"]) < float(rows[0]["val_loss"]) < 4.3  # learning: below ln(68)
    ckpt = Path(cfg.outputs.out_dir) / "plain"
    state = torch.load(ckpt / "last.pt", weights_only=True)
    assert state["step"] == summary["steps"] and state["run_id"] == "plain"
    assert load_checkpoint(ckpt / "best.pt")["best_val"] == pytest.approx(summary["best_val_loss"])


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    save_checkpoint(path, {"model": {}, "config": {}, "payload": Path("/etc/passwd")})  # a non-tensor object
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)


def test_resume_after_sigkill_matches_uninterrupted_run(corpus, tmp_path):
    base = _raw_config(corpus[0], corpus[1], epochs=3)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(base))
    cfg = parse_config(base)
    loop.train(cfg, "straight")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "codonlm.cli", "train", "-c", str(cfg_path), "--run-id", "killed"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = Path(cfg.outputs.out_dir) / "killed" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            state = torch.load(last, weights_only=True)
            if state["batch_in_epoch"] > 0 and state["epoch"] >= 1:  # mid-epoch, after one full epoch
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "run finished before it could be killed mid-epoch"
    assert main(["train", "-c", str(cfg_path), "--resume", str(last)]) == 0
    a, b = _curves(cfg, "straight"), _curves(cfg, "killed")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), abs=1e-5), (ra, rb)
    wa = torch.load(Path(cfg.outputs.out_dir) / "straight" / "last.pt", weights_only=True)["model"]
    wb = torch.load(last, weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_nonfinite_losses_stop_with_advice(corpus, monkeypatch):
    cfg = _cfg(corpus, max_nonfinite_steps=3)
    real_loss = loop.TinyGPT.loss
    monkeypatch.setattr(loop.TinyGPT, "loss", staticmethod(lambda *a, **k: real_loss(*a, **k) * float("nan")))
    with pytest.raises(loop.TrainingDiverged) as exc:
        loop.train(cfg, "nan")
    assert "3 steps in a row" in str(exc.value) and "amp: false" in str(exc.value)
    assert not (Path(cfg.outputs.out_dir) / "nan" / "best.pt").exists()


def test_early_stopping_and_best_only_on_improvement(corpus, monkeypatch):
    cfg = _cfg(corpus, epochs=10)
    cfg.schedule.early_stop_patience = 2
    vals = iter([3.0, 3.5, 3.6, 3.7, 3.8])
    monkeypatch.setattr(loop, "evaluate_loss", lambda *a, **k: next(vals))
    summary = loop.train(cfg, "early")
    assert summary["stopped_early"] and summary["epochs_done"] == 3
    best = load_checkpoint(Path(cfg.outputs.out_dir) / "early" / "best.pt")
    assert best["epoch"] == 1 and best["best_val"] == 3.0  # saved after the first epoch completed


def test_epochs_auto_prints_derivation(corpus):
    cfg = _cfg(corpus, epochs="auto", tokens_per_param=0.5, max_steps=3)
    lines = []
    loop.train(cfg, "auto", log=lines.append)
    assert any("epochs auto: tokens_per_param 0.5 x n_params" in line for line in lines)


@pytest.mark.parametrize("optimizer,scheduler", [("adafactor", "plateau"), ("adamw", "cosine")])
def test_optimizers_schedulers_and_bf16(corpus, optimizer, scheduler):
    cfg = _cfg(corpus, optimizer=optimizer, amp=True, use_checkpoint=True, grad_accum_steps=2, epochs=1)
    cfg.schedule.scheduler = scheduler
    summary = loop.train(cfg, f"{optimizer}-{scheduler}")
    assert summary["nonfinite_steps"] == 0 and summary["best_val_loss"] < 4.3


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(corpus, tmp_path):
    base = _raw_config(corpus[0], corpus[1], epochs=1, max_steps=6, batch_size=2)
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
    assert a[0]["step"] == b[0]["step"] == "6"
    assert float(a[0]["train_loss"]) == pytest.approx(float(b[0]["train_loss"]), abs=1e-4)
    assert float(a[0]["val_loss"]) == pytest.approx(float(b[0]["val_loss"]), abs=1e-4)
