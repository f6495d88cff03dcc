"""Config -> prepared data: builds NPZs per dataset, then concatenates across datasets. Content-addressed.

prepare computes the key of the data the config asks for (codonlm.data.layout) and does nothing
more when data/processed/<key>/ is complete and every file matches its manifest. Otherwise it
builds the datasets' NPZs that are missing (codonlm.data.parts: input files parsed by parallel
workers, written by this process in a fixed order), concatenates them into all/{train,val,test}.npz
in a temporary folder, and renames that folder into place: an interrupted prepare never leaves a
half dataset, and running it again finishes the job with the same bytes. A lock per key makes a
second prepare of the same key wait for the first, then find it done.
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from codonlm.config import Config, DatasetSpec, config_sha256
from codonlm.data.clusters import build_split_table, split_report, split_table_path
from codonlm.data.codons import VOCAB_SIZE, save_itos
from codonlm.data.inputs import check_input_path, dataset_paths
from codonlm.data.layout import (
    MANIFEST,
    RUN_RECORD,
    SPLITS,
    DataKey,
    data_key,
    dataset_host_token,
    folder_problem,
    gene_calls_dir,
    key_dir,
    lock_dir,
    part_dir,
    prepare_workers,
    record_run_data,
    recorded_key,
    write_manifest,
)
from codonlm.data.parts import NpzSource, PartPlan, UnitSettings, build_parts, concatenate_npz, summarise
from codonlm.data.store import (
    discard_dir,
    link_or_copy,
    publish_dir,
    remove_stale_staging,
    staging_dir,
)
from codonlm.errors import UserError
from codonlm.io import folder_lock, read_json, sha256_file, write_json
from codonlm.log import log

# Below this much GenBank text to parse, 'auto' uses one process: starting workers costs more than it saves.
_PARALLEL_MIN_BYTES = 32 << 20
# Calling genes in a bare assembly costs about this many times parsing as much GenBank text (bench/gene_calling.py)
_GENE_CALLING_WEIGHT = 40


def uncompressed_size(path: Path) -> int:
    """Size of the GenBank text: the gzip trailer's ISIZE for .gz (mod 4 GiB), else the file size."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return path.stat().st_size
        fh.seek(-4, os.SEEK_END)
        return struct.unpack("<I", fh.read(4))[0]


def _dataset_inputs(spec: DatasetSpec) -> list[dict]:
    """Path, sha256 and sizes of each input file (and of the FASTA beside a GFF3, under "fasta")."""
    dataset_paths(spec)  # every file checked before any is hashed
    out = []
    for f, companion in zip(spec.files, spec.companions, strict=True):
        path = check_input_path(f, spec.kind)
        entry = {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size,
                 "uncompressed_bytes": uncompressed_size(path)}
        if companion is not None:
            fasta = Path(companion)
            entry["fasta"] = {"path": str(fasta), "sha256": sha256_file(fasta), "bytes": fasta.stat().st_size}
        out.append(entry)
    return out


def input_sha256(inputs: list[dict]) -> list[str]:
    """The sha256 of a dataset's files in the order of layout.dataset_paths: main files, then companions."""
    return [i["sha256"] for i in inputs] + [i["fasta"]["sha256"] for i in inputs if "fasta" in i]


def _plans(cfg: Config, key: DataKey, inputs: dict[str, list[dict]]) -> list[PartPlan]:
    d = cfg.data
    max_chunks = None if d.windows_per_seq == "auto" else int(d.windows_per_seq)
    table = str(split_table_path(Path(d.processed_dir), key.key)) if d.split_by == "cluster" else None
    return [PartPlan(part, spec, inputs[spec.name],
                     UnitSettings(spec.min_len, spec.transl_table, cfg.model.block_size + 1, d.pack_mode == "multi",
                                  max_chunks, cfg.outputs.seed, d.val_frac, d.test_frac, table,
                                  dataset_host_token(cfg, spec.name), str(gene_calls_dir(d.processed_dir)),
                                  cfg.model.host_dropout))
            for part, spec in zip(key.parts, d.datasets, strict=True)]


