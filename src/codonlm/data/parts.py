"""One config dataset's NPZs (a "part"), built from its input files by parallel worker processes.

A unit of work is one input file: a worker extracts its CDS, gives each gene its split (a seeded
hash of the protein), packs the split's windows and writes them as the file's own
{train,val,test}.npz. The calling process then makes the dataset's part from its files' NPZs in
file order (a rename for a dataset of one file). A unit's output depends only on its file and the
settings, so the bytes are the same for 1 or N workers and whatever order the workers finish in.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from codonlm.config import DatasetSpec
from codonlm.data.codons import PAD, frame_genes, loss_mask
from codonlm.data.genbank import ExtractionStats
from codonlm.data.inputs import InputFile, dataset_input_files, extract_input_records
from codonlm.data.layout import SPLITS, PartKey, part_dir, write_manifest
from codonlm.data.packing import Pieces, WindowBatch, WindowPacker, chunk_genes, render
from codonlm.data.store import (
    NpzReader,
    Spill,
    TextSpill,
    publish_dir,
    staging_dir,
    whole,
    write_npz_streaming,
)
from codonlm.errors import UserError
from codonlm.io import write_json
from codonlm.log import log, progress

_RENDER_EVERY = 2048  # windows
_COUNTS = ("genes", "windows", "target_tokens", "covered_targets", "lost_targets", "pad_tokens", "pad_only_windows",
           "windows_without_targets")


def assign_splits(proteins: list[str], seed: int, val_frac: float, test_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Split of each protein (an index into SPLITS) from a seeded hash: identical proteins always land
    together (no leak). Also returns the hashes (uint64), which tell distinct proteins apart."""
    hashes = _seeded_hashes(proteins, f"{seed}:")
    u = hashes.astype(np.float64) * 2.0**-64  # uniform in [0, 1), as int.from_bytes(digest) / 2**64
    split = np.full(len(proteins), SPLITS.index("train"), dtype=np.int8)
    split[u < test_frac + val_frac] = SPLITS.index("val")
    split[u < test_frac] = SPLITS.index("test")
    return split, hashes


def _seeded_hashes(proteins: list[str], prefix: str) -> np.ndarray:
    digests = b"".join([hashlib.blake2b(f"{prefix}{p}".encode(), digest_size=8).digest() for p in proteins])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def host_free_genes(proteins: list[str], seed: int, rate: float) -> np.ndarray:
    """Which training genes a host model reads without their host token (model.host_dropout): a seeded hash of
    the protein, independent of the split's, so the choice depends on neither file order nor workers."""
    if rate <= 0:
        return np.zeros(len(proteins), dtype=bool)
    return _seeded_hashes(proteins, f"{seed}:host:").astype(np.float64) * 2.0**-64 < rate


