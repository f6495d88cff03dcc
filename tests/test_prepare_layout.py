"""Content-addressed prepared data: the key, no-op re-runs, run records, parallel workers, merges, faults."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data import layout, parts
from codonlm.data.layout import RUN_RECORD, data_key, key_dir, run_split_path
from codonlm.data.prepare import prepare
from codonlm.errors import UserError


@pytest.fixture(scope="session")
def raw_for(tiny_config):
    """`raw_for(root, datasets, **data) -> dict`: the tiny config with these dataset entries."""
    return lambda root, datasets, **data: tiny_config(root, [], data={"datasets": datasets, **data})


@pytest.fixture(scope="session")
def cfg_for(tiny_config):
    """`cfg_for(root, files, **data) -> Config`: the validated tiny config, one dataset a file."""
    return lambda root, files, **data: parse_config(tiny_config(root, files, data=data))


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.npz"))}


def _folder(cfg) -> Path:
    return key_dir(cfg.data.processed_dir, data_key(cfg).key)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_corpus) -> list[Path]:
    return make_corpus(tmp_path_factory.mktemp("layout"), n_genes=40)[0]


# --------------------------------------------------------------------------- the key


def _set(section: str, key: str, value):
    def change(raw: dict) -> None:
        raw[section][key] = value
    return change


def _dataset(key: str, value):
    def change(raw: dict) -> None:
        raw["data"]["datasets"][0][key] = value
    return change


CHANGES = {
    "block_size": _set("model", "block_size", 32),
    "pack_mode": _set("data", "pack_mode", "single"),
    "windows_per_seq": _set("data", "windows_per_seq", 2),
    "val_frac": _set("data", "val_frac", 0.1),
    "test_frac": _set("data", "test_frac", 0.2),
    "seed": lambda raw: raw.setdefault("outputs", {}).update(seed=7),
    "min_len": _dataset("min_len", 11),
    "transl_table": _dataset("transl_table", 4),
    "dataset name": _dataset("name", "renamed"),
    "dataset order": lambda raw: raw["data"]["datasets"].reverse(),
}


@pytest.mark.parametrize("field", list(CHANGES))
def test_key_changes_with_everything_that_decides_the_windows(corpus, tmp_path, field, tiny_config):
    raw = tiny_config(tmp_path, corpus)
    base = data_key(parse_config(raw))
    CHANGES[field](raw)
    other = data_key(parse_config(raw))
    assert other.key != base.key
    if field in ("min_len", "transl_table", "dataset name"):  # the first dataset's part changed, the other's not
        assert other.parts[0].key != base.parts[0].key and other.parts[1].key == base.parts[1].key
    elif field != "dataset order":  # settings of every dataset: every part changed
        assert all(a.key != b.key for a, b in zip(other.parts, base.parts, strict=True))
    else:  # the same parts, in another order
        assert [p.key for p in other.parts] == [p.key for p in reversed(base.parts)]


def test_key_follows_file_content_vocabulary_and_version_not_paths_or_training(corpus, tmp_path, monkeypatch,
                                                                             cfg_for):
    cfg = cfg_for(tmp_path, corpus)
    base = data_key(cfg).key
    moved = tmp_path / "elsewhere" / "copy.gbk.gz"
    moved.parent.mkdir()
    shutil.copy(corpus[0], moved)
    same = cfg_for(tmp_path / "other_root", [moved, corpus[1]])
    same.model.n_layer, same.train.lr, same.data.prepare_workers = 3, 1e-3, 2
    assert data_key(same).key == base  # same bytes elsewhere, other training settings: same key
    moved.write_bytes(Path(corpus[1]).read_bytes())  # other content under that path
    assert data_key(same).key != base
    monkeypatch.setattr(layout, "FORMAT_VERSION", layout.FORMAT_VERSION + 1)
    assert data_key(cfg).key != base
    monkeypatch.undo()
    monkeypatch.setattr(layout, "ITOS", [*layout.ITOS[:4], *reversed(layout.ITOS[4:])])
    assert data_key(cfg).key != base


# --------------------------------------------------------------------------- no-op, runs, A/B configs


def test_second_prepare_of_a_complete_key_builds_nothing(corpus, tmp_path, monkeypatch, cfg_for):
    cfg = cfg_for(tmp_path, corpus)
    first = prepare(cfg, show_progress=False)
    stats = {p: p.stat().st_mtime_ns for p in Path(first["processed"]).rglob("*")}
    monkeypatch.setattr(parts, "build_unit", lambda unit: pytest.fail("parsed a file for a complete key"))
    again = prepare(cfg, run_dir=tmp_path / "runs" / "r2", show_progress=False)
    assert again["reused"] and again["key"] == first["key"] and again["kept_cds"] == first["kept_cds"]
    assert {p: p.stat().st_mtime_ns for p in Path(first["processed"]).rglob("*")} == stats
    assert (tmp_path / "runs" / "r2" / "pipeline_prepare.json").is_file()


def test_runs_read_their_own_windows_never_another_configs(corpus, tmp_path, cfg_for):
    multi = cfg_for(tmp_path, corpus)
    single = cfg_for(tmp_path, corpus, pack_mode="single")
    prepare(multi, run_dir=tmp_path / "runs" / "multi-run", show_progress=False)
    record = layout.read_json(tmp_path / "runs" / "multi-run" / RUN_RECORD)
    assert record["key"] == data_key(multi).key and set(record["splits"]) == {"train", "val", "test"}
    # the single config was never prepared: its run refuses instead of reading the multi windows
    with pytest.raises(UserError, match=f"prepared data not found: .*{data_key(single).key}.*codonlm prepare"):
        run_split_path(single, "single-run", "train")
    prepare(single, show_progress=False)
    path = run_split_path(single, "single-run", "train")  # first use binds the run to its config's key
    assert layout.recorded_key(tmp_path / "runs" / "single-run") == data_key(single).key
    assert np.load(path)["segment_ids"].max() == 1
    assert np.load(run_split_path(multi, "multi-run", "train"))["segment_ids"].max() > 1
    # a run keeps its key: the record wins over the config it is given, and prepare will not rebind it
    assert run_split_path(single, "multi-run", "train") == _folder(multi) / "all" / "train.npz"
    with pytest.raises(UserError, match="already uses prepared data"):
        prepare(single, run_dir=tmp_path / "runs" / "multi-run", show_progress=False)


@pytest.mark.parametrize("fault", ["deleted", "truncated", "edited"])
def test_damaged_data_refused_in_one_line_then_rebuilt(corpus, tmp_path, capsys, fault, tiny_config):
    raw = tiny_config(tmp_path, corpus)
    raw["outputs"].update(out_dir=str(tmp_path / "ckpt"), scores_dir=str(tmp_path / "scores"))
    raw["train"] = {"max_steps": 1, "amp": False}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    assert main(["prepare", "-c", str(cfg_path), "--run-id", "r1", "--quiet"]) == 0
    folder = _folder(parse_config(raw))
    good = _digests(folder)
    target = folder / "all" / "train.npz"
    data = target.read_bytes()
    if fault == "deleted":
        target.unlink()
    elif fault == "truncated":
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    damaged = _digests(tmp_path / "processed")
    capsys.readouterr()
    assert main(["train", "-c", str(cfg_path), "--run-id", "r1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert str(target) in err[0] and "codonlm prepare -c" in err[0] and "--run-id r1" in err[0]
    assert _digests(tmp_path / "processed") == damaged  # nothing else touched
    assert not list((tmp_path / "ckpt").rglob("*.pt"))
    assert main(["prepare", "-c", str(cfg_path), "--run-id", "r1", "--quiet", "--workers", "2"]) == 0  # as it says
    assert _digests(folder) == good
    assert run_split_path(parse_config(raw), "r1", "train") == target


# --------------------------------------------------------------------------- workers, merges


def _two_file_corpus(root: Path, corpus: list[Path], make_corpus) -> list[dict]:
    """Dataset 'pair' reads two files (two units, packed apart), 'solo' one."""
    (root / "third").mkdir(parents=True, exist_ok=True)
    third, _ = make_corpus(root / "third", n_genes=30, seed=1)
    return [{"name": "pair", "gbff": [str(corpus[0]), str(corpus[1])], "min_len": 10},
            {"name": "solo", "gbff": str(third[0]), "min_len": 10}]


def test_one_and_many_workers_write_the_same_bytes(corpus, tmp_path, make_corpus, raw_for):
    datasets = _two_file_corpus(tmp_path, corpus, make_corpus)
    one = prepare(parse_config(raw_for(tmp_path / "one", datasets)), workers=1, show_progress=False)
    many = prepare(parse_config(raw_for(tmp_path / "many", datasets)), workers=3, show_progress=False)
    assert one["key"] == many["key"] and many["workers"] == 3
    a, b = _digests(tmp_path / "one" / "processed"), _digests(tmp_path / "many" / "processed")
    assert len(a) == 3 * 2 + 3 * 2 + 3 and a == b  # parts, their links and all/


def test_datasets_prepared_apart_merge_to_the_same_key_and_bytes(corpus, tmp_path, monkeypatch, capsys, make_corpus,
                                                                raw_for):
    datasets = _two_file_corpus(tmp_path, corpus, make_corpus)
    whole = prepare(parse_config(raw_for(tmp_path / "whole", datasets)), show_progress=False)
    for machine, name in (("m1", "pair"), ("m2", "solo")):
        cfg = parse_config(raw_for(tmp_path / machine, datasets))
        report = prepare(cfg, datasets=[name], show_progress=False)
        assert list(report["parts"]) == [name] and not _folder(cfg).exists()
        shutil.copytree(tmp_path / machine / "processed" / "parts", tmp_path / "merged" / "processed" / "parts",
                        dirs_exist_ok=True)
    monkeypatch.setattr(parts, "build_unit", lambda unit: pytest.fail("the merge parsed a file"))
    merged = prepare(parse_config(raw_for(tmp_path / "merged", datasets)), show_progress=False)
    assert merged["key"] == whole["key"]
    assert _digests(Path(merged["processed"])) == _digests(Path(whole["processed"]))
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw_for(tmp_path / "m3", datasets)))
    capsys.readouterr()
    assert main(["prepare", "-c", str(cfg_path), "--datasets", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0] and "pair, solo" in err[0]


# --------------------------------------------------------------------------- kills and concurrency


@pytest.fixture(scope="module")
def big(tmp_path_factory, make_corpus, raw_for):
    """Eight files of 120 genes: a prepare long enough (about a second) to be killed or overlapped."""
    root = tmp_path_factory.mktemp("big")
    for seed in range(4):
        (root / f"s{seed}").mkdir()
    files = [f for seed in range(4) for f in make_corpus(root / f"s{seed}", n_genes=120, seed=seed)[0]]
    datasets = [{"name": f"d{i}", "gbff": str(f), "min_len": 10} for i, f in enumerate(files)]
    reference = prepare(parse_config(raw_for(root / "reference", datasets)), workers=1, show_progress=False)
    return datasets, _digests(Path(reference["processed"]))


def _prepare_process(cfg_path: Path, workers: int) -> subprocess.Popen:
    """prepare in a child process (the library call: the CLI's run provenance would import torch)."""
    code = ("import sys; from codonlm.config import load_config; from codonlm.data.prepare import prepare; "
            "prepare(load_config(sys.argv[1]), workers=int(sys.argv[2]), show_progress=False)")
    return subprocess.Popen([sys.executable, "-c", code, str(cfg_path), str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _leftovers(processed: Path) -> list[Path]:
    return [p for p in processed.rglob("*") if p.name.startswith((".tmp-", ".trash-"))]


@pytest.mark.slow
@pytest.mark.parametrize("moment,workers", [("first part being built", 2), ("three parts published", 1)])
def test_sigkill_then_rerun_gives_the_uninterrupted_result(big, tmp_path, moment, workers, raw_for):
    datasets, reference = big
    raw = raw_for(tmp_path, datasets)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    part_root = tmp_path / "processed" / "parts"

    def reached() -> bool:
        if not part_root.is_dir():
            return False
        names = [p.name for p in part_root.iterdir()]
        if moment.startswith("first"):
            return any(n.startswith(".tmp-") for n in names)
        return sum(not n.startswith(".") for n in names) >= 3

    proc = _prepare_process(cfg_path, workers)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not reached():
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare finished before it could be killed"
    folder = _folder(parse_config(raw))
    assert not (folder / "manifest.json").exists()
    report = prepare(parse_config(raw), show_progress=False)
    assert _digests(Path(report["processed"])) == reference
    assert not _leftovers(tmp_path / "processed")


@pytest.mark.slow
def test_two_prepares_of_one_key_at_once_build_it_once(big, tmp_path, raw_for):
    datasets, reference = big
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw_for(tmp_path, datasets)))
    procs = [_prepare_process(cfg_path, 1) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    built = [out.count("[prepare] d0: kept") for out in outputs]
    assert sorted(built) == [0, 1], outputs  # one built it; the other waited, then found it complete
    assert any("waiting" in out or "nothing to build" in out for out in outputs)
    assert _digests(_folder(parse_config(raw_for(tmp_path, datasets)))) == reference
    assert not _leftovers(tmp_path / "processed")
