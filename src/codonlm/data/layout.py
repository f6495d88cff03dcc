"""Where prepared data lives, what its key is, and which prepared data a run uses.

    data/processed/<key>/          one complete prepared dataset (see docs/data_format.md)
    data/processed/parts/<part>/   one config dataset's NPZs, shared by every key that lists it

The key hashes everything that decides the bytes: the format version, the vocabulary, and per
config dataset (in order) its name, the sha256 of each input file, min_len and transl_table (and
for FASTA/GFF3 entries the input kind, gene_calling and the caller's version), plus block_size,
pack_mode, windows_per_seq, val_frac, test_frac and the seed; under data.split_by: cluster also the cluster settings, the MMseqs2 version and a digest of what decides
every dataset's proteins (a cluster split of one dataset depends on all of them). Two configs that
differ in any of these never share a folder; two that agree share one, whatever the file paths.

A run records the key it uses in runs/<RUN_ID>/prepared_data.json, with the sha256 of each split
file. Every stage reads prepared data through `run_split_path`, which checks that record.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from codonlm.config import Config, DatasetSpec
from codonlm.data.codons import ITOS
from codonlm.errors import UserError
from codonlm.io import read_json, sha256_file, write_json

FORMAT_VERSION = 2  # 2: content-addressed folders, self-contained per-dataset NPZs, packing per input file
SPLITS = ("train", "val", "test")
KEY_CHARS = 16  # hex digits of sha256 kept in folder names
MANIFEST = "manifest.json"  # sha256 and size of every NPZ of a folder; written last
RUN_RECORD = "prepared_data.json"


@dataclass(frozen=True)
class PartKey:
    """One config dataset's prepared NPZs: its key and what the key hashes."""

    name: str
    key: str
    description: dict


@dataclass(frozen=True)
class DataKey:
    """The key of a config's prepared data, what it hashes, and the keys of its datasets' parts."""

    key: str
    description: dict
    parts: tuple[PartKey, ...]


def _digest(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:KEY_CHARS]


def part_description(cfg: Config, spec: DatasetSpec, input_sha256: list[str]) -> dict:
    """Everything that decides one dataset's windows and genes."""
    d = cfg.data
    return {
        "format_version": FORMAT_VERSION, "vocabulary": list(ITOS), "dataset": spec.name,
        "inputs_sha256": list(input_sha256), "min_len": spec.min_len, "transl_table": spec.transl_table,
        "block_size": cfg.model.block_size, "pack_mode": d.pack_mode, "windows_per_seq": d.windows_per_seq,
        "val_frac": d.val_frac, "test_frac": d.test_frac, "seed": cfg.outputs.seed, **_input_kind(spec),
        **_host(cfg, spec),
    }  # fmt: skip


def dataset_host_token(cfg: Config, dataset: str) -> int | None:
    """The host token id a dataset's genes start with (model.condition_on_host), else None."""
    if not cfg.model.condition_on_host:
        return None
    return len(ITOS) + cfg.model.hosts.index(dataset)


def _host(cfg: Config, spec: DatasetSpec) -> dict:
    """A host-conditioned dataset's host token (without one, nothing is added, so keys stay as they were)."""
    token = dataset_host_token(cfg, spec.name)
    if token is None:
        return {}
    dropout = cfg.model.host_dropout
    return {"host_token": token, **({"host_dropout": dropout} if dropout else {})}


def _input_kind(spec: DatasetSpec) -> dict:
    """What decides the CDS of a dataset that is not GenBank: the kind, and for called genes the mode asked
    for and the caller's version (GenBank datasets add nothing, so their keys stay as they were)."""
    if spec.kind == "gbff":
        return {}
    if spec.kind == "gff":
        return {"input_kind": "gff"}
    from importlib.metadata import version

    return {"input_kind": "fasta", "gene_calling": spec.gene_calling, "gene_caller": f"pyrodigal {version('pyrodigal')}"}


def cluster_split_description(cfg: Config, descriptions: list[dict]) -> dict:
    """What decides a cluster split: the settings, the MMseqs2 version and options, and what decides the proteins of
    every dataset of the corpus (its input files and extraction settings)."""
    from codonlm.data.homology import CLUSTER_METHOD, mmseqs_version

    protein_fields = ("inputs_sha256", "min_len", "transl_table", "input_kind", "gene_calling", "gene_caller")
    corpus = [{k: desc[k] for k in protein_fields if k in desc} for desc in descriptions]
    return {"split_by": "cluster", "cluster_identity": cfg.data.cluster_identity,
            "cluster_coverage": cfg.data.cluster_coverage, "mmseqs": mmseqs_version(),
            "method": " ".join(CLUSTER_METHOD), "corpus": _digest({"c": corpus})}


def hash_inputs(cfg: Config) -> dict[str, list[str]]:
    """sha256 of every input file, per dataset (files hashed in parallel threads)."""
    from codonlm.data.inputs import dataset_paths

    per_dataset = [dataset_paths(spec) for spec in cfg.data.datasets]
    files = [f for paths in per_dataset for f in paths]
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        digests = iter(list(pool.map(sha256_file, files)))
    return {spec.name: [next(digests) for _ in paths] for spec, paths in zip(cfg.data.datasets, per_dataset, strict=True)}