@cache
def _split_table(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as table:
        return table["hashes"], table["splits"]


def table_splits(path: str, hashes: np.ndarray) -> np.ndarray:
    """The split of each protein hash in a split table (sorted hashes, a split each)."""
    known, splits = _split_table(path)
    where = np.minimum(np.searchsorted(known, hashes), max(0, known.size - 1))
    if known.size == 0 or not np.array_equal(known[where], hashes):
        raise RuntimeError(f"{path}: a protein is missing from the cluster split table; run prepare --force")
    return splits[where]


def summarise(counts: list[dict], window: int) -> dict:
    """Split summary (as in pipeline_prepare.json) of one or more sinks' counts laid end to end."""
    total = {k: sum(c[k] for c in counts) for k in _COUNTS}
    target, windows = total["target_tokens"], total["windows"]
    return {
        "genes": total["genes"], "windows": windows, "target_tokens": target,
        "covered_targets": total["covered_targets"], "lost_targets": total["lost_targets"],
        "coverage": total["covered_targets"] / target if target else 1.0,
        "pad_fraction": total["pad_tokens"] / (windows * window) if windows else 0.0,
        "pad_tokens": total["pad_tokens"], "pad_only_windows": total["pad_only_windows"],
        "windows_without_targets": total["windows_without_targets"],
    }  # fmt: skip


@dataclass
class SplitSink:
    """Windows and whole genes of one (input file, split), spilled to disk.

    Pieces wait in a small table over the tokens of the genes added since the last render (plus
    the pieces still in open windows, moved to a fresh table at every render), so memory stays flat.
    """

    folder: Path
    window: int
    multi: bool
    max_chunks: int | None
    host: int | None = None  # the host token the windows' genes start with (gene_tokens stay host-free)
    packer: WindowPacker = field(init=False)
    pending: list[list[int]] = field(default_factory=list)  # closed windows not rendered yet (piece ids)
    genes: int = 0
    target_tokens: int = 0  # scored targets in whole genes (codons + EOS)
    covered_targets: int = 0  # scored targets that landed in some window
    lost_targets: int = 0
    pad_only_windows: int = 0
    windows_without_targets: int = 0
    pad_tokens: int = 0

    def __post_init__(self) -> None:
        w = self.window
        self.packer = WindowPacker(w, self.multi)
        self.tokens = Spill(self.folder / "tokens.bin", np.uint8, (w,))
        self.segments = Spill(self.folder / "segments.bin", np.int16, (w,))
        self.positions = Spill(self.folder / "positions.bin", np.int32, (w,))
        self.gene_flat = Spill(self.folder / "gene_tokens.bin", np.uint8)
        self.gene_lengths = Spill(self.folder / "gene_lengths.bin", np.int64)
        self.names = TextSpill(self.folder / "gene_names.txt")
        self._streams: list[np.ndarray] = []  # tokens the waiting pieces point into, laid end to end
        self._tables: list[Pieces] = []
        self._stream_size = self._piece_count = 0

    def add_genes(self, codons: np.ndarray, lengths: np.ndarray, names: list[str],
                  host_free: np.ndarray | None = None) -> None:
        """Add genes in order (codon ids laid end to end, lengths[i] codons each): one spill append for
        all of them, then pack their pieces; host_free[i]: gene i's windows carry no host token."""
        if not len(lengths):
            return
        flat = frame_genes(codons, lengths)
        framed = np.asarray(lengths, dtype=np.int64) + 2
        self.genes += len(lengths)
        self.target_tokens += flat.size - len(lengths)
        self.gene_flat.append(flat)
        self.gene_lengths.append(framed)
        self.names.append(names)
        if self.host is not None:  # the windows' genes carry their host token after <BOS_CDS>
            flat = frame_genes(codons, lengths, self.host, host_free)
            framed = framed + (1 if host_free is None else ~host_free)
        pieces, lost = chunk_genes(framed, self.window, self.max_chunks)
        self.lost_targets += lost
        self.pending.extend(self.packer.pack(pieces.size.tolist(), pieces.continuation.tolist(), self._piece_count))
        self._streams.append(flat)
        self._tables.append(pieces._replace(start=pieces.start + self._stream_size))
        self._stream_size += flat.size
        self._piece_count += pieces.count
        if len(self.pending) >= _RENDER_EVERY:
            self._render()

    def _render(self) -> None:
        if not self._tables:
            return
        stream, table = np.concatenate(self._streams), Pieces.concatenate(self._tables)
        if self.pending:
            self._count(render(self.pending, table, stream, self.window))
            self.pending = []
        # the pieces of open windows move to a fresh table of their own
        waiting = np.array(self.packer.open_pieces(), dtype=np.int64)
        self.packer.renumber(dict(zip(waiting.tolist(), range(waiting.size), strict=True)))
        kept_stream, kept_table = table.take(stream, waiting)
        self._streams, self._tables = [kept_stream], [kept_table]
        self._stream_size, self._piece_count = kept_stream.size, waiting.size

    def _count(self, batch: WindowBatch) -> None:
        scored = loss_mask(batch.tokens[:, 1:])
        self.covered_targets += int(scored.sum())
        self.windows_without_targets += int((~scored.any(axis=1)).sum())
        is_pad = batch.tokens == PAD
        self.pad_only_windows += int(is_pad.all(axis=1).sum())
        self.pad_tokens += int(is_pad.sum())
        self.tokens.append(batch.tokens)
        self.segments.append(batch.segment_ids)
        self.positions.append(batch.positions)

    def close(self) -> None:
        """Pack what is left; the columns can then be read back (SinkSource)."""
        self.pending.extend(self.packer.flush())
        self._render()
        for spill in (self.tokens, self.segments, self.positions, self.gene_flat, self.gene_lengths):
            spill.flush()

    def counts(self) -> dict:
        return {"genes": self.genes, "windows": self.tokens.rows, "target_tokens": self.target_tokens,
                "covered_targets": self.covered_targets, "lost_targets": self.lost_targets,
                "pad_tokens": self.pad_tokens, "pad_only_windows": self.pad_only_windows,
                "windows_without_targets": self.windows_without_targets}


# --------------------------------------------------------------------------- one writer for every NPZ


class SinkSource:
    """A closed SplitSink as rows to concatenate."""

    def __init__(self, sink: SplitSink):
        self.sink = sink
        self.windows, self.genes, self.gene_token_count = sink.tokens.rows, sink.genes, sink.gene_flat.rows
        self._names = sink.names.read()
        self.names_dtype = self._names.dtype

    def column(self, name: str) -> Iterator[np.ndarray]:
        if name == "gene_names":
            return iter([self._names])
        spill = {"tokens": self.sink.tokens, "segment_ids": self.sink.segments, "positions": self.sink.positions,
                 "gene_tokens": self.sink.gene_flat}[name]
        return spill.chunks(1 << 24) if name == "gene_tokens" else spill.chunks()

    def gene_ends(self) -> Iterator[np.ndarray]:
        """End offset of each gene within this source's gene tokens."""
        base = 0
        for lengths in self.sink.gene_lengths.chunks():
            ends = base + np.cumsum(lengths)
            if ends.size:
                base = int(ends[-1])
            yield ends


class NpzSource:
    """A prepared NPZ (a part's split) as rows to concatenate, read chunk by chunk."""

    def __init__(self, path: Path):
        self.reader = NpzReader(path)
        self.windows = self.reader.header("tokens")[1][0]
        self.genes = self.reader.header("gene_offsets")[1][0] - 1
        self.gene_token_count = self.reader.header("gene_tokens")[1][0]
        self.names_dtype = self.reader.header("gene_names")[0]

    def column(self, name: str) -> Iterator[np.ndarray]:
        return self.reader.chunks(name)

    def gene_ends(self) -> Iterator[np.ndarray]:
        skip = 1  # the leading 0
        for chunk in self.reader.chunks("gene_offsets"):
            yield chunk[skip:]
            skip = 0


def concatenate_npz(path: Path, sources: list, dataset_of: list[int], dataset_names: list[str], window: int) -> dict:
    """One prepared NPZ (docs/data_format.md) laying `sources` end to end; source i belongs to dataset_of[i].

    Returns its {"sha256", "bytes"}."""
    n_windows = sum(s.windows for s in sources)
    n_genes = sum(s.genes for s in sources)

    def chained(name: str) -> Iterator[np.ndarray]:
        return (chunk for s in sources for chunk in s.column(name))

    def offsets() -> Iterator[np.ndarray]:
        yield np.zeros(1, dtype=np.int64)
        base = 0
        for s in sources:
            for ends in s.gene_ends():
                yield ends + base
            base += s.gene_token_count

    def per_source(count: str) -> Iterator[np.ndarray]:
        return (np.full(getattr(s, count), d, dtype=np.int16) for s, d in zip(sources, dataset_of, strict=True))

    # as np.concatenate of the sources' names would: the widest string dtype
    names_dtype = np.result_type(*(s.names_dtype for s in sources)) if sources else np.dtype("<U1")
    columns = {
        "tokens": (np.uint8, (n_windows, window), chained("tokens")),
        "segment_ids": (np.int16, (n_windows, window), chained("segment_ids")),
        "positions": (np.int32, (n_windows, window), chained("positions")),
        "window_dataset": (np.int16, (n_windows,), per_source("windows")),
        "dataset_names": whole(np.array(dataset_names, dtype=str)),
        "gene_tokens": (np.uint8, (sum(s.gene_token_count for s in sources),), chained("gene_tokens")),
        "gene_offsets": (np.int64, (n_genes + 1,), offsets()),
        "gene_dataset": (np.int16, (n_genes,), per_source("genes")),
        "gene_names": (names_dtype, (n_genes,), chained("gene_names")),
    }
    return write_npz_streaming(path, columns)


# --------------------------------------------------------------------------- units (worker side)


@dataclass(frozen=True)
class UnitSettings:
    """What a worker needs to know besides its file."""

    min_len: int
    transl_table: int
    window: int  # block_size + 1
    multi: bool
    max_chunks: int | None
    seed: int
    val_frac: float
    test_frac: float
    split_table: str | None = None  # split_by cluster: the protein hash -> split table (clusters.py)
    host_token: int | None = None  # model.condition_on_host: the dataset's host token id
    gene_calls: str | None = None  # the folder that keeps genes called in FASTA files (layout.gene_calls_dir)
    host_dropout: float = 0.0  # model.host_dropout: share of training genes whose windows carry no host token


@dataclass(frozen=True)
class Unit:
    source: InputFile
    dataset: str
    folder: Path  # where its spills and NPZs go
    settings: UnitSettings
    size: int  # uncompressed bytes: the progress bar, and the order units start in (largest first)


@dataclass
class UnitResult:
    stats: ExtractionStats
    counts: dict[str, dict]  # SplitSink.counts() per split
    files: dict[str, dict]  # per split: {"sha256", "bytes"} of the unit's NPZ
    proteins: dict[str, np.ndarray]  # distinct protein hashes (assign_splits), per split
    seconds: float
    cpu_seconds: float  # of the worker: with `seconds`, whether workers ran side by side or waited for a core


def build_unit(unit: Unit) -> UnitResult:
    """Extract, split and pack one input file into unit.folder/{train,val,test}.npz (in a worker process)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    s = unit.settings
    stats = ExtractionStats()
    sinks = {split: SplitSink(unit.folder / "spill" / split, s.window, s.multi, s.max_chunks, s.host_token)
             for split in SPLITS}
    hashes: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for batch in extract_input_records(unit.source, s.min_len, s.transl_table, stats):  # one record at a time
        lengths = np.diff(np.asarray(batch.offsets, dtype=np.int64))
        proteins = batch.proteins()
        split_index, protein_hashes = assign_splits(proteins, s.seed, s.val_frac, s.test_frac)
        if s.split_table is not None:  # the split of each protein's cluster instead
            split_index = table_splits(s.split_table, protein_hashes)
        for k, split in enumerate(SPLITS):
            members = split_index == k
            if not members.any():
                continue
            hashes[split].append(protein_hashes[members])
            picked = np.flatnonzero(members).tolist()
            names = [f"{batch.record_id}|{batch.names[i]}" for i in picked]
            host_free = None
            if split == "train" and s.host_token is not None and s.host_dropout:
                host_free = host_free_genes([proteins[i] for i in picked], s.seed, s.host_dropout)
            sinks[split].add_genes(batch.ids[np.repeat(members, lengths)], lengths[members], names, host_free)
    files = {}
    for split, sink in sinks.items():
        sink.close()
        files[split] = concatenate_npz(unit.folder / f"{split}.npz", [SinkSource(sink)], [0], [unit.dataset], s.window)
    shutil.rmtree(unit.folder / "spill", ignore_errors=True)
    distinct = {split: np.unique(np.concatenate(h) if h else np.empty(0, np.uint64)) for split, h in hashes.items()}
    return UnitResult(stats, {split: sink.counts() for split, sink in sinks.items()}, files, distinct,
                      time.perf_counter() - t0, time.process_time() - cpu0)


def pool_context():
    """fork while this process runs no other Python thread (cheapest: workers start with everything
    imported; native pools such as OpenBLAS's or torch's are idle, and workers never call into them);
    forkserver otherwise, spawn off Linux."""
    if sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    if threading.active_count() > 1:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("fork")


@contextmanager
def unit_results(units: list[Unit], workers: int) -> Iterator[Callable[[int], UnitResult]]:
    """A function giving build_unit's result for units[i]; the units run in `workers` processes (1: here).

    Leaving the block stops the pool, cancelling units not started (a dataset failed, or Ctrl-C).
    """
    if workers <= 1 or len(units) <= 1:
        yield lambda i: build_unit(units[i])  # asked for in order: one unit at a time
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(units)), mp_context=pool_context())
    try:
        # largest first (ties in order), so that no worker is left with a big file when the others are done
        futures = {i: pool.submit(build_unit, units[i]) for i in sorted(range(len(units)), key=lambda i: -units[i].size)}
        yield lambda i: futures[i].result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- parts (writer side)


@dataclass(frozen=True)
class PartPlan:
    """A part to build: its key, its config dataset, its inputs (path, sha256, sizes) and settings."""

    key: PartKey
    spec: DatasetSpec
    inputs: list[dict]
    settings: UnitSettings


def plan_input_files(plan: PartPlan) -> list[InputFile]:
    """The plan's input files, its FASTA files' gene calls kept in (and read back from) its gene_calls folder."""
    return dataset_input_files(plan.spec, plan.settings.gene_calls)


def build_parts(root: Path, plans: list[PartPlan], workers: int, show_progress: bool) -> None:
    """Build each plan's part folder under root/parts/: units in `workers` processes, written here in order.

    Each part is written into a temporary folder and renamed into place when complete.
    """
    stagings = {plan.key.key: staging_dir(part_dir(root, plan.key.key)) for plan in plans}
    units = [Unit(source, plan.spec.name, stagings[plan.key.key] / "units" / str(j), plan.settings,
                  i["uncompressed_bytes"])
             for plan in plans for j, (source, i) in enumerate(zip(plan_input_files(plan), plan.inputs, strict=True))]
    try:
        with unit_results(units, workers) as result:  # the pool starts before the progress bar's thread
            bar = progress(total=sum(u.size for u in units), desc="prepare", unit="B", unit_scale=True,
                           disable=not show_progress, leave=False)
            done = 0
            for plan in plans:
                part = []
                for _ in plan.inputs:
                    part.append((units[done].folder, result(done)))
                    bar.update(units[done].size)
                    done += 1
                _write_part(stagings[plan.key.key], plan, part)
                publish_dir(stagings[plan.key.key], part_dir(root, plan.key.key))
            bar.close()
    finally:
        for staging in stagings.values():
            shutil.rmtree(staging, ignore_errors=True)


def _write_part(staging: Path, plan: PartPlan, units: list[tuple[Path, UnitResult]]) -> None:
    """The part's NPZs from its files' (in file order), its report and manifest, in `staging`."""
    name = plan.spec.name
    results = [r for _, r in units]
    stats = ExtractionStats()
    for r in results:
        stats.merge(r.stats)
    for w in stats.warnings:
        log(f"[prepare] warning: {w}")
    if stats.kept == 0:
        raise UserError(f"dataset '{name}': no CDS kept from {', '.join(plan.spec.files)} "
                        f"(dropped: {stats.as_dict()['dropped']}); check the files or lower min_len")
    window = plan.settings.window
    known = {}
    for split in SPLITS:
        if len(units) == 1:  # the file's NPZ is the dataset's
            os.replace(units[0][0] / f"{split}.npz", staging / f"{split}.npz")
            known[f"{split}.npz"] = results[0].files[split]
        else:
            sources = [NpzSource(folder / f"{split}.npz") for folder, _ in units]
            known[f"{split}.npz"] = concatenate_npz(staging / f"{split}.npz", sources, [0] * len(sources), [name], window)
    shutil.rmtree(staging / "units")
    splits = {split: summarise([r.counts[split] for r in results], window) for split in SPLITS}
    report = {
        "inputs": plan.inputs,
        "extraction": stats.as_dict(),
        "unique_proteins": {s: int(np.unique(np.concatenate([r.proteins[s] for r in results])).size) for s in SPLITS},
        "splits": splits,
        "seconds": round(sum(r.seconds for r in results), 3),  # worker time, summed over its files
        "cpu_seconds": round(sum(r.cpu_seconds for r in results), 3),  # worker CPU time (gene calling included)
    }
    write_json(staging / "part.json", {"key": plan.key.key, "description": plan.key.description, "report": report})
    calls = {"gene_calling": stats.gene_calls} if stats.gene_calls else {}  # provenance of called genes
    write_manifest(staging, {"key": plan.key.key, "dataset": name, **calls}, known)
    log(f"[prepare] {name}: kept {stats.kept} of {stats.cds_features} CDS (dropped {stats.as_dict()['dropped_total']}), "
        + ", ".join(f"{s} {splits[s]['genes']} genes/{splits[s]['windows']} windows" for s in SPLITS))