def _build_missing(root: Path, cfg: Config, plans: list[PartPlan], chosen: list[PartPlan], workers: int,
                   show_progress: bool) -> None:
    """Build the parts of `chosen` that are missing (their locks held); under split_by cluster, first the
    split table of the whole corpus (`plans`) when it is not there."""
    missing = _missing_parts(root, chosen)
    table = plans[0].settings.split_table
    if missing and table is not None and not Path(table).is_file():
        build_split_table(Path(table), plans, cfg.data.cluster_identity, cfg.data.cluster_coverage, workers)
    build_parts(root, missing, workers, show_progress)


def _cyclic_gc_paused(fn):
    """Run fn with Python's cyclic garbage collector paused, and restored after.

    prepare allocates a few small containers per CDS and per window piece (hundreds of thousands
    in all) and builds no reference cycles, so the collector's passes over them are pure overhead
    (about 5% of prepare). Reference counting still frees everything as usual.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


@_cyclic_gc_paused
def prepare(cfg: Config, run_dir: Path | None = None, force: bool = False, show_progress: bool = True,
            workers: int | str | None = None, datasets: list[str] | None = None) -> dict:
    """Prepare the config's data (a no-op when its key is complete); returns the pipeline_prepare.json content.

    run_dir: also record the key, checksums and reports in this run folder. workers: processes
    that parse input files (default data.prepare_workers; 'auto' = every core). datasets: build
    only these datasets' NPZs (parts), for one machine's share of a corpus; a later prepare
    without it merges them (same key, same bytes). Raises UserError on bad input.
    """
    t0 = time.perf_counter()
    root = Path(cfg.data.processed_dir)
    inputs = {spec.name: _dataset_inputs(spec) for spec in cfg.data.datasets}  # fail fast on missing/empty files
    key = data_key(cfg, {name: input_sha256(v) for name, v in inputs.items()})
    plans = _plans(cfg, key, inputs)
    setting = workers if workers is not None else cfg.data.prepare_workers
    n_workers = prepare_workers(setting)
    weight = {spec.name: _GENE_CALLING_WEIGHT if spec.kind == "fasta" else 1 for spec in cfg.data.datasets}
    text_bytes = sum(weight[name] * i["uncompressed_bytes"] for name, v in inputs.items() for i in v)
    if setting in (None, "auto") and text_bytes < _PARALLEL_MIN_BYTES:
        n_workers = 1
    if datasets is not None:
        return _prepare_parts(root, cfg, plans, datasets, n_workers, show_progress)
    if run_dir is not None:
        _check_run_binding(Path(run_dir), key.key)

    folder = key_dir(root, key.key)
    with folder_lock(lock_dir(root, key.key),
                     on_wait=lambda: log(f"[prepare] another prepare of key {key.key} is running; waiting for it")):
        remove_stale_staging(folder)
        problem = folder_problem(folder) if folder.exists() else None
        if problem:
            log(f"[prepare] {problem}: rebuilding {folder}")
            discard_dir(folder)
        reused = folder.exists()
        if reused:
            log(f"[prepare] {folder} is complete (key {key.key}): nothing to build")
            report = read_json(folder / "report.json")
        else:
            with _parts_locked(root, plans):
                _build_missing(root, cfg, plans, plans, n_workers, show_progress)
                report = _merge(root, key, plans, inputs, folder, force, n_workers, t0, cfg.model.hosts)
    if not report["integrity"]["ok"] and not force:
        if run_dir is not None:
            write_json(Path(run_dir) / "integrity.json", report["integrity"])
        raise UserError(_integrity_message(report["integrity"]))
    save_itos(cfg.outputs.itos_path, cfg.model.hosts)
    report.update({"config_sha256": config_sha256(cfg), "key": key.key, "processed": str(folder), "reused": reused,
                   "seconds": round(time.perf_counter() - t0, 3)})
    for name, v in inputs.items():  # this config's paths (the same content may have been built from others)
        report["datasets"][name]["inputs"] = v
    if run_dir is not None:
        _record_run(Path(run_dir), key.key, folder, report, inputs)
    return report


def _prepare_parts(root: Path, cfg: Config, plans: list[PartPlan], datasets: list[str], workers: int,
                   show_progress: bool) -> dict:
    """prepare --datasets: only these datasets' parts, for one machine's share of the work."""
    known = [p.spec.name for p in plans]
    unknown = [n for n in datasets if n not in known]
    if unknown:
        raise UserError(f"--datasets: no dataset named '{unknown[0]}' in the config; names: {', '.join(known)}")
    chosen = [p for p in plans if p.spec.name in datasets]
    with _parts_locked(root, chosen):
        _build_missing(root, cfg, plans, chosen, workers, show_progress)
    return {"parts": {p.spec.name: str(part_dir(root, p.key.key)) for p in chosen}}


@contextmanager
def _parts_locked(root: Path, plans: list[PartPlan]) -> Iterator[None]:
    """Hold the lock of every plan's part (taken in key order, so two prepares never deadlock)."""
    with ExitStack() as stack:
        for plan in sorted(plans, key=lambda p: p.key.key):
            stack.enter_context(folder_lock(
                lock_dir(root, f"part-{plan.key.key}"),
                on_wait=lambda plan=plan: log(f"[prepare] dataset {plan.spec.name} is being prepared by another "
                                              "process; waiting for it")))
        yield