def data_key(cfg: Config, input_sha256: dict[str, list[str]] | None = None) -> DataKey:
    """The key of the prepared data `cfg` asks for; hashes the input files unless their sha256 is given."""
    if input_sha256 is None:
        input_sha256 = hash_inputs(cfg)
    descriptions = [part_description(cfg, spec, input_sha256[spec.name]) for spec in cfg.data.datasets]
    if cfg.data.split_by == "cluster":  # a dataset's split then depends on every dataset's proteins
        split = cluster_split_description(cfg, descriptions)
        descriptions = [{**desc, "split": split} for desc in descriptions]
    parts = tuple(PartKey(desc["dataset"], _digest(desc), desc) for desc in descriptions)
    description = {"format_version": FORMAT_VERSION, "datasets": descriptions}
    return DataKey(_digest(description), description, parts)


def key_dir(processed_dir: str | Path, key: str) -> Path:
    return Path(processed_dir) / key


def part_dir(processed_dir: str | Path, part_key: str) -> Path:
    return Path(processed_dir) / "parts" / part_key


def gene_calls_dir(processed_dir: str | Path) -> Path:
    """Genes called in bare assemblies, one file per FASTA content (codonlm.data.assembly.calls_cache_path)."""
    return Path(processed_dir) / "gene_calls"


def lock_dir(processed_dir: str | Path, name: str) -> Path:
    return Path(processed_dir) / ".locks" / name


# --------------------------------------------------------------------------- checksums

def write_manifest(folder: Path, extra: dict, known: dict[str, dict] | None = None) -> dict:
    """Record the sha256 and size of every NPZ under `folder`, last; returns the manifest.

    `known`: entries already computed (relative path -> {"sha256", "bytes"}), e.g. of linked files;
    the rest are hashed in parallel threads.
    """
    known = known or {}
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.npz"))
    todo = [rel for rel in files if rel not in known]
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(todo)))) as pool:
        digests = dict(zip(todo, pool.map(lambda rel: sha256_file(folder / rel), todo), strict=True))
    entries = {rel: known.get(rel) or {"sha256": digests[rel], "bytes": (folder / rel).stat().st_size} for rel in files}
    manifest = {**extra, "files": entries}
    write_json(folder / MANIFEST, manifest)
    return manifest


def folder_problem(folder: Path) -> str | None:
    """None when `folder` is complete and every file matches its manifest; else the first problem, in words."""
    manifest = read_json(folder / MANIFEST)
    if not folder.is_dir() or manifest is None:
        return f"{folder} is missing or incomplete"
    for rel, expected in manifest["files"].items():
        problem = _file_problem(folder / rel, expected)
        if problem:
            return problem
    return None


def _file_problem(path: Path, expected: dict) -> str | None:
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != expected["bytes"]:
        return f"{path} has {size} bytes, {expected['bytes']} were written"
    if sha256_file(path) != expected["sha256"]:
        return f"{path} was modified (sha256 differs from the one recorded)"
    return None


# --------------------------------------------------------------------------- runs


def record_run_data(run_directory: str | Path, key: str, folder: Path) -> dict:
    """Write runs/<RUN_ID>/prepared_data.json: the key the run uses and the checksums of its split files."""
    manifest = read_json(folder / MANIFEST)
    record = {"key": key, "splits": {s: {"file": f"all/{s}.npz", **manifest["files"][f"all/{s}.npz"]}
                                     for s in SPLITS}}
    write_json(Path(run_directory) / RUN_RECORD, record)
    return record


def recorded_key(run_directory: str | Path) -> str | None:
    record = read_json(Path(run_directory) / RUN_RECORD)
    return record["key"] if record else None


def _prepare_hint(run_directory: Path, run_id: str) -> str:
    config = run_directory / "config.yaml"
    return f"codonlm prepare -c {config if config.is_file() else 'CONFIG'} --run-id {run_id}"


def run_split_path(cfg: Config, run_id: str, split: str, *, runs_dir: str | Path | None = None,
                   processed_dir: str | Path | None = None) -> Path:
    """The prepared `split` ('train', 'val' or 'test') NPZ of run `run_id`, checked against the run's record.

    The one way a stage (train, evaluate, generate-prefix, analysis, stage 2) finds its data: it
    reads the key recorded in <runs_dir>/<run_id>/prepared_data.json (runs_dir: default
    cfg.outputs.runs_dir) and returns <processed_dir>/<key>/all/<split>.npz (processed_dir:
    default cfg.data.processed_dir) after checking its size and sha256 against the record.
    A run that has recorded nothing yet is bound here to the key its config gives, if that key
    is prepared (the record is written then).

    Raises UserError, one line naming the file or key and the prepare command to run, when the
    data was never prepared, is missing, or changed since the run recorded it (or, for a run not
    yet bound, when its config's input files cannot be read); ValueError for an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    run_directory = Path(runs_dir or cfg.outputs.runs_dir) / run_id
    root = Path(processed_dir or cfg.data.processed_dir)
    hint = _prepare_hint(run_directory, run_id)
    record = read_json(run_directory / RUN_RECORD)
    if record is None:
        key = data_key(cfg).key
        folder = key_dir(root, key)
        if read_json(folder / MANIFEST) is None:
            raise UserError(f"prepared data not found: {folder} (key {key} of run {run_id}'s config); "
                            f"run '{hint}'")
        record = record_run_data(run_directory, key, folder)
    key, expected = record["key"], record["splits"][split]
    path = key_dir(root, key) / expected["file"]
    if not path.is_file():
        raise UserError(f"prepared data not found: {path} (key {key}, recorded by run {run_id}); "
                        f"run '{hint}' to rebuild it")
    problem = _file_problem(path, expected)
    if problem:
        raise UserError(f"prepared data changed: {problem} since run {run_id} recorded key {key}; "
                        f"run '{hint}' to rebuild it")
    return path


def prepare_workers(setting: int | str | None) -> int:
    """Worker processes for prepare: the setting, or every core this process may use ('auto')."""
    if setting not in (None, "auto"):
        return int(setting)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
