"""The analysis framework and steps 1-3 (summary, probe_next_token, probe_linear) on a tiny run trained here;
the runner's stamps and 'not run' records; bad input; report.html rendered in headless Chromium; the bundle."""

from __future__ import annotations

import json
import math
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from codonlm.analysis import STEPS, probe_linear, probe_next_token, report, runner
from codonlm.analysis.context import load_context
from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.codons import CODON_OFFSET, CODONS, EOS, genetic_code
from codonlm.data.prepare import prepare
from codonlm.io import sha256_file
from codonlm.provenance import run_dir, snapshot
from codonlm.train.loop import train

REPO = Path(__file__).resolve().parents[1]
MINE = ["summary", "probe_next_token", "probe_linear"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_corpus, tiny_config):
    """Two fixture genomes (the first named like E. coli, for the Kazusa comparison), a 2-layer model
    trained for a few steps, and steps 1-3 analysed once."""
    tmp = tmp_path_factory.mktemp("analysis")
    files, _ = make_corpus(tmp, n_genes=30)
    raw = tiny_config(tmp, files, epochs=2, max_steps=20)
    raw["data"]["datasets"][0]["name"] = "ecoli_fixture"
    raw["data"]["test_frac"] = 0.25
    raw["model"].update(dropout=0.0)
    cfg = parse_config(raw)
    folder = run_dir(cfg, "tiny")
    prepare(cfg, run_dir=folder, show_progress=False)
    snapshot(cfg, folder)
    train(cfg, "tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CODONLM_TEED", "1")  # no tee of the test's stdout into the run log
        assert main(["analyze", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--steps", *MINE, "--quiet"]) == 0
        yield tmp, cfg, folder


def _summary(folder: Path, step: str) -> dict:
    return json.loads((folder / "analysis" / step / "summary.json").read_text())


def _walk(d, path=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, (*path, k))
        else:
            yield (*path, k), v


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_step_records_trained_and_random_init(run):
    _, _, folder = run
    for step in MINE:
        s = _summary(folder, step)
        assert s["status"] == "done" and s["reading"] and s["seconds"] >= 0
        paths = [p for p, _ in _walk(s)]
        assert any("trained" in p for p in paths) and any("random_init" in p for p in paths), step
        numbers = [v for _, v in _walk(s) if isinstance(v, float)]
        assert numbers and all(math.isfinite(v) for v in numbers), step
        assert (folder / "stages" / f"analysis_{step}.json").is_file()


def test_summary_step(run):
    _, cfg, folder = run
    out = folder / "analysis" / "summary"
    s = _summary(folder, "summary")
    for name in ("heldout.csv", "heldout.png", "curve.csv", "curve.png", "data.csv"):
        assert (out / name).stat().st_size > 0
    assert _png(out / "heldout.png") and _png(out / "curve.png")
    # `codonlm evaluate` has not run: the step says so and how to run it, and does not run it behind the user's back
    assert not (folder / "evaluate").exists()
    assert s["heldout"] is None and s["best_baseline"] is None
    assert s["reading"].startswith("held-out evaluation not run yet ('codonlm evaluate')")
    assert any(f"run 'codonlm evaluate tiny --checkpoints-dir {cfg.outputs.out_dir}'" in n for n in s["notes"])
    assert list(pd.read_csv(out / "heldout.csv")["model"].str.split(" ").str[0]) == ["TinyGPT", "random", "uniform"]
    ppl = s["perplexity"]
    assert 1 < ppl["trained"] < ppl["random_init"] < 80  # training helped; random init is near uniform (65)
    assert 0 <= s["top1_accuracy"]["trained"] <= 1 and 0 <= s["aa_accuracy"]["random_init"] <= 1
    data = pd.read_csv(out / "data.csv")
    assert list(data["genome"]) == ["ecoli_fixture", "ds1"] and (data["CDS kept"] == 30).all()
    curves = pd.read_csv(Path(cfg.outputs.scores_dir) / "tiny" / cfg.outputs.log_csv)
    assert s["curve"]["points"] == len(curves) >= 2 and s["data"]["cds_kept"] == 60


def test_rscu_of_known_counts():
    counts = np.zeros(64)
    lys = [CODONS.index("AAA"), CODONS.index("AAG")]
    counts[lys] = [30, 10]
    counts[CODONS.index("ATG")] = 7  # Met: one codon, no RSCU
    r = probe_next_token.rscu(counts, 11)
    np.testing.assert_allclose(r[lys], [1.5, 0.5])
    assert np.isnan(r[CODONS.index("ATG")]) and np.isnan(r[CODONS.index("TAA")])
    assert np.isnan(r[CODONS.index("GCA")])  # Ala never seen: undefined, not 0
    kazusa = probe_next_token.kazusa_rscu()
    aa = genetic_code(11).aa[CODON_OFFSET:]
    for letter in set(aa[np.isfinite(kazusa)].tolist()):  # RSCU averages 1 within each family
        assert abs(kazusa[aa == letter].mean() - 1) < 0.03
    assert np.isfinite(kazusa).sum() == 59  # 18 multi-codon amino acids, stops excluded
    assert probe_next_token.pearson(kazusa, kazusa) == pytest.approx(1.0)
    assert np.isnan(probe_next_token.pearson(r, r))  # two codons with a value: too few for a correlation


def test_probe_next_token_numbers(run):
    _, cfg, folder = run
    out = folder / "analysis" / "probe_next_token"
    s = _summary(folder, "probe_next_token")
    for name in ("rscu.csv", "rscu_r.csv", "rscu_cross.csv", "loss_split.csv", "eos.csv", "start_codons.csv"):
        assert (out / name).stat().st_size > 0
    for name in ("rscu.png", "rscu_cross.png", "loss_split.png", "eos_start.png"):
        assert _png(out / name)
    table = pd.read_csv(out / "rscu.csv")
    assert table.groupby("genome").size().tolist() == [64, 64]
    for lab in ("trained", "random_init"):
        for r in s["rscu_r_per_genome"][lab].values():
            assert -1 <= r <= 1
        assert s["aa_choice_nats"][lab] > 0 and s["synonymous_choice_nats"][lab] >= 0
        assert s["aa_choice_nats"][lab] + s["synonymous_choice_nats"][lab] == pytest.approx(s["loss_nats"][lab], abs=1e-6)
        assert 0 <= s["p_eos_after_stop"][lab] <= 1 and 0 <= s["p_eos_elsewhere"][lab] <= 1
        assert 0 <= s["p_start_codon_after_bos"][lab] <= 1 and 0 <= s["p_repeat_current_codon"][lab] <= 1
    assert set(s["rscu_r_kazusa_ecoli"]) == {"trained", "random_init", "genome_itself"}
    assert s["first_codon_atg_observed"] == 1.0  # every fixture gene starts with ATG
    # synonymous choice can never cost more than log(6) nats (the largest codon family) per codon on average
    assert s["synonymous_choice_nats"]["random_init"] < math.log(6)

    # independent check of the trained loss: a plain forward per gene over the same sample and targets
    ctx = load_context("tiny", cfg.outputs.out_dir)
    test = ctx.split("test")
    picked = ctx.sample_genes("test", probe_next_token.GENES_PER_GENOME, salt=2)
    nll, n = 0.0, 0
    with torch.no_grad():
        for g in picked:
            gene = torch.from_numpy(test.genes[g][: cfg.model.block_size + 1].astype(np.int64))[None]
            logp = torch.log_softmax(ctx.model(gene[:, :-1])[0].float(), -1)[0]
            target = gene[0, 1:]
            keep = target >= CODON_OFFSET
            nll -= logp[keep].gather(-1, target[keep, None]).sum().item()
            n += int(keep.sum())
    assert s["loss_nats"]["trained"] == pytest.approx(nll / n, rel=1e-4)
    eos = pd.read_csv(out / "eos.csv")
    assert (eos["stops"] == sum(len(test.genes[g]) <= cfg.model.block_size + 1 for g in picked)).all()
    assert test.genes[picked[0]][-1] == EOS


def test_probe_linear_numbers(run):
    _, cfg, folder = run
    out = folder / "analysis" / "probe_linear"
    s = _summary(folder, "probe_linear")
    table = pd.read_csv(out / "accuracy_by_layer.csv")
    assert _png(out / "accuracy_by_layer.png")
    assert set(table.task) == set(probe_linear.TASKS)
    assert set(table.model) == {"trained", "random_init", "control_task"}
    assert sorted(table.layer.unique()) == list(range(cfg.model.n_layer + 1))
    assert table.accuracy.between(0, 1).all() and table.majority.between(0, 1).all()
    for task, by_layer in s["accuracy_by_layer"].items():
        assert len(by_layer["trained"]) == len(by_layer["random_init"]) == cfg.model.n_layer + 1, task
    # the embedding identifies the codon, so a linear read-out of its amino acid is near perfect
    # even at random init: the control that shows what is free
    assert s["best_layer_accuracy"]["current_aa"]["random_init"] > 0.8
    assert s["majority_class"]["genome"] >= 0.5  # two genomes
    assert s["probe_test_positions"] < s["positions"]
    assert all(0 <= v <= 1 for v in s["model_own_next_aa_accuracy"].values())


def test_probe_positions_split_by_gene_and_seeded(run):
    _, cfg, _ = run
    ctx = load_context("tiny", cfg.outputs.out_dir)
    test = ctx.split("test")
    picked = ctx.sample_genes("test", probe_linear.GENES_PER_GENOME, salt=3)
    genes, genome = [test.genes[g] for g in picked], test.groups[picked].astype(np.int64)
    a = probe_linear.sample_positions(ctx, genes, genome)
    b = probe_linear.sample_positions(ctx, genes, genome)
    np.testing.assert_array_equal(a.position, b.position)
    for g in np.unique(a.gene):  # a gene is all probe-train or all probe-test
        assert np.unique(a.is_test[a.gene == g]).size == 1
    assert all(1 <= t <= min(len(genes[g]) - 2, cfg.model.block_size - 1) for g, t in zip(a.gene, a.position, strict=True))
    feats, predicted = probe_linear.residual_features(ctx, ctx.model, genes, a, "trained")
    assert predicted.shape == a.position.shape and ((predicted >= 0) & (predicted < 68)).all()
    # the features are the residual stream at those positions: check one against a lone forward
    g, t = int(a.gene[5]), int(a.position[5])
    _, cache = ctx.model.run_with_cache(torch.from_numpy(genes[g][: cfg.model.block_size].astype(np.int64))[None],
                                        names_filter=["blocks.1.hook_resid_post"])
    np.testing.assert_allclose(feats[2, 5], cache["blocks.1.hook_resid_post"][0, t].numpy(), atol=1e-4)


def _evaluated(cfg) -> None:
    """`codonlm evaluate` on the fixture run (once)."""
    if not (Path(cfg.outputs.runs_dir) / "tiny" / "evaluate" / "metrics.json").is_file():
        assert main(["evaluate", "tiny", "--checkpoints-dir", cfg.outputs.out_dir]) == 0


def test_summary_reads_the_evaluation_once_it_has_run(run, capsys):
    _, cfg, folder = run
    _evaluated(cfg)
    capsys.readouterr()
    assert main(["analyze", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--steps", "summary", "--quiet"]) == 0
    assert "summary: running" in capsys.readouterr().out  # no --force: the evaluation is one of its inputs
    s = _summary(folder, "summary")
    metrics = json.loads((folder / "evaluate" / "metrics.json").read_text())
    assert s["heldout"]["source"] == f"read {folder / 'evaluate' / 'metrics.json'}" and not s["notes"]
    assert s["heldout"]["perplexity"] == metrics["model"]["perplexity"]
    assert s["best_baseline"]["name"] == metrics["best_baseline"] and s["reading"].startswith("held-out perplexity")
    rows = list(pd.read_csv(folder / "analysis" / "summary" / "heldout.csv")["model"])
    assert rows[0].startswith("TinyGPT (all") and sum(r.startswith("baseline: ") for r in rows) == len(metrics["baselines"])


def test_rerun_skips_finished_steps_and_force_reruns(run, capsys):
    _, cfg, folder = run
    _evaluated(cfg)
    assert main(["analyze", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--steps", "summary", "--quiet"]) == 0
    capsys.readouterr()  # the step is now up to date with the evaluation
    path = folder / "analysis" / "summary" / "summary.json"
    before = path.stat().st_mtime_ns
    assert main(["analyze", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--steps", "summary", "--quiet"]) == 0
    assert "skipped" in capsys.readouterr().out and path.stat().st_mtime_ns == before
    assert main(["analyze", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--steps", "summary", "--force",
                 "--quiet"]) == 0
    assert path.stat().st_mtime_ns > before
    assert _summary(folder, "summary")["heldout"]["source"].startswith("read")  # evaluate/ exists now


def test_missing_module_and_missing_inputs_are_recorded(run, monkeypatch, capsys):
    tmp, cfg, folder = run
    monkeypatch.setattr(runner, "STEPS", (*STEPS, "analyze_sae"))
    assert main(["analyze", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--steps", "analyze_sae"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "analyze_sae" in err[0] and "not in this version" in err[0]
    assert _summary(folder, "analyze_sae")["status"] == "not run"

    processed = Path(cfg.data.processed_dir)
    hidden = processed.with_name("processed_hidden")
    processed.rename(hidden)
    try:
        code = main(["analyze", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--steps", "probe_linear",
                     "--force", "--quiet"])
    finally:
        hidden.rename(processed)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "prepared data not found" in err[0] and "Traceback" not in err[0]
    s = _summary(folder, "probe_linear")
    assert s["status"] == "not run" and "codonlm prepare" in s["reason"]
    page = report.render_report("tiny", folder, tmp / "reports")
    assert "not run: prepared data not found" in page
    assert main(["analyze", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--steps", "probe_linear",
                 "--quiet"]) == 0  # inputs back: it runs again (a 'not run' record is never 'done')
    assert _summary(folder, "probe_linear")["status"] == "done"


def test_bad_input_one_line_exit_2(run, tmp_path, capsys):
    _, cfg, folder = run
    ckpts = cfg.outputs.out_dir
    cases = [
        (["analyze", "nope", "--checkpoints-dir", ckpts, "--runs-dir", str(folder.parent)], "runs that exist: tiny"),
        (["analyze", "tiny", "--checkpoints-dir", ckpts, "--steps", "probe_everything"], "steps: summary"),
        (["report", "nope", "--runs-dir", str(folder.parent)], "runs that exist: tiny"),
        (["bundle", "nope", "--checkpoints-dir", ckpts, "--runs-dir", str(folder.parent)], "runs that exist: tiny"),
    ]
    no_best = tmp_path / "ckpt" / "halfway"
    no_best.mkdir(parents=True)
    shutil.copy(Path(ckpts) / "tiny" / "last.pt", no_best / "last.pt")
    cases.append((["analyze", "halfway", "--checkpoints-dir", str(tmp_path / "ckpt")], "codonlm train"))
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], (argv, err)
    empty = tmp_path / "no_runs"
    for script in ("analysis.sh", "post_process.sh"):  # no RUN_ID: the latest trained run, and there is none
        done = subprocess.run([str(REPO / script), "--checkpoints-dir", str(empty)], capture_output=True, text=True,
                              timeout=60)
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(err) == 1 and f"no trained run under {empty}" in err[0], done.stderr


def test_script_runs_its_step(run, monkeypatch, capsys):
    _, cfg, _ = run
    monkeypatch.setattr(sys, "argv", ["probe_linear.py", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--quiet"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "scripts" / "probe_linear.py"), run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "probe_linear" in out and "probe_next_token" not in out


# --------------------------------------------------------------------------- report + bundle


def _stage2_fixture(reports: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = reports / "tiny" / "stage2"
    folder.mkdir(parents=True)
    m = {"accuracy": 0.81, "accuracy_ci": [0.75, 0.86], "macro_f1": 0.79, "macro_f1_ci": [0.72, 0.84], "roc_auc": 0.9}
    (folder / "summary.json").write_text(json.dumps({
        "tasks": {"genome_of_origin": {"description": "which genome a gene comes from", "n_train": 120,
                                       "n_test": 40, "classes": ["a", "b"], "models": {"probe_logreg": m}}},
        "protocols": {"TSTR": {"probe_logreg": m}}, "embedding": {"dim": 32, "pooling": "mean"}}))
    fig, ax = plt.subplots()
    ax.bar(["probe", "kmer"], [0.8, 0.7])
    fig.savefig(folder / "compare.png")
    plt.close(fig)


def _chromium() -> str:
    """Debian's chromium; installed here when missing (run_tests.sh installs it for CI)."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed and could not be installed (run ./run_tests.sh as root)")
    return found


def _headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_offline_in_chromium(run, tmp_path):
    tmp, _, folder = run
    reports = tmp / "reports"
    _stage2_fixture(reports)
    assert main(["report", "tiny", "--runs-dir", str(folder.parent), "--reports-dir", str(reports)]) == 0
    page_path = folder / "report.html"
    page = page_path.read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert page.count("data:image/png;base64,") >= 8

    browser = _chromium()
    dom = _headless(browser, tmp_path / "profile1", "--dump-dom", page_path.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for section in ("run", *STEPS, "stage2"):
        assert f'<section id="{section}">' in html, section
    assert "Held-out evaluation" in html and "genome_of_origin" in html and "TSTR" in html
    assert "not run yet: <code>codonlm generate-prefix tiny</code>" in html  # no generation in this run
    for step in STEPS:
        if step not in MINE:  # steps 4-6 were not run here: the page says so and how to run them
            assert f"--steps {step}</code>" in html
    for step in MINE:
        assert _summary(folder, step)["reading"].split(";")[0].replace("<", "&lt;").replace(">", "&gt;") in html

    shot = tmp_path / "shot.png"
    done = _headless(browser, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,3000",
                     page_path.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.std() > 0.1  # not a blank page
    assert (pixels.mean(-1) < 0.9).mean() > 0.05  # text, tables and figures cover part of it


def test_bundle_gathers_run_with_checksums(run):
    tmp, cfg, folder = run
    out = tmp / "share"
    assert main(["bundle", "tiny", "--checkpoints-dir", cfg.outputs.out_dir, "--out-dir", str(out),
                 "--reports-dir", str(tmp / "reports")]) == 0
    bundle = out / "tiny"
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = {e["path"]: e for e in manifest["files"]}
    for name in ("config.yaml", "report.html", "pipeline_prepare.json", "evaluate/metrics.json",
                 "analysis/probe_linear/accuracy_by_layer.png", "scores/curves.csv", "hf_model/config.json"):
        assert name in listed, name
    for rel, e in listed.items():
        assert sha256_file(bundle / rel) == e["sha256"] and (bundle / rel).stat().st_size == e["bytes"]
    lines = (bundle / "MANIFEST.sha256").read_text().splitlines()
    assert len(lines) == len(listed) and all(len(line.split("  ")[0]) == 64 for line in lines)
    assert manifest["checkpoint_sha256"] == sha256_file(Path(cfg.outputs.out_dir) / "tiny" / "best.pt")
    with tarfile.open(out / "tiny.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"tiny/{rel}" for rel in listed} <= names and "tiny/MANIFEST.sha256" in names
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