def _missing_parts(root: Path, plans: list[PartPlan]) -> list[PartPlan]:
    """The plans whose part is absent or damaged (a damaged one is removed); hold the parts' locks."""
    missing = []
    for plan in plans:
        folder = part_dir(root, plan.key.key)
        remove_stale_staging(folder)
        if folder.exists():
            problem = folder_problem(folder)
            if problem is None:
                log(f"[prepare] {plan.spec.name}: already prepared ({folder})")
                continue
            log(f"[prepare] {problem}: rebuilding dataset {plan.spec.name}")
            discard_dir(folder)
        missing.append(plan)
    return missing


def _merge(root: Path, key: DataKey, plans: list[PartPlan], inputs: dict, folder: Path, force: bool,
           workers: int, t0: float, hosts: list[str]) -> dict:
    """Concatenate the parts into all/, link them as <dataset>/, write the reports; publish the folder
    unless the integrity check failed without `force`. Returns the report."""
    staging = staging_dir(folder)
    try:
        t_concat = time.perf_counter()
        parts = [part_dir(root, p.key.key) for p in plans]
        names = [p.spec.name for p in plans]
        window = plans[0].settings.window

        (staging / "all").mkdir()

        def concatenate(split: str) -> dict:
            sources = [NpzSource(p / f"{split}.npz") for p in parts]
            return concatenate_npz(staging / "all" / f"{split}.npz", sources, list(range(len(parts))), names, window)

        # train in one thread, val and test beside it: copying, CRC and hashing release the GIL
        with ThreadPoolExecutor(max_workers=min(2, workers)) as pool:
            known = {f"all/{split}.npz": entry for split, entry in zip(SPLITS, pool.map(concatenate, SPLITS), strict=True)}
        for part, name in zip(parts, names, strict=True):
            for rel, entry in read_json(part / MANIFEST)["files"].items():
                link_or_copy(part / rel, staging / name / rel)
                known[f"{name}/{rel}"] = entry
        seconds_concat = time.perf_counter() - t_concat
        part_reports = [read_json(p / "part.json")["report"] for p in parts]
        report = _report(key, plans, part_reports, inputs, workers)
        write_json(staging / "key.json", {"key": key.key, **key.description})
        save_itos(staging / "itos.json", hosts)
        if not report["integrity"]["ok"] and not force:
            return report  # not published: the caller reports the failure
        write_manifest(staging, {"key": key.key}, known)
        total = time.perf_counter() - t0
        report["timings_s"].update({"concatenate": round(seconds_concat, 3), "total": round(total, 3)})
        report["throughput_mb_per_s"] = round(report["input_uncompressed_bytes"] / 1e6 / total, 2)
        write_json(staging / "report.json", report)
        publish_dir(staging, folder)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _report(key: DataKey, plans: list[PartPlan], part_reports: list[dict], inputs: dict, workers: int) -> dict:
    """report.json of a key folder (and the run's pipeline_prepare.json): per dataset and totals."""
    desc = plans[0].key.description
    names = [p.spec.name for p in plans]
    datasets = {name: {k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")}
                for name, r in zip(names, part_reports, strict=True)}
    window = plans[0].settings.window
    totals = {s: summarise([r["splits"][s] for r in part_reports], window) for s in SPLITS}
    dropped = {reason: sum(r["extraction"]["dropped"][reason] for r in part_reports)
               for reason in part_reports[0]["extraction"]["dropped"]}
    return {
        "key": key.key, "block_size": desc["block_size"], "pack_mode": desc["pack_mode"],
        "windows_per_seq": desc["windows_per_seq"], "val_frac": desc["val_frac"], "test_frac": desc["test_frac"],
        "seed": desc["seed"], "datasets": datasets, "splits": totals,
        "kept_cds": sum(r["extraction"]["kept"] for r in part_reports), "dropped_cds": dropped,
        "input_bytes": sum(i["bytes"] for v in inputs.values() for i in v),
        "input_uncompressed_bytes": sum(i["uncompressed_bytes"] for v in inputs.values() for i in v),
        "integrity": _integrity(totals), "workers": workers, "split": _split_summary(plans),
        "timings_s": {name: r["seconds"] for name, r in zip(names, part_reports, strict=True)},
        "worker_cpu_s": {name: r.get("cpu_seconds") for name, r in zip(names, part_reports, strict=True)},
    }  # fmt: skip


def _split_summary(plans: list[PartPlan]) -> dict:
    """How genes were split: by protein, or by MMseqs2 cluster (its settings, counts and time)."""
    table = plans[0].settings.split_table
    return {"split_by": "protein"} if table is None else (split_report(Path(table)) or {"split_by": "cluster"})


def _integrity(splits: dict[str, dict]) -> dict:
    pad_only = sum(s["pad_only_windows"] for s in splits.values())
    no_targets = sum(s["windows_without_targets"] for s in splits.values())
    return {
        "pad_only_windows": pad_only,
        "windows_without_targets": no_targets,
        "per_split": {k: {"pad_only_windows": v["pad_only_windows"], "windows": v["windows"]} for k, v in splits.items()},
        "ok": pad_only == 0 and no_targets == 0,
    }


def _integrity_message(integrity: dict) -> str:
    return (f"integrity check failed: {integrity['pad_only_windows']} pad-only windows, "
            f"{integrity['windows_without_targets']} windows without targets (see integrity.json); "
            "re-run with --force to keep going, or adjust block_size / windows_per_seq")


def _check_run_binding(run_directory: Path, key: str) -> None:
    """A run uses one prepared dataset for its whole life: refuse to point it at another key."""
    recorded = recorded_key(run_directory)
    if recorded is not None and recorded != key:
        raise UserError(f"run {run_directory.name} already uses prepared data {recorded} "
                        f"({run_directory / RUN_RECORD}) and this config gives key {key}; start a new run "
                        f"(--run-id NEW_ID), or delete that file if the run has not trained yet")


def _record_run(run_directory: Path, key: str, folder: Path, report: dict, inputs: dict) -> None:
    """runs/<RUN_ID>/: integrity.json, pipeline_prepare.json, dataset_manifest.json, prepared_data.json."""
    write_json(run_directory / "integrity.json", report["integrity"])
    write_json(run_directory / "pipeline_prepare.json", report)
    manifest = read_json(folder / MANIFEST)
    calls = {name: d["extraction"]["gene_calling"] for name, d in report["datasets"].items()
             if "gene_calling" in d["extraction"]}  # caller, version, mode and counts of each called genome
    write_json(run_directory / "dataset_manifest.json", {
        "key": key, "config_sha256": report["config_sha256"], "vocab_size": VOCAB_SIZE, "inputs": inputs,
        **({"gene_calling": calls} if calls else {}),
        "outputs": {str(folder / rel): entry["sha256"] for rel, entry in manifest["files"].items()}})
    record_run_data(run_directory, key, folder)
