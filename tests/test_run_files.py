"""Commands find a run's files from its own recorded config, list the runs that exist for an unknown id,
and never use a diverged (NaN/inf) model or report a NaN/inf result with exit 0 (issue 18, items 2, 4, 11).

One study is trained from a config with a custom outputs.out_dir, in a folder laid out like the
repository (runs/ under the working directory), with the command line, as a user would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.prepare import prepare
from codonlm.headlines import headline_lines
from codonlm.model.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
RUN = "custom"
CKPTS = Path("elsewhere/ckpts")  # the config's outputs.out_dir, relative to the study folder


@pytest.fixture(scope="module")
def study(tmp_path_factory, make_corpus, tiny_config, write_config) -> Path:
    folder = tmp_path_factory.mktemp("study")
    files, _ = make_corpus(folder, n_genes=40)
    raw = tiny_config(folder, files, epochs=1, max_steps=6)
    raw["model"]["dropout"] = 0.0
    raw["outputs"].update(runs_dir="runs", out_dir=str(CKPTS), scores_dir="elsewhere/scores")
    cfg_path = write_config(folder / "study.yaml", raw)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("CODONLM_QUIET", "1")
        prepare(parse_config(raw), show_progress=False)
        assert main(["train", "-c", str(cfg_path), "--run-id", RUN]) == 0
    return folder


@pytest.fixture
def at(study, monkeypatch, tmp_path) -> Path:
    """In the study folder (like ./main.sh at the repository root); a FASTA of two genes in tmp_path."""
    monkeypatch.chdir(study)
    monkeypatch.setenv("CODONLM_QUIET", "1")
    (tmp_path / "genes.fasta").write_text(">a\nATGAAAGCTGGTTAA\n>b\nATGCCCGATTGA\n")
    return study


def _copy_run(name: str, weights=None, drop_best: bool = False) -> Path:
    """Another run of the study: its run folder and checkpoints, each weight tensor replaced by
    `weights(name, tensor)`."""
    if not Path("runs", name).exists():  # the run folder's records (config.yaml, ...), not what stages wrote
        shutil.copytree(Path("runs", RUN), Path("runs", name), ignore=lambda d, names: [
            n for n in names if (Path(d) / n).is_dir() or n.endswith((".txt", ".html"))])
        for ckpt in ("best.pt", "last.pt"):
            if ckpt == "best.pt" and drop_best:
                continue
            state = load_checkpoint(CKPTS / RUN / ckpt)
            state["run_id"] = name
            if weights is not None:
                state["model"] = {k: weights(k, v) if v.is_floating_point() else v for k, v in state["model"].items()}
            save_checkpoint(CKPTS / name / ckpt, state)
    return CKPTS / name


def _commands(run: str, tmp: Path) -> list[list[str]]:
    """Every command that reads a trained run, given run id `run`."""
    fasta = str(tmp / "genes.fasta")
    return [
        ["query", run, "--mode", "next", "--dna", "ATGAAAGCT"],
        ["query", run, "--mode", "score", "--dna", "ATGAAAGCTTAA"],
        ["eval-perplexity", run, "--fasta", fasta],
        ["evaluate", run, "--out-dir", str(tmp / "evaluate")],
        ["export-hf", run, str(tmp / "hf")],
        ["extract-embeddings", "--run-id", run, "--fasta", fasta, "--out", str(tmp / "emb.npz"), "--quiet"],
        ["generate-prefix", run, "--per-genome", "2", "--temperatures", "1.0", "--max-codons", "12",
         "--out-dir", str(tmp / "gen"), "--quiet"],
        ["analyze", run, "--steps", "summary", "--quiet"],
        ["bundle", run, "--out-dir", str(tmp / "share")],
    ]


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], (argv, code, err)
    return err[0]


def test_every_command_finds_the_run_from_its_recorded_config(at, capsys, tmp_path):
    assert not Path("outputs").exists()  # the checkpoints are only where the run's config put them
    for argv in _commands(RUN, tmp_path):
        assert main(argv) == 0, (argv, capsys.readouterr().err[-2000:])
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "evaluate" / "metrics.json").is_file()
    assert (tmp_path / "share" / f"{RUN}.tar.gz").is_file() and (tmp_path / "emb.npz").is_file()


def test_an_unknown_run_id_lists_the_runs_that_exist_in_every_command(at, capsys, tmp_path):
    stage2 = ["stage2", "nope", "--configs-dir", str(REPO / "configs" / "classifier"), "--quiet"]
    for argv in [*_commands("nope", tmp_path), stage2]:
        line = _one_line_error(capsys, argv)
        assert "unknown run id 'nope'" in line and f"runs that exist: {RUN}" in line, (argv, line)


def test_a_diverged_run_is_refused_with_what_to_do(at, capsys, tmp_path):
    """Issue 18: no best.pt and a last.pt with NaN weights; query printed 'GCG nan' and evaluate
    'perplexity inf', both with exit 0."""
    folder = _copy_run("diverged", weights=lambda k, w: torch.full_like(w, float("nan")), drop_best=True)
    for argv in _commands("diverged", tmp_path):
        line = _one_line_error(capsys, argv)
        assert "run 'diverged' has no best.pt" in line and "NaN/inf weights" in line, (argv, line)
        assert "the training diverged" in line and "lower train.lr (now 0.003)" in line, (argv, line)
    for argv in (["query", str(folder / "last.pt"), "--dna", "ATGAAA"],  # the checkpoint named directly
                 ["eval-perplexity", str(folder / "last.pt"), "--fasta", str(tmp_path / "genes.fasta")]):
        line = _one_line_error(capsys, argv)
        assert line.startswith(f"codonlm {argv[0]}: error: {folder / 'last.pt'} (step 6) holds NaN/inf weights")
    assert not (tmp_path / "evaluate").exists() and not (tmp_path / "hf").exists()
    assert not (Path("runs") / "diverged" / "analysis").exists()


def test_a_run_stopped_before_an_epoch_ended_says_how_to_continue(at, capsys, tmp_path):
    folder = _copy_run("halfway", drop_best=True)
    line = _one_line_error(capsys, ["query", "halfway", "--dna", "ATGAAA"])
    assert "run 'halfway' has no best.pt: its training stopped at step 6" in line
    assert f"'codonlm train -r {folder / 'last.pt'}'" in line
    assert main(["query", str(folder / "last.pt"), "--dna", "ATGAAA"]) == 0  # named directly, it is used


def test_finite_weights_that_overflow_give_no_result(at, capsys, tmp_path):
    """Finite weights whose products overflow (the final norm's gain near the float32 maximum): the logits
    are inf, the probabilities NaN."""
    _copy_run("overflow", weights=lambda k, w: torch.full_like(w, 3e38) if k == "ln_f.weight" else w)
    for argv in _commands("overflow", tmp_path)[:4]:  # query next, query score, eval-perplexity, evaluate
        line = _one_line_error(capsys, argv)
        assert "came out NaN/inf" in line and "lower train.lr" in line, (argv, line)
    assert not (tmp_path / "evaluate").exists()  # nothing written


def test_report_says_how_many_steps_the_model_trained(at):
    """Issue 18 item 4: the report said '1 epoch(s)' for a run stopped by its step budget."""
    from codonlm.analysis.report import config_part

    text = config_part(Path("runs") / RUN, {})
    assert "6 steps (0.16 of an epoch)" in text and "epoch(s)" not in text


def test_closing_summary_lists_only_the_checkpoints_that_exist(tmp_path):
    def model_line(checkpoints: Path) -> str:
        lines = headline_lines("r1", tmp_path / "runs" / "r1", checkpoints, tmp_path / "scores", tmp_path / "reports")
        return next(line for line in lines if line.lstrip().startswith("model"))

    ckpt = tmp_path / "ckpt" / "r1"
    assert "no checkpoint yet" in model_line(ckpt) and "best.pt" not in model_line(ckpt)
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(b"x")
    assert f"{ckpt / 'last.pt'} only, no best.pt" in model_line(ckpt)
    (ckpt / "best.pt").write_bytes(b"x")
    assert model_line(ckpt).endswith(f"{ckpt / 'best.pt'} (last.pt to resume)")


def test_latest_finds_the_newest_run_under_the_runs_dir_wherever_its_checkpoints_are(at, capsys):
    """`latest` looked only under outputs/checkpoints: a run trained with a custom outputs.out_dir was 'no
    trained run' (session 24, leftover)."""
    from codonlm.runid import latest_run

    _copy_run("newest")  # its checkpoints written last: the latest trained run
    assert not Path("outputs").exists()
    assert latest_run() == "newest"
    assert main(["analyze", "--steps", "summary", "--quiet"]) == 0, capsys.readouterr().err[-2000:]
    captured = capsys.readouterr()
    assert "[analyze] run newest (the latest trained run)" in captured.out + captured.err
    assert Path("runs", "newest", "analysis").is_dir()


def test_a_run_folder_without_its_config_says_so_and_what_to_do(at, capsys, tmp_path):
    """It said "unknown run id 'x' ...; runs that exist: ..., x": the run exists, its config.yaml is gone."""
    _copy_run("noconfig")
    Path("runs", "noconfig", "config.yaml").unlink()
    line = _one_line_error(capsys, ["query", "noconfig", "--dna", "ATGAAAGCT"])
    assert "unknown run id" not in line and "runs/noconfig lacks its config.yaml" in line, line
    assert "--checkpoints-dir" in line, line
    assert main(["query", "noconfig", "--dna", "ATGAAAGCT", "--checkpoints-dir", str(CKPTS)]) == 0


def test_stage2_takes_a_runs_dir_like_the_other_commands(at, capsys, tmp_path):
    (tmp_path / "other_runs" / "only_here").mkdir(parents=True)
    stage2 = ["stage2", "nope", "--configs-dir", str(REPO / "configs" / "classifier"), "--quiet"]
    line = _one_line_error(capsys, [*stage2, "--runs-dir", str(tmp_path / "other_runs")])
    assert "unknown run id 'nope'" in line and "runs that exist: only_here" in line, line
