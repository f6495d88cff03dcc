"""The whole study interrupted in each stage, then run again with the same command.

The fixture study (conftest.fixture_study: the manual's quick start on a two-genome fixture corpus, shared
with tests/test_docs_commands.py) is laid out again in a fresh workspace and goes through a chain of
invocations of the same command: the first is killed inside fetch-data, the next inside prepare, the next
inside train, ... inside report, and a last one finishes. Each kill comes from the test-only fault
injection (codonlm_faults, KILL_IN_STAGE_ENV: the process signals itself right after the stage's n-th file
write, so no timing races): SIGKILL for most stages, SIGINT (Ctrl-C) in train and analyze. After every
invocation: the stages finished before it were skipped (stamps and outputs not rewritten), the interrupted
stage of the previous invocation was redone (analyze: resumed at the interrupted step), the killed stage
has no stamp, and every stamped output still has the checksum its stamp records. At the end the outputs
equal those of the study's one uninterrupted run: the same files, byte for byte where the bytes are
deterministic (CSV, PNG, prepared NPZ), checkpoints tensor for tensor, and JSON files equal except for
timings.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from codonlm_faults import fault_env

from codonlm.analysis import STEPS
from codonlm.io import sha256_file
from codonlm.pipeline import STAGE_NAMES

KILLS = [  # (stage, the write after which the process signals itself, signal)
    ("fetch-data", 1, "KILL"),  # it writes nothing (the corpus is there): killed as its command returns
    ("prepare", 16, "KILL"),  # both datasets' parts published, the merged folder still in staging
    ("train", 3, "INT"),  # Ctrl-C at step 4 (its curves row), after the last.pt of step 3
    ("evaluate", 4, "KILL"),
    ("generate-prefix", 2, "KILL"),
    ("design", 1, "KILL"),  # designs.csv written, the summary and the stamp not
    ("analyze", 26, "INT"),  # Ctrl-C in step 4 of 7 (analyze_embeddings): steps 1-3 are kept
    ("stage2", 45, "KILL"),  # in the third task
    ("report", 1, "KILL"),  # report.html written, the stamp not
]
VOLATILE = re.compile(r"seconds|timings|_per_s|throughput|created|finished|checkpoint_sha256")
"""JSON keys that differ between two identical runs: timings, and the checkpoint's sha256 (a resumed run
saves the same tensors, compared one by one, in other bytes)."""
NONDETERMINISTIC = {".skops", ".html"}  # zip entry times; the report shows timings
STAGE2_NPZ = "outputs/reports/"  # stage-2 embedding NPZs are np.savez archives: zip entry times too


def _ctrl_c_as_in_a_terminal() -> None:
    """A command started in the background by a non-interactive shell inherits SIGINT ignored, and Python
    then ignores it too: give the pipeline the terminal's default, so SIGINT raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def pipeline(folder: Path, env: dict, run_id: str, kill: str | None = None) -> subprocess.CompletedProcess:
    """The same command every time: the study's `./main.sh -c configs/tiny_mps.yaml`, as `codonlm pipeline`
    (what ./main.sh runs) in the study's folder, on the study's run id."""
    return subprocess.run([sys.executable, "-m", "codonlm.cli", "pipeline", "-c", "configs/tiny_mps.yaml",
                           "--run-id", run_id], cwd=folder, env=fault_env(env, kill_in_stage=kill),
                          capture_output=True, text=True, timeout=1800, preexec_fn=_ctrl_c_as_in_a_terminal)


def stamps(folder: Path, run_id: str) -> dict[str, dict]:
    """stage -> its stamp, for the pipeline stages that have one."""
    stages = folder / "runs" / run_id / "stages"
    return {s: json.loads((stages / f"{s}.json").read_text()) for s in STAGE_NAMES if (stages / f"{s}.json").is_file()}


def fingerprint(folder: Path, run_id: str, stage: str) -> dict[str, tuple[int, str]]:
    """(mtime_ns, sha256) of a stage's stamp and of every output it records: what 'not redone' leaves alone."""
    stamp_file = folder / "runs" / run_id / "stages" / f"{stage}.json"
    files = [stamp_file] + [folder / p for p in json.loads(stamp_file.read_text())["outputs"]]
    return {str(f): (f.stat().st_mtime_ns, sha256_file(f)) for f in files}


def assert_outputs_intact(folder: Path, run_id: str) -> None:
    """Every output of every stamped stage is still exactly what its stamp records (nothing half-written)."""
    for stage, stamp in stamps(folder, run_id).items():
        for path, sha in stamp["outputs"].items():
            assert sha is not None and sha256_file(folder / path) == sha, f"{stage}: {path} changed or corrupt"


def analysis_steps(folder: Path, run_id: str) -> dict[str, dict[str, tuple[int, str]]]:
    """step -> (mtime_ns, sha256) of its stamp and files, for the analysis steps with a stamp."""
    run = folder / "runs" / run_id
    steps = [p.stem.removeprefix("analysis_") for p in sorted((run / "stages").glob("analysis_*.json"),
                                                              key=lambda p: p.stat().st_mtime_ns)]
    return {s: {str(f): (f.stat().st_mtime_ns, sha256_file(f))
                for f in [run / "stages" / f"analysis_{s}.json", *sorted((run / "analysis" / s).iterdir())]}
            for s in steps}


