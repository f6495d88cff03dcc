"""The docs cannot drift: every command written in the manual (docs/MANUAL.md, a copy of the spec) and in
README's bash blocks runs, as written, against one tiny fixture run.

The commands are read from the docs, not listed here. They run in the workspace of the fixture study
(conftest.fixture_study, shared with tests/test_faults.py): a scratch copy of the repository (the code
linked, data/, outputs/ and runs/ its own) with the repository root and .venv/bin first on PATH, a
two-genome fixture corpus in data/raw/ and CODONLM_CONFIG_OVERRIDES shrinking whatever config a command
loads to a 2-layer model trained for a few steps on that corpus; `RUN_ID`/`<RUN_ID>` stand for the run
that the study's `./main.sh -c configs/tiny_mps.yaml` made. A command the test cannot run is in NOT_RUN with the
reason; anything else the docs write runs and must exit 0. Also checked against that run: every path the
manual names, the curves columns it gives, README's outputs map (both ways) and its config reference.
"""

from __future__ import annotations

import fnmatch
import json
import re
import resource
import shlex
import time
from functools import cache
from pathlib import Path

import pytest
import yaml

from codonlm.config import OVERRIDES_ENV, load_config
from codonlm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MANUAL = REPO / "docs" / "MANUAL.md"
README = REPO / "README.md"
QUICK_START = "./main.sh -c configs/tiny_mps.yaml"
"""The manual's one-shot pipeline: it makes the run every other command works on."""

NOT_RUN = {  # documented commands this test cannot run (matched by prefix), and why
    "conda activate codonlm": "the manual's environment; .venv (made by ./main.sh) stands in for it, see README",
    "torchrun --nnodes 2": "needs two machines; the same c10d rendezvous on 127.0.0.1 is tests/test_distributed.py",
}
# The manual's inputs, which a user supplies: placeholder -> what the fixture gives.
GENE = "ATGAAACGCATTAGCACCACCATTACCACCACCATCACCATTACCACAGGTAACGGTGCGGGCTGA"  # E. coli thrL
PLACEHOLDERS = {"ATG...": GENE, "<NPZ>": "outputs/reports/e1/train_embeddings.npz",
                "<CSV>": "data/my_labels.csv"}  # the labels the fixture study writes beside data/my.fasta
# Producers run before the commands that read what they write; commands that train a new run run last,
# so the latest trained run (./analysis.sh, post_process.sh without RUN_ID) is the fixture's.
FIRST = ("python -m scripts.extract_embeddings", "python -m scripts.train_classifier")
LAST = re.compile(r"train_codon_lm(\.py)? -c|^torchrun|torch\.distributed\.run")

_SH = r"(?:\./)?(?:main|analysis|post_process)\.sh"
_ARGS = r"(?: (?!or )(?!\()\S+)*"
MANUAL_COMMAND = re.compile(
    rf"(?:^|(?<=\s))(conda activate \S+|python (?:-m \S+|\S+\.py){_ARGS}|{_SH}(?: -\S*{_ARGS})?)(?=$| or | \()")
"""A command inside a manual line: `conda activate ENV`, `python -m MODULE ...` / `python FILE.py ...`,
`[./]main.sh|analysis.sh|post_process.sh [-flags ...]`, ending the line or followed by ' or ' or ' ('
(so prose such as "main.sh wraps all steps" is not a command)."""
SCRIPT_MENTION = re.compile(r"(?:scripts|src/codonlm)/[\w*]+\.?p?y?")


def manual_commands(text: str) -> list[str]:
    """Every command the manual writes, `a|b|c` alternatives expanded into one command each."""
    found = []
    for line in text.splitlines():
        for command in MANUAL_COMMAND.findall(line):
            alternatives = re.search(r"--mode (\S+\|\S+)", command)
            modes = alternatives.group(1).split("|") if alternatives else [None]
            found += [command.replace(alternatives.group(1), m) if m else command for m in modes]
    return found


def readme_commands(text: str) -> list[str]:
    """Every line of README's ```bash blocks, comments dropped."""
    blocks = re.findall(r"^ *```bash\n(.*?)^ *```", text, flags=re.S | re.M)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def manual_scripts(text: str) -> list[str]:
    """The scripts the manual names (scripts/analyze_* expanded over the repository's files)."""
    named = sorted({m.rstrip(".") for m in SCRIPT_MENTION.findall(text)})
    out = []
    for name in named:
        matches = sorted(str(p.relative_to(REPO)) for p in REPO.glob(name if name.endswith(".py") else name + ".py"))
        assert matches, f"the manual names {name}, which matches no file"
        out += matches
    return out


