"""Prefix generation evaluation on a tiny model trained here: files, metrics, seeds, cache parity."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.prepare import prepare
from codonlm.errors import UserError
from codonlm.evaluate.generation import (
    SAMPLE_COLUMNS,
    SUMMARY_COLUMNS,
    run_prefix_generation,
)
from codonlm.evaluate.sampling import generate
from codonlm.model.load import load_model
from codonlm.train.loop import train

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "prompt_codons": 5,
    "per_genome": 4,
    "temperatures": (0.8, 1.2),
    "max_codons": 90,
    "show_progress": False,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_corpus, tiny_config):
    """A 2-genome fixture corpus and a 1-layer model trained for a few steps (a few seconds)."""
    tmp = tmp_path_factory.mktemp("genprefix")
    files, _ = make_corpus(tmp, n_genes=30)
    raw = tiny_config(tmp, files, epochs=1, max_steps=15)
    raw["data"]["test_frac"] = 0.2
    raw["model"].update(n_layer=1, dropout=0.0)
    cfg = parse_config(raw)
    prepare(cfg, show_progress=False)
    train(cfg, "tiny")
    return tmp, cfg


def _gen(run, out: str, **kw) -> dict:
    tmp, cfg = run
    return run_prefix_generation(
        "tiny", checkpoints_dir=cfg.outputs.out_dir, out_dir=str(tmp / out), **{**SMALL, **kw}
    )


def test_files_columns_and_metric_ranges(run):
    tmp, cfg = run
    result = _gen(run, "a")
    out = tmp / "a"
    for name in ("samples.csv", "summary.csv", "summary.json", "temperature_tradeoff.png"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("*.tmp"))
    samples, summary = pd.read_csv(out / "samples.csv"), pd.read_csv(out / "summary.csv")
    assert list(samples.columns) == SAMPLE_COLUMNS and list(summary.columns) == SUMMARY_COLUMNS
    assert set(samples["temperature"].astype(str)) == {"real", "0.8", "1.2"}
    gen = samples[samples["temperature"].astype(str) != "real"]
    assert len(gen) == 2 * len(samples[samples["temperature"] == "real"]) > 0
    assert (gen["length_ratio"] > 0).all() and (gen["gen_codons"] >= 5).all()
    assert (gen["gen_codons"] <= np.minimum(90, np.ceil(2 * gen["real_codons"]))).all()  # the cap holds
    assert set(gen["ended_by"]) <= {"eos", "cap"}
    assert all(len(d) == 3 * n for d, n in zip(gen["dna"], gen["gen_codons"], strict=True))
    # the prompt is the real gene's first codons
    real = samples[samples["temperature"] == "real"].set_index(["genome", "gene"])["dna"]
    assert all(
        d[:15] == real[(g, n)][:15] for g, n, d in zip(gen["genome"], gen["gene"], gen["dna"], strict=True)
    )
    assert gen[["gc", "gc3", "cai", "nearest_identity"]].apply(lambda c: c.between(0, 1)).all().all()
    assert gen["enc"].between(20, 61.01).all()

    assert set(summary["genome"]) == {"ds0", "ds1", "all"}
    real_rows = summary[summary["temperature"] == "real"]
    assert len(real_rows) == 3 and (real_rows["length_ratio_mean"] == 1).all()
    assert (real_rows["frac_valid_orf"] == 1).all()  # prepare kept only valid CDS
    fracs = [c for c in SUMMARY_COLUMNS if c.startswith("frac_")]
    assert summary[fracs].apply(lambda c: c.between(0, 1)).all().all()
    for col in ("codon_js", "codon_js_floor", "aa_js", "aa_js_floor", "codon_kl"):
        assert (summary[col] >= 0).all() and summary[col].notna().all(), col
    assert (summary["codon_js"] <= 1).all()
    assert result["n_prompts"] == len(real) and result["settings"]["temperatures"] == [0.8, 1.2]


def test_same_seed_same_samples_other_seed_differs(run):
    tmp, _ = run
    _gen(run, "s1", seed=5)
    _gen(run, "s2", seed=5)
    _gen(run, "s3", seed=6)
    a, b, c = ((tmp / s / "samples.csv").read_text() for s in ("s1", "s2", "s3"))
    assert a == b and a != c


def test_end_at_stop_leaves_no_internal_stop(run):
    tmp, _ = run
    _gen(run, "stop", end_at_stop=True, temperatures=(1.0,))
    gen = pd.read_csv(tmp / "stop" / "samples.csv").query("temperature != 'real'")
    assert set(gen["ended_by"]) <= {"eos", "stop", "cap"} and (gen["internal_stops"] == 0).all()
    assert (gen["ends_with_stop"] == (gen["ended_by"] == "stop")).all()


def test_sampling_is_seeded_and_respects_budgets(run):
    """TinyGPT.extend itself is checked against the full forward in tests/test_model.py."""
    tmp, cfg = run
    model, _, _ = load_model("tiny", cfg.outputs.out_dir)
    prompts = [np.array([1, 10, 20, 30], np.uint8)] * 3
    a = generate(model, prompts, 40, temperature=1.0, seed=3)
    b = generate(model, prompts, 40, temperature=1.0, seed=3)
    assert [o.tolist() for o in a] == [o.tolist() for o in b]
    c = generate(model, prompts, 40, temperature=1.0, seed=4)
    assert [o.tolist() for o in a] != [o.tolist() for o in c]
    # past the block the cache is rebuilt; lengths still respect each row's budget
    long = generate(model, prompts, [150, 70, 1], temperature=1.0, seed=3)
    assert [len(x) - 4 for x in long][2] == 1 and all(
        len(x) - 4 <= b for x, b in zip(long, [150, 70, 1], strict=True)
    )


def test_user_errors(run, tmp_path, capsys):
    _, cfg = run
    with pytest.raises(UserError, match="unknown run id 'nope'.*; runs that exist: "):
        run_prefix_generation("nope", checkpoints_dir=str(tmp_path))
    with pytest.raises(UserError, match="temperatures"):
        run_prefix_generation("tiny", checkpoints_dir=cfg.outputs.out_dir, temperatures=(0.0,))
    with pytest.raises(UserError, match="prepared data not found"):
        run_prefix_generation(
            "tiny", checkpoints_dir=cfg.outputs.out_dir, processed_dir=str(tmp_path), **SMALL
        )
    assert main(["generate-prefix", "nope", "--checkpoints-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("codonlm generate-prefix: error: unknown run id 'nope'")


def test_script_runs(run, monkeypatch, capsys):
    tmp, cfg = run
    argv = ["eval_generation_prefix.py", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--prompt-codons", "5",
            "--per-genome", "2", "--temperatures", "1.0", "--max-codons", "40", "--out-dir", str(tmp / "cli"),
            "--quiet"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "scripts" / "eval_generation_prefix.py"), run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "T=1.0: valid ORF" in out and (tmp / "cli" / "summary.csv").is_file()
    cap = pd.read_csv(tmp / "cli" / "summary.csv").query("genome == 'all' and temperature == '1.0'").frac_hit_cap.iloc[0]
    assert f"hit length cap {cap:.3f}" in out  # beside valid ORF: why a low valid-ORF share is low
