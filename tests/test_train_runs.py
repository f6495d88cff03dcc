"""Runs and precision: unique run ids, resuming into the checkpoint's own run, amp: auto, MFU, compile."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.runid import make_run_id
from codonlm.train import loop
from codonlm.train.precision import BF16_MARGIN, StepTiming, choose_precision


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
    m = re.search(r"bf16 ([\d,]+) tokens/s, fp32 ([\d,]+) tokens/s -> (\w+) \(bf16 ([\d.]+)(?:-[\d.]+)?x fp32 in "
                  r"(\d) interleaved repeats?;", why[0])
    slowest, repeats = float(m.group(4)), int(m.group(5))
    assert m.group(3) == summary["precision"] == ("bfloat16" if slowest >= BF16_MARGIN else "float32")
    assert repeats == 5 if m.group(3) == "bfloat16" else 1 <= repeats <= 5
    # the run records the measurement, the decision rule and the choice
    record = json.loads((Path(short()["outputs"]["runs_dir"]) / "auto" / "precision.json").read_text())
    assert record["amp"] == "auto" and record["dtype"] == summary["precision"] and record["reason"] in why[0]
    timing = record["measurement"]
    assert timing["repeats"] == repeats and len(timing["seconds_per_step"]["float32"]) == repeats
    assert timing["bf16_speedup_min"] == pytest.approx(slowest, abs=0.01) and "in each of" in timing["rule"]
    assert timing["bf16_speedup_per_repeat"] == pytest.approx(
        [f / b for b, f in zip(timing["seconds_per_step"]["bfloat16"], timing["seconds_per_step"]["float32"], strict=True)],
        rel=1e-3)
    assert timing["tokens_per_s_median"]["float32"] == pytest.approx(float(m.group(2).replace(",", "")), abs=1)
    # timing ran on a copy with the RNG restored: training computed what a forced run computes
    forced = parse_config(short(amp=summary["precision"] == "bfloat16"))
    loop.train(forced, "forced")
    auto_w = torch.load(Path(forced.outputs.out_dir) / "auto" / "last.pt", weights_only=True)
    forced_w = torch.load(Path(forced.outputs.out_dir) / "forced" / "last.pt", weights_only=True)
    assert auto_w["precision"] == {k: record[k] for k in ("dtype", "reason", "measurement")}
    pinned = json.loads((Path(forced.outputs.runs_dir) / "forced" / "precision.json").read_text())
    assert pinned["amp"] is forced.train.amp and pinned["measurement"] is None and "forces" in pinned["reason"]
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

    def timed(bf16_tokens_per_s: float, fp32_tokens_per_s: float):
        return lambda: StepTiming(1000, {"bfloat16": [1000 / bf16_tokens_per_s] * 3,
                                         "float32": [1000 / fp32_tokens_per_s] * 3})

    assert choose_precision("auto", cpu, timed(900.0, 1000.0)).dtype == "float32"
    pick = choose_precision("auto", cpu, timed(2000.0, 1000.0))
    assert pick.dtype == "bfloat16"
    assert "bf16 2,000 tokens/s, fp32 1,000 tokens/s -> bfloat16 (bf16 2.00x fp32 in 3 interleaved" in pick.reason
    assert pick.measurement["bf16_speedup_per_repeat"] == [2.0] * 3 and pick.measurement["repeats"] == 3
    assert choose_precision(True, cpu, None).dtype == "bfloat16"
    assert choose_precision(False, cpu, None).dtype == "float32"


def _timed_choice(monkeypatch, seconds) -> tuple[str, str, list[str]]:
    """amp auto's choice (dtype, reason, the dtypes stepped in order) when step k of a dtype takes
    seconds(dtype, k) on a fake clock: the real step_timer and choose_precision, no real timing."""
    import contextlib
    from types import SimpleNamespace

    from codonlm.train import precision

    clock, steps = [0.0], []

    def fake_step(model, optimizer, batch, autocast) -> int:
        dtype = "float32" if autocast is contextlib.nullcontext else "bfloat16"
        clock[0] += seconds(dtype, sum(d == dtype for d in steps))
        steps.append(dtype)
        return 512

    monkeypatch.setattr(precision, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    model = torch.nn.Linear(4, 4)
    timer = precision.step_timer(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), None,
                                 torch.device("cpu"), fake_step)
    chosen = choose_precision("auto", torch.device("cpu"), timer)
    return chosen.dtype, chosen.reason, steps


@pytest.mark.parametrize("case,expected,pairs", [
    ("busy moment", "float32", 2),  # fp32 is 2x faster; its first timed step met a busy machine (6x slower)
    ("bf16 barely faster", "float32", 1),  # 5% is within the noise of a shared machine: not worth leaving fp32
    ("bf16 emulated", "float32", 1),  # 8x slower: settled by the first timed pair, no more slow bf16 steps
    ("bf16 clearly faster", "bfloat16", 5),
    ("bf16 faster, one busy bf16 step", "float32", 3),  # evidence that does not hold in every pair keeps fp32
])
def test_amp_auto_decides_on_interleaved_repeats_with_a_margin(monkeypatch, case, expected, pairs):
    seconds = {
        "busy moment": lambda d, k: 1.0 if d == "bfloat16" else (3.0 if k == 1 else 0.5),
        "bf16 barely faster": lambda d, k: 0.95 if d == "bfloat16" else 1.0,
        "bf16 emulated": lambda d, k: 4.0 if d == "bfloat16" else 0.5,
        "bf16 clearly faster": lambda d, k: 0.5 if d == "bfloat16" else 1.0,
        "bf16 faster, one busy bf16 step": lambda d, k: (2.0 if k == 3 else 0.5) if d == "bfloat16" else 1.0,
    }[case]
    dtype, reason, steps = _timed_choice(monkeypatch, seconds)
    assert dtype == expected, reason
    # a warm-up pair, then the timed pairs, the dtype that goes first alternating
    order = [("float32", "bfloat16"), ("bfloat16", "float32")]
    assert steps == [d for i in range(1 + pairs) for d in order[i % 2]], steps
    assert f"in {pairs} interleaved repeat{'s' * (pairs > 1)};" in reason
    if case == "bf16 emulated":
        assert "bf16 128 tokens/s, fp32 1,024 tokens/s -> float32 (bf16 0.12x fp32 in 1 interleaved repeat;" in reason


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