def not_run_reason(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


@cache
def documented() -> list[str]:
    """Manual commands, then README's, each once (`./x.sh` and `x.sh` are the same program here)."""
    seen, out = set(), []
    for command in manual_commands(MANUAL.read_text()) + readme_commands(README.read_text()):
        key = command.removeprefix("./")
        if key not in seen:
            seen.add(key)
            out.append(command)
    return out


def concrete(command: str, run_id: str) -> str:
    """The command with the docs' placeholders filled in from the fixture run."""
    command = command.replace("--resume ...", f"--resume outputs/checkpoints/{run_id}/last.pt")
    for placeholder, value in {**PLACEHOLDERS, "<RUN_ID>": run_id}.items():
        command = command.replace(placeholder, value)
    return re.sub(r"\bRUN_ID\b", run_id, command)


def run_order(command: str) -> int:
    return 0 if command.startswith(FIRST) else 2 if LAST.search(command) else 1


# --------------------------------------------------------------------------- the fixture run


@pytest.fixture(scope="module")
def docs_run(fixture_study):
    """The fixture run, then every other documented command in order: (workspace, run id, results)."""
    ws, run_id = fixture_study.ws, fixture_study.run_id
    assert fixture_study.command == QUICK_START
    results = {QUICK_START: fixture_study.result}
    with open(ws / "commands.log", "w", buffering=1) as timings:  # what ran, how long: for a slow or failed run
        for command in sorted((c for c in documented() if not not_run_reason(c)), key=run_order):
            command = concrete(command, run_id)
            if command.removeprefix("./") not in {c.removeprefix("./") for c in results}:
                cpu, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                results[command] = fixture_study.shell(command)
                used = resource.getrusage(resource.RUSAGE_CHILDREN)
                timings.write(f"{time.perf_counter() - t0:7.1f}s wall {used.ru_utime - cpu.ru_utime:7.1f}s CPU "
                              f"exit {results[command].returncode}  {command}\n")
    return ws, run_id, results


# --------------------------------------------------------------------------- tests


def test_manual_copy_equals_the_spec():
    spec = next((p / "shared" / "spec" / "MANUAL.md" for p in REPO.parents
                 if (p / "shared" / "spec" / "MANUAL.md").is_file()), None)
    if spec is None:
        pytest.skip("no ../shared/spec/MANUAL.md beside this checkout")
    assert MANUAL.read_text() == spec.read_text(), f"docs/MANUAL.md differs from {spec}: copy it again"


def test_the_extractor_finds_the_documented_commands():
    """Guards the extraction itself: commands known to be in the docs are found, prose is not, and every
    NOT_RUN entry still names a documented command."""
    manual = manual_commands(MANUAL.read_text())
    for expected in (QUICK_START, "./analysis.sh", "post_process.sh", "conda activate codonlm",
                     "python -m scripts.query_model <RUN_ID> --mode generate --dna ATG...",
                     "python -m scripts.train_classifier --config configs/classifier/probe_aa.yaml",
                     "main.sh -r outputs/checkpoints/<RUN_ID>/last.pt",
                     "python -m src.codonlm.train_codon_lm --resume ..."):
        assert expected in manual, (expected, manual)
    assert len(manual) == 12 and not any("wraps" in c for c in manual), manual
    readme = readme_commands(README.read_text())
    assert "./main.sh" in readme and QUICK_START in readme and len(readme) >= 30, readme
    for prefix in NOT_RUN:
        assert any(c.startswith(prefix) for c in documented()), f"NOT_RUN entry '{prefix}' matches no documented command"


def test_every_script_the_manual_names_is_run_by_a_documented_command():
    commands = [c for c in documented() if not not_run_reason(c)]
    for script in manual_scripts(MANUAL.read_text()):
        module = script.removesuffix(".py").replace("/", ".")
        assert any(script in c or module in c for c in commands), \
            f"the manual names {script}: add the command that runs it to a README bash block"


@pytest.mark.slow
def test_every_documented_command_runs(docs_run):
    _, run_id, results = docs_run
    failed = [f"$ {c}\n  exit {r.returncode}: {(r.stdout[-800:] + r.stderr[-1500:]).strip()}"
              for c, r in results.items() if r.returncode != 0 or "Traceback" in r.stderr]
    assert not failed, f"{len(failed)} of {len(results)} documented commands failed:\n" + "\n".join(failed)
    ran = {c.removeprefix("./") for c in results}
    for command in documented():  # each ran, or is in NOT_RUN (a command written twice ran once)
        assert not_run_reason(command) or concrete(command, run_id).removeprefix("./") in ran, command


@pytest.mark.slow
def test_paths_and_columns_the_manual_names_exist_after_the_run(docs_run):
    ws, run_id, _ = docs_run
    text = MANUAL.read_text()
    for path in sorted(set(re.findall(r"(?:runs|outputs|configs|data)/[\w<>/{},.-]*[\w>}]", text))):
        path = path.replace("<RUN_ID>", run_id)
        stem, braces = re.match(r"([^{]*)(?:\{(.*)\})?", path).groups()
        for name in (braces.split(",") if braces else [""]):
            target = ws / (stem + name)
            if target.suffix == ".pkl":  # README: we write skops, and .pkl resolves to the .skops beside it
                target = target.with_suffix(".skops")
            assert target.exists(), f"the manual names {path}: {target} is missing after the run"
    columns = re.search(r"curves\.csv with columns: (\S+)\.", text).group(1)
    curves = ws / "outputs" / "scores" / run_id / "curves.csv"
    assert curves.read_text().splitlines()[0] == columns


def _outputs_map() -> list[str]:
    section = README.read_text().split("## Outputs map", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([^`]+)`", section, flags=re.M)


def _as_globs(entry: str, run_id: str) -> list[str]:
    entry = re.sub(r"<(key|step|stage|task|dataset|part)>", "*", entry.replace("<RUN_ID>", run_id))
    stem, braces, tail = re.match(r"([^{]*)(?:\{([^}]*)\})?(.*)", entry).groups()
    return [stem + b + tail for b in (braces.split(",") if braces else [""])]


def _matches(path: str, pattern: str) -> bool:
    return fnmatch.fnmatch(path, pattern) or pattern.endswith("/") and path.startswith(pattern)


@pytest.mark.slow
def test_outputs_map_matches_the_files_a_run_writes(docs_run):
    ws, run_id, _ = docs_run
    entries = {e: _as_globs(e, run_id) for e in _outputs_map()}
    files = [p.relative_to(ws) for top in ("data", "runs", "outputs") for p in (ws / top).rglob("*") if p.is_file()]
    written = sorted(str(f) for f in files if run_id in f.parts or f.parts[:2] == ("data", "processed"))
    not_in_fixture = {"data/raw/manifest.json": "the fixture corpus is not fetched"}
    for entry, globs in entries.items():
        if entry not in not_in_fixture:
            assert any(_matches(f, g) for g in globs for f in written) or all((ws / g).exists() for g in globs), \
                f"outputs map: nothing matches {entry}"
    unmapped = [f for f in written if not any(_matches(f, g) for globs in entries.values() for g in globs)]
    assert not unmapped, f"files a run writes that README's outputs map does not list: {unmapped[:10]}"


@pytest.mark.slow
def test_the_run_records_its_overrides(docs_run):
    ws, run_id, _ = docs_run
    snapshot = yaml.safe_load((ws / "runs" / run_id / "config.yaml").read_text())
    assert snapshot["model"]["n_layer"] == 2 and snapshot["train"]["max_steps"] == 8
    provenance = json.loads((ws / "runs" / run_id / "provenance.json").read_text())
    assert provenance["config_overrides"]["path"] == str(ws / "overrides.yaml")
    assert provenance["config_overrides"]["merged"]["model"]["n_embd"] == 32


def test_overrides_merge_over_the_config_and_fail_in_one_line(tmp_path, monkeypatch):
    overrides = tmp_path / "o.yaml"
    overrides.write_text("train: {epochs: 1, lr: 0.01}\ndata: {datasets: [{name: x, gbff: x.gbk}]}\n")
    monkeypatch.setenv(OVERRIDES_ENV, str(overrides))
    cfg = load_config(REPO / "configs" / "tiny_mps.yaml")
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (1, 0.01, 32)  # merged, the rest kept
    assert [d.name for d in cfg.data.datasets] == ["x"]  # a list is replaced, not merged
    overrides.write_text("train: {epoch: 1}\n")
    with pytest.raises(UserError, match=rf"{OVERRIDES_ENV}=.*unknown config key 'train.epoch'; did you mean 'epochs'"):
        load_config(REPO / "configs" / "tiny_mps.yaml")
    monkeypatch.setenv(OVERRIDES_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(UserError, match=f"missing.yaml.*{OVERRIDES_ENV}"):
        load_config(REPO / "configs" / "tiny_mps.yaml")


def test_readme_config_reference_is_fresh():
    from codonlm.docs import REGENERATE, with_config_reference

    text = README.read_text()
    assert with_config_reference(text) == text, f"README's config reference is stale: run `{REGENERATE}`"
    assert "| `train.optimizer` |" in text and "| `data.datasets[].gbff` |" in text


def test_readme_shell_commands_split_cleanly():
    """Every README command is one shell command (no unbalanced quotes that would hide a second one)."""
    for command in readme_commands(README.read_text()):
        assert shlex.split(command), command
