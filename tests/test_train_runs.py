"""Runs and precision: unique run ids, resuming into the checkpoint's own run, amp: auto, MFU, compile."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.runid import make_run_id
from codonlm.train import loop
from codonlm.train.precision import choose_precision


@pytest.fixture(scope="module")
def corpus(prepared_corpus):
    return prepared_corpus(20)


@pytest.fixture
def short(corpus, tiny_config, tmp_path):
    """A 4-step config writing its runs, checkpoints and scores under this test's tmp_path."""

    def make(**train) -> dict:
        raw = tiny_config(*corpus, epochs=1, max_steps=4, **train)
        raw["outputs"].update(runs_dir=str(tmp_path / "runs"), out_dir=str(tmp_path / "ckpt"),
                              scores_dir=str(tmp_path / "scores"))
        return raw

    return make


def _files(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


def _run_files(cfg, run_id: str) -> dict[str, str]:
    o = cfg.outputs
    return _files(Path(o.runs_dir) / run_id, Path(o.out_dir) / run_id, Path(o.scores_dir) / run_id)


def test_new_runs_never_share_a_folder(short, write_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CODONLM_QUIET", "1")
    raw = short()
    cfg, path = parse_config(raw), write_config(tmp_path / "cfg.yaml", raw)
    stem = make_run_id(cfg)
    capsys.readouterr()
    assert main(["make-run-id", "-c", str(path)]) == 0 and capsys.readouterr().out.strip() == stem
    assert main(["train", "-c", str(path)]) == 0
    first = _run_files(cfg, stem)
    assert any(k.endswith("last.pt") for k in first) and any(k.endswith("log.txt") for k in first)
    capsys.readouterr()
    assert main(["make-run-id", "-c", str(path)]) == 0 and capsys.readouterr().out.strip() == f"{stem}-2"
    assert main(["train", "-c", str(path)]) == 0
    assert (Path(cfg.outputs.out_dir) / f"{stem}-2" / "last.pt").is_file()
    assert _run_files(cfg, stem) == first  # the first run is untouched, its log.txt included


def test_run_id_of_another_run_is_refused(short, write_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CODONLM_QUIET", "1")
    a = write_config(tmp_path / "a.yaml", short())
    b = write_config(tmp_path / "b.yaml", short(optimizer="adafactor", lr=1e-2))
    assert main(["prepare", "-c", str(a), "--run-id", "mine"]) == 0
    assert main(["train", "-c", str(a), "--run-id", "mine"]) == 0  # the same config continues its run
    capsys.readouterr()
    assert main(["train", "-c", str(b), "--run-id", "mine"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and was made with another config" in err[0], err
    assert main(["train", "-c", str(a), "--run-id", "mine"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already has checkpoints" in err[0] and "-r " in err[0], err


def test_resume_without_config_writes_into_the_checkpoints_run(short, write_config, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setenv("CODONLM_QUIET", "1")
    raw = short()
    path = write_config(tmp_path / "cfg.yaml", raw)
    assert main(["train", "-c", str(path), "--run-id", "r"]) == 0
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)  # the default config's runs/ would land here
    capsys.readouterr()
    last = tmp_path / "ckpt" / "r" / "last.pt"
    assert main(["train", "--resume", str(last)]) == 0
    out = capsys.readouterr().out
    assert "differs" not in out and "configs/tiny_cpu.yaml" not in out
    assert not (work / "runs").exists()
    log = (tmp_path / "runs" / "r" / "log.txt").read_text()
    assert f"resumed from {last} at epoch 1, step 4" in log
    assert "\r" not in log  # clean lines only (no progress-bar redraws)


def test_amp_auto_times_both_precisions_and_logs_why(short, monkeypatch, capsys):
    summary = loop.train(parse_config(short(amp="auto")), "auto")
    lines = capsys.readouterr().out.splitlines()
    why = [line for line in lines if "amp auto on CPU, timed on this model" in line]
    assert len(why) == 1, lines
    m = re.search(r"bf16 ([\d,]+) tokens/s, fp32 ([\d,]+) tokens/s -> (\w+)", why[0])
    bf16, fp32 = (float(m.group(i).replace(",", "")) for i in (1, 2))
    assert m.group(3) == summary["precision"] == ("bfloat16" if bf16 > fp32 else "float32")
    # timing ran on a copy with the RNG restored: training computed what a forced run computes
    forced = parse_config(short(amp=summary["precision"] == "bfloat16"))
    loop.train(forced, "forced")
    auto_w = torch.load(Path(forced.outputs.out_dir) / "auto" / "last.pt", weights_only=True)
    forced_w = torch.load(Path(forced.outputs.out_dir) / "forced" / "last.pt", weights_only=True)
    assert auto_w["precision"]["dtype"] == summary["precision"]
    for k, v in auto_w["model"].items():
        torch.testing.assert_close(v, forced_w["model"][k], atol=0, rtol=0)
    # a resumed run keeps the precision it started with, without timing again
    monkeypatch.setattr(loop, "step_timer", lambda *a, **k: pytest.fail("timed again on resume"))
    capsys.readouterr()
    loop.train(None, resume=Path(forced.outputs.out_dir) / "auto" / "last.pt")
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"[train] precision {summary['precision']}: amp auto on CPU") for line in lines)


def test_choose_precision_keeps_the_faster_and_forced_values():
    cpu = torch.device("cpu")
    assert choose_precision("auto", cpu, lambda: {"bfloat16": 900.0, "float32": 1000.0}).dtype == "float32"
    pick = choose_precision("auto", cpu, lambda: {"bfloat16": 2000.0, "float32": 1000.0})
    assert pick.dtype == "bfloat16" and "bf16 2,000 tokens/s, fp32 1,000 tokens/s -> bfloat16 (2.00x)" in pick.reason
    assert choose_precision(True, cpu, None).dtype == "bfloat16"
    assert choose_precision(False, cpu, None).dtype == "float32"


@pytest.mark.parametrize("amp,dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_mfu_is_against_the_peak_of_the_dtype_in_use(short, monkeypatch, amp, dtype, capsys):
    asked = []
    monkeypatch.setattr(loop, "matmul_peak_flops", lambda device, d: asked.append(d) or 1e9)
    loop.train(parse_config(short(amp=amp)), f"mfu-{amp}")
    lines = capsys.readouterr().out.splitlines()
    assert asked == [dtype]
    epoch = next(line for line in lines if line.startswith("[train] epoch 1/1"))
    tps = float(re.search(r"\| ([\d,]+) tokens/s", epoch).group(1).replace(",", ""))
    mfu = float(re.search(r"MFU ([\d.]+)% of the measured (\w+) matmul peak", epoch).group(1))
    model = loop.TinyGPT(parse_config(short()).model)
    assert mfu == pytest.approx(100 * tps * model.flops_per_token(64) / 1e9, abs=0.06)
    assert f"of the measured {str(dtype).removeprefix('torch.')} matmul peak" in epoch


def test_compile_is_announced_and_kept_out_of_tokens_per_s(short, monkeypatch, capsys):
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: model)  # the real one needs a C compiler
    raw = short()
    raw["system"]["compile"] = True
    summary = loop.train(parse_config(raw), "compiled")
    lines = capsys.readouterr().out.splitlines()
    assert any("compiling the model (torch.compile, mode default)" in line for line in lines)
    assert any(re.match(r"\[train\] compiled in [\d.]+s \(first step\); tokens/s excludes it", line)
               for line in lines)
    assert summary["steps"] == 4 and summary["timed_steps"] == 3
    assert loop.train(parse_config(short()), "eager")["timed_steps"] == 4
