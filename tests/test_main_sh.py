"""./main.sh behaves like make, on a tiny config over a small fixture corpus.

One run is killed with SIGKILL in the middle of training (the trainer kills itself after step 20 of
30, two steps after its last checkpoint and just after a curves row) and ./main.sh run again finishes it with the same curves.csv as an
uninterrupted run; a ./main.sh on a finished run does no work; a config that differs only in the
optimizer gives a second run and leaves every file of the first byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from codonlm_faults import fault_env

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.pipeline import STAGE_NAMES
from codonlm.runid import make_run_id

REPO = Path(__file__).resolve().parents[1]
CORE = STAGE_NAMES[: STAGE_NAMES.index("generate-prefix") + 1]
"""The stages these tests run (analysis, stage 2 and the report have their own tests)."""
ONLY_CORE = ["--stages", ",".join(CORE)]


def main_sh(*args: str, kill_at_step: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "main.sh"), *args],
                          env=fault_env({**os.environ, "CODONLM_QUIET": "1"}, kill_at_step=kill_at_step),
                          capture_output=True, text=True, timeout=600)


def _files(cfg, run_id: str, skip_log: bool = False) -> dict[str, str]:
    o = cfg.outputs
    folders = [Path(o.runs_dir) / run_id, Path(o.out_dir) / run_id, Path(o.scores_dir) / run_id]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for f in folders for p in sorted(f.rglob("*")) if p.is_file() and not (skip_log and p.name == "log.txt")}


def _summary(text: str) -> dict[str, str]:
    """stage -> status, from the closing summary."""
    lines = text[text.rindex("=== summary of run"):].splitlines()[1:]
    return {line.split()[0]: line.split()[1] for line in lines if line.split() and line.split()[0] in CORE}


@pytest.fixture(scope="module")
def configs(tmp_path_factory, make_corpus, tiny_config, write_config):
    tmp = tmp_path_factory.mktemp("mainsh")
    files, _ = make_corpus(tmp, n_genes=20)
    raw = tiny_config(tmp, files, epochs=2, checkpoint_every=3, log_every=5, eval_every=10)  # 15 steps/epoch
    adamw = write_config(tmp / "adamw.yaml", raw)
    cfg = parse_config(raw)
    raw["train"].update(optimizer="adafactor", lr=1e-2)
    adafactor = write_config(tmp / "adafactor.yaml", raw)
    return adamw, adafactor, cfg


def test_main_sh_help_exits_0():
    res = subprocess.run([str(REPO / "main.sh"), "-h"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--run-id NAME" in res.stdout and "--stages LIST" in res.stdout


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_curves_and_rerun_does_no_work(configs, monkeypatch, capsys):
    adamw, _, cfg = configs
    stem = make_run_id(cfg)
    killed = main_sh("-c", str(adamw), *ONLY_CORE, kill_at_step="20")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    curves = Path(cfg.outputs.scores_dir) / stem / "curves.csv"
    assert curves.read_text().splitlines()[-1].startswith("20,")  # a row after the last checkpoint (at 18)

    again = main_sh("-c", str(adamw), *ONLY_CORE)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"=== codonlm run {stem} " in again.stdout  # the same run continued
    assert _summary(again.stdout) == {"fetch-data": "skipped", "prepare": "skipped", "train": "done",
                                      "evaluate": "done", "generate-prefix": "done"}
    assert "resumed from" in again.stdout and "at epoch 1, step 18" in again.stdout

    monkeypatch.setenv("CODONLM_QUIET", "1")
    assert main(["pipeline", "-c", str(adamw), "--fresh", *ONLY_CORE]) == 0  # the same config, uninterrupted
    straight = Path(cfg.outputs.scores_dir) / f"{stem}-2" / "curves.csv"
    assert curves.read_text() == straight.read_text()
    assert [line.split(",")[0] for line in curves.read_text().splitlines()[1:]] == ["5", "10", "15", "20", "25", "30"]
    evaluated = [Path(cfg.outputs.runs_dir) / r / "evaluate" / "summary.csv" for r in (stem, f"{stem}-2")]
    assert evaluated[0].read_bytes() == evaluated[1].read_bytes()

    before = _files(cfg, f"{stem}-2", skip_log=True)
    capsys.readouterr()
    assert main(["pipeline", "-c", str(adamw), *ONLY_CORE]) == 0  # continues the newest run: finished
    out = capsys.readouterr().out
    assert f"=== codonlm run {stem}-2 " in out and "=== [" not in out  # no stage ran
    assert set(_summary(out).values()) == {"skipped"} and out.count("done before") == len(CORE)
    assert _files(cfg, f"{stem}-2", skip_log=True) == before  # not even rewritten

    last = Path(cfg.outputs.out_dir) / stem / "last.pt"
    assert main(["pipeline", "-r", str(last), *ONLY_CORE]) == 0  # -r alone: that checkpoint's run, with its config
    out = capsys.readouterr().out
    assert f"=== codonlm run {stem} " in out and "differs" not in out and "tiny_cpu" not in out
    assert set(_summary(out).values()) == {"skipped"}

    log = (Path(cfg.outputs.runs_dir) / stem / "log.txt").read_text()
    assert "\r" not in log and "=== summary of run" in log
    assert not (REPO / "runs" / stem).exists()  # the log lives under outputs.runs_dir


@pytest.mark.slow
def test_another_optimizer_is_another_run_and_leaves_the_first_untouched(configs, monkeypatch):
    adamw, adafactor, cfg = configs
    monkeypatch.setenv("CODONLM_QUIET", "1")
    assert main(["pipeline", "-c", str(adamw), "--run-id", "ab-adamw", "--stages", "fetch-data,prepare,train"]) == 0
    first = _files(cfg, "ab-adamw")
    assert main(["pipeline", "-c", str(adafactor), "--stages", "fetch-data,prepare,train"]) == 0
    assert _files(cfg, "ab-adamw") == first
    runs = sorted(p.name for p in Path(cfg.outputs.out_dir).iterdir())
    adafactor_runs = [r for r in runs if (Path(cfg.outputs.runs_dir) / r / "config.yaml").is_file()
                      and "adafactor" in (Path(cfg.outputs.runs_dir) / r / "config.yaml").read_text()]
    assert len(adafactor_runs) == 1 and adafactor_runs[0] != "ab-adamw"


def test_stage_flags(configs, monkeypatch, capsys):
    adamw, adafactor, cfg = configs
    monkeypatch.setenv("CODONLM_QUIET", "1")
    capsys.readouterr()
    assert main(["pipeline", "-c", str(adamw), "--run-id", "flags", "--stages", "fetch-data,prepare"]) == 0
    out = capsys.readouterr().out
    assert _summary(out) == {"fetch-data": "done", "prepare": "done", "train": "skipped", "evaluate": "skipped",
                             "generate-prefix": "skipped"}
    assert "not selected (--stages)" in out and not (Path(cfg.outputs.out_dir) / "flags").exists()
    assert main(["pipeline", "-c", str(adamw), "--run-id", "flags", "--stages", "prepare", "--redo", "prepare"]) == 0
    assert _summary(capsys.readouterr().out)["prepare"] == "done"
    assert main(["pipeline", "-c", str(adamw), "--run-id", "flags", "--stages", "prepare"]) == 0
    assert _summary(capsys.readouterr().out)["prepare"] == "skipped"
    assert main(["pipeline", "-c", str(adamw), "--stages", "trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown stage 'trian'" in err[0], err
    assert main(["pipeline", "-c", str(adafactor), "--run-id", "flags"]) == 2  # made with another config
    assert "another config" in capsys.readouterr().err


def test_failed_stage_is_named_and_force_reaches_prepare(configs, monkeypatch, capsys, tmp_path, write_config):
    import yaml

    from codonlm.data import prepare as prepare_module

    adamw, _, cfg = configs
    raw = yaml.safe_load(adamw.read_text())
    raw["data"]["processed_dir"] = str(tmp_path / "processed")  # not prepared yet: the integrity check runs
    adamw = write_config(tmp_path / "adamw.yaml", raw)
    monkeypatch.setenv("CODONLM_QUIET", "1")
    real = prepare_module._integrity
    monkeypatch.setattr(prepare_module, "_integrity", lambda splits: {**real(splits), "ok": False})
    capsys.readouterr()
    assert main(["pipeline", "-c", str(adamw), "--run-id", "integrity", *ONLY_CORE]) == 2
    captured = capsys.readouterr()
    assert "integrity check failed" in captured.err and "--force" in captured.err
    assert _summary(captured.out) == {"fetch-data": "done", "prepare": "failed", "train": "not", "evaluate": "not",
                                      "generate-prefix": "not"}
    assert main(["pipeline", "-c", str(adamw), "--run-id", "integrity", "--force", "--stages", "prepare"]) == 0
    assert _summary(capsys.readouterr().out)["prepare"] == "done"