def banners(text: str) -> list[str]:
    """The stages this invocation ran ('=== [stage] <time>: codonlm ...')."""
    return re.findall(r"^=== \[([\w-]+)\] \d{4}-", text, flags=re.MULTILINE)


def without_volatile(obj):
    if isinstance(obj, dict):
        return {k: without_volatile(v) for k, v in obj.items() if not VOLATILE.search(k)}
    if isinstance(obj, list):
        return [without_volatile(v) for v in obj]
    return obj


def plain(obj):
    """A checkpoint as plain values (a resumed run's tensors may share storage differently: other bytes)."""
    import torch

    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return (str(obj.dtype), obj.tolist()) if isinstance(obj, torch.Tensor) else obj


def comparable(folder: Path, path: str) -> object:
    """What of an output file must equal the uninterrupted run's."""
    f = folder / path
    if f.suffix == ".pt":
        from codonlm.model.checkpoint import load_checkpoint

        return plain(load_checkpoint(f))
    if f.suffix == ".json":
        return without_volatile(json.loads(f.read_text()))
    if f.suffix in NONDETERMINISTIC or (f.suffix == ".npz" and path.startswith(STAGE2_NPZ)):
        return "exists"
    return sha256_file(f)


@pytest.mark.slow
def test_interrupted_in_every_stage_the_same_command_finishes_the_same_study(fixture_study, study_workspace, tmp_path):
    ref, run_id = fixture_study.reference, fixture_study.run_id
    assert banners(fixture_study.result.stdout) == STAGE_NAMES  # the reference: every stage, uninterrupted
    folder, env = study_workspace(tmp_path / "interrupted", fixture_study.corpus)
    killed_before: str | None = None
    kept: dict = {}  # the analysis steps done when analyze was interrupted
    for i, (stage, after, sig) in enumerate(KILLS):
        assert STAGE_NAMES[i] == stage  # one kill per stage, in pipeline order
        finished = {s: fingerprint(folder, run_id, s) for s in stamps(folder, run_id)}
        assert list(finished) == STAGE_NAMES[: max(i - 1, 0)]
        res = pipeline(folder, env, run_id, kill=f"{stage}:{after}:{sig}")
        log = res.stdout[-3000:] + res.stderr[-3000:]
        assert f"[test faults] SIG{sig} to this process in stage {stage}" in res.stdout, log
        if sig == "KILL":
            assert res.returncode == -signal.SIGKILL, log
        else:  # Ctrl-C: the stage is named as interrupted, the later ones not run, and the summary still closes
            assert res.returncode == 130, log
            assert f"codonlm {stage}: interrupted" in res.stderr, log
            assert re.search(rf"^    {stage}\s+failed .*exit 130$", res.stdout, flags=re.MULTILINE), log
        # not redone: the stages finished before were skipped, their stamps and outputs untouched
        assert {s: fingerprint(folder, run_id, s) for s in finished} == finished, log
        # the stage interrupted last time ran again (and finished), then this one was interrupted
        assert banners(res.stdout) == ([killed_before] if killed_before else []) + [stage], log
        assert list(stamps(folder, run_id)) == STAGE_NAMES[:i], log
        assert_outputs_intact(folder, run_id)
        if killed_before == "analyze":  # resumed: the steps done before the Ctrl-C were kept, the others ran
            now = analysis_steps(folder, run_id)
            assert len(now) == len(STEPS) and {s: now[s] for s in kept} == kept, log
            assert res.stdout.count("done before with the same checkpoint and settings; skipped") == len(kept), log
        if stage == "analyze":
            kept = analysis_steps(folder, run_id)
            assert list(kept) == ["summary", "probe_next_token", "probe_linear"], log
        killed_before = stage

    res = pipeline(folder, env, run_id)
    log = res.stdout[-3000:] + res.stderr[-3000:]
    assert res.returncode == 0, log
    assert banners(res.stdout) == ["report"], log
    summary = res.stdout[res.stdout.rindex("=== summary of run"):]
    assert summary.count("done before") == len(STAGE_NAMES) - 1 and "failed" not in summary, log
    assert_outputs_intact(folder, run_id)

    # the same study as the uninterrupted run, file for file
    got, want = stamps(folder, run_id), stamps(ref, run_id)
    for stage in STAGE_NAMES:
        assert got[stage]["inputs"]["options"] == want[stage]["inputs"]["options"]
        assert sorted(got[stage]["outputs"]) == sorted(want[stage]["outputs"]), stage  # no extra, no missing files
        for path in want[stage]["outputs"]:
            assert comparable(folder, path) == comparable(ref, path), f"{stage}: {path} differs"
    for stage in ("fetch-data", "prepare"):  # to the byte: the stages after them get the same inputs
        assert got[stage]["outputs"] == want[stage]["outputs"], stage
    assert got["train"]["inputs"] == want["train"]["inputs"]
    leftovers = [p for top in ("data", "runs", "outputs") for p in (folder / top).rglob(".*")
                 if p.name.startswith((".tmp", ".trash")) or ".tmp" in p.name]
    assert not leftovers, leftovers
