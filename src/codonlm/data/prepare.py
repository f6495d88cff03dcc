"""Config -> NPZ splits: extract CDS, split by protein, pack windows, write per-dataset and combined NPZs.

Streams one CDS at a time; windows and genes spill to disk in a staging folder, and the
finished files replace the old ones only when everything succeeded (nothing half-written).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from codonlm.config import Config, DatasetSpec, config_sha256
from codonlm.data.codons import PAD, VOCAB_SIZE, frame_gene, loss_mask, save_itos
from codonlm.data.genbank import ExtractionStats, check_genbank_path, extract_file_records
from codonlm.data.packing import Piece, WindowPacker, chunk_gene, render
from codonlm.data.store import NpzReader, Spill, TextSpill, whole, write_npz_streaming
from codonlm.errors import UserError
from codonlm.io import sha256_file, write_json

SPLITS = ("train", "val", "test")
_RENDER_EVERY = 2048  # windows


def split_of(protein: str, seed: int, val_frac: float, test_frac: float) -> str:
    """Split from a seeded hash of the protein: identical proteins always land together (no leak)."""
    digest = hashlib.blake2b(f"{seed}:{protein}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2**64
    if u < test_frac:
        return "test"
    if u < test_frac + val_frac:
        return "val"
    return "train"


def uncompressed_size(path: Path) -> int:
    """Size of the GenBank text: the gzip trailer's ISIZE for .gz (mod 4 GiB), else the file size."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return path.stat().st_size
        fh.seek(-4, os.SEEK_END)
        return struct.unpack("<I", fh.read(4))[0]


@dataclass
class SplitSink:
    """Windows and whole genes of one (dataset, split), spilled to the staging folder."""

    folder: Path
    window: int
    multi: bool
    max_chunks: int | None
    packer: WindowPacker = field(init=False)
    pending: list[list[Piece]] = field(default_factory=list)
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

    def add_gene(self, codon_ids: np.ndarray, name: str) -> None:
        self.add_genes([codon_ids], [name])

    def add_genes(self, genes: list[np.ndarray], names: list[str]) -> None:
        """Add genes (codon ids each) in order: one spill append for all of them, then pack their pieces."""
        if not genes:
            return
        lengths = [g.size + 2 for g in genes]
        flat = np.concatenate([frame_gene(g) for g in genes])
        self.genes += len(genes)
        self.target_tokens += flat.size - len(genes)
        self.gene_flat.append(flat)
        self.gene_lengths.append(np.array(lengths, dtype=np.int64))
        self.names.append(names)
        start = 0
        for size in lengths:
            pieces, lost = chunk_gene(flat[start : start + size], self.window, self.max_chunks)
            start += size
            self.lost_targets += lost
            for piece in pieces:
                closed = self.packer.place(piece)
                if closed is not None:
                    self.pending.append(closed)
        if len(self.pending) >= _RENDER_EVERY:
            self._render()

    def _render(self) -> None:
        if not self.pending:
            return
        batch = render(self.pending, self.window)
        self.pending = []
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
        self.pending.extend(self.packer.flush())
        self._render()
        for spill in (self.tokens, self.segments, self.positions, self.gene_flat, self.gene_lengths):
            spill.flush()

    def release(self) -> None:
        """Drop the windows and genes once written (counts and summary stay)."""
        for spill in (self.tokens, self.segments, self.positions, self.gene_flat, self.gene_lengths, self.names):
            spill.release()

    def summary(self) -> dict:
        windows = self.tokens.rows
        return {
            "genes": self.genes,
            "windows": windows,
            "target_tokens": self.target_tokens,
            "covered_targets": self.covered_targets,
            "lost_targets": self.lost_targets,
            "coverage": self.covered_targets / self.target_tokens if self.target_tokens else 1.0,
            "pad_fraction": self.pad_tokens / (windows * self.window) if windows else 0.0,
            "pad_only_windows": self.pad_only_windows,
            "windows_without_targets": self.windows_without_targets,
        }


def _offsets(sinks: list[SplitSink]):
    """gene_offsets chunks across sinks laid end to end."""
    base = 0
    yield np.zeros(1, dtype=np.int64)
    for sink in sinks:
        for lengths in sink.gene_lengths.chunks():
            ends = base + np.cumsum(lengths)
            if ends.size:
                base = int(ends[-1])
            yield ends


def _write_split(path: Path, sinks: list[tuple[int, SplitSink]], dataset_names: list[str]) -> None:
    """One NPZ from one or more (dataset index, sink) pairs, streamed chunk by chunk."""
    only = [s for _, s in sinks]
    n_windows = sum(s.tokens.rows for s in only)
    n_genes = sum(s.genes for s in only)
    n_gene_tokens = sum(s.gene_flat.rows for s in only)
    w = only[0].window
    names = np.concatenate([s.names.read() for s in only]) if n_genes else np.array([], dtype="<U1")
    columns = {
        "tokens": (np.uint8, (n_windows, w), (c for s in only for c in s.tokens.chunks())),
        "segment_ids": (np.int16, (n_windows, w), (c for s in only for c in s.segments.chunks())),
        "positions": (np.int32, (n_windows, w), (c for s in only for c in s.positions.chunks())),
        "window_dataset": (
            np.int16,
            (n_windows,),
            (np.full(s.tokens.rows, d, dtype=np.int16) for d, s in sinks),
        ),
        "dataset_names": whole(np.array(dataset_names, dtype=str)),
        "gene_tokens": (np.uint8, (n_gene_tokens,), (c for s in only for c in s.gene_flat.chunks(1 << 24))),
        "gene_offsets": (np.int64, (n_genes + 1,), _offsets(only)),
        "gene_dataset": (np.int16, (n_genes,), (np.full(s.genes, d, dtype=np.int16) for d, s in sinks)),
        "gene_names": whole(names),
    }
    write_npz_streaming(path, columns)


def _write_combined(path: Path, parts: list[tuple[int, Path, SplitSink]], dataset_names: list[str]) -> None:
    """One NPZ laying datasets' NPZs (written, their sinks released) end to end, streamed from those files."""
    readers = [(d, NpzReader(npz), sink) for d, npz, sink in parts]
    sinks = [sink for _, _, sink in parts]
    n_windows = sum(s.tokens.rows for s in sinks)
    n_genes = sum(s.genes for s in sinks)
    w = sinks[0].window

    def chained(name: str):
        return (chunk for _, reader, _ in readers for chunk in reader.chunks(name))

    def offsets():  # each dataset's gene_offsets less its leading 0, shifted past the datasets before it
        yield np.zeros(1, dtype=np.int64)
        base = 0
        for _, reader, sink in readers:
            skip = 1
            for chunk in reader.chunks("gene_offsets"):
                yield chunk[skip:] + base
                skip = 0
            base += sink.gene_flat.rows

    columns = {
        "tokens": (np.uint8, (n_windows, w), chained("tokens")),
        "segment_ids": (np.int16, (n_windows, w), chained("segment_ids")),
        "positions": (np.int32, (n_windows, w), chained("positions")),
        "window_dataset": (np.int16, (n_windows,), (np.full(s.tokens.rows, d, dtype=np.int16) for d, _, s in parts)),
        "dataset_names": whole(np.array(dataset_names, dtype=str)),
        "gene_tokens": (np.uint8, (sum(s.gene_flat.rows for s in sinks),), chained("gene_tokens")),
        "gene_offsets": (np.int64, (n_genes + 1,), offsets()),
        "gene_dataset": (np.int16, (n_genes,), (np.full(s.genes, d, dtype=np.int16) for d, _, s in parts)),
        # as np.concatenate of the datasets' names would: the widest string dtype
        "gene_names": (np.result_type(*(r.header("gene_names")[0] for _, r, _ in readers)), (n_genes,),
                       chained("gene_names")),
    }
    write_npz_streaming(path, columns)


def _integrity(splits: dict[str, dict]) -> dict:
    pad_only = sum(s["pad_only_windows"] for s in splits.values())
    no_targets = sum(s["windows_without_targets"] for s in splits.values())
    return {
        "pad_only_windows": pad_only,
        "windows_without_targets": no_targets,
        "per_split": {k: {"pad_only_windows": v["pad_only_windows"], "windows": v["windows"]} for k, v in splits.items()},
        "ok": pad_only == 0 and no_targets == 0,
    }


def _dataset_inputs(spec: DatasetSpec) -> list[dict]:
    out = []
    for f in spec.files:
        path = check_genbank_path(f)
        out.append(
            {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size,
             "uncompressed_bytes": uncompressed_size(path)}
        )
    return out


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
def prepare(cfg: Config, run_dir: Path | None = None, force: bool = False, show_progress: bool = True) -> dict:
    """Run data prep; returns the pipeline_prepare.json content. Raises UserError on bad input."""
    t0 = time.perf_counter()
    data = cfg.data
    out_root = Path(data.processed_dir)
    window = cfg.model.block_size + 1
    max_chunks = None if data.windows_per_seq == "auto" else int(data.windows_per_seq)
    multi = data.pack_mode == "multi"
    names = [d.name for d in data.datasets]
    inputs = {d.name: _dataset_inputs(d) for d in data.datasets}  # fail fast on missing/empty files

    out_root.mkdir(parents=True, exist_ok=True)
    staging = out_root / f".staging-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    report: dict = {"config_sha256": config_sha256(cfg), "block_size": cfg.model.block_size,
                    "pack_mode": data.pack_mode, "windows_per_seq": data.windows_per_seq,
                    "seed": cfg.outputs.seed, "datasets": {}, "timings_s": {}}
    try:
        written: dict[str, list[tuple[int, Path, SplitSink]]] = {s: [] for s in SPLITS}  # per dataset, for all/
        for d_index, spec in enumerate(data.datasets):
            t_ds = time.perf_counter()
            stats = ExtractionStats()
            split_sinks = {s: SplitSink(staging / "spill" / spec.name / s, window, multi, max_chunks) for s in SPLITS}
            proteins: dict[str, set[str]] = {s: set() for s in SPLITS}
            progress = tqdm(desc=f"prepare {spec.name}", unit=" CDS", disable=not show_progress, mininterval=2.0,
                            leave=False)
            for path in spec.files:
                for batch in extract_file_records(path, spec.min_len, spec.transl_table, stats):  # one record
                    genes = [batch.ids[a:b] for a, b in zip(batch.offsets, batch.offsets[1:], strict=False)]
                    gene_names = [f"{batch.record_id}|{name}" for name in batch.names]
                    by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
                    for i, protein in enumerate(batch.proteins()):
                        split = split_of(protein, cfg.outputs.seed, data.val_frac, data.test_frac)
                        proteins[split].add(hashlib.blake2b(protein.encode(), digest_size=8).digest())
                        by_split[split].append(i)
                    for split, members in by_split.items():
                        split_sinks[split].add_genes([genes[i] for i in members], [gene_names[i] for i in members])
                    progress.update(len(batch))
            progress.close()
            for w in stats.warnings:
                print(f"[prepare] warning: {w}", flush=True)
            if stats.kept == 0:
                raise UserError(
                    f"dataset '{spec.name}': no CDS kept from {', '.join(spec.files)} "
                    f"(dropped: {stats.as_dict()['dropped']}); check the files or lower min_len"
                )
            ds_dir = staging / spec.name
            ds_dir.mkdir(parents=True, exist_ok=True)
            split_summary = {}
            for s in SPLITS:
                sink = split_sinks[s]
                sink.close()
                _write_split(ds_dir / f"{s}.npz", [(d_index, sink)], names)
                sink.release()  # all/ reads the dataset's NPZ back, so memory does not grow with datasets
                written[s].append((d_index, ds_dir / f"{s}.npz", sink))
                split_summary[s] = sink.summary()
            report["datasets"][spec.name] = {
                "inputs": inputs[spec.name],
                "extraction": stats.as_dict(),
                "unique_proteins": {s: len(v) for s, v in proteins.items()},
                "splits": split_summary,
            }
            report["timings_s"][spec.name] = round(time.perf_counter() - t_ds, 3)
            print(
                f"[prepare] {spec.name}: kept {stats.kept} of {stats.cds_features} CDS "
                f"(dropped {stats.as_dict()['dropped_total']}), "
                + ", ".join(f"{s} {split_summary[s]['genes']} genes/{split_summary[s]['windows']} windows" for s in SPLITS),
                flush=True,
            )
        t_concat = time.perf_counter()
        (staging / "all").mkdir(parents=True, exist_ok=True)
        totals = {}
        for s in SPLITS:
            _write_combined(staging / "all" / f"{s}.npz", written[s], names)
            per = [sink.summary() for _, _, sink in written[s]]
            target = sum(p["target_tokens"] for p in per)
            covered = sum(p["covered_targets"] for p in per)
            windows = sum(p["windows"] for p in per)
            totals[s] = {
                "genes": sum(p["genes"] for p in per),
                "windows": windows,
                "target_tokens": target,
                "covered_targets": covered,
                "lost_targets": sum(p["lost_targets"] for p in per),
                "coverage": covered / target if target else 1.0,
                "pad_fraction": (sum(p["pad_fraction"] * p["windows"] for p in per) / windows) if windows else 0.0,
                "pad_only_windows": sum(p["pad_only_windows"] for p in per),
                "windows_without_targets": sum(p["windows_without_targets"] for p in per),
            }
        report["timings_s"]["concatenate"] = round(time.perf_counter() - t_concat, 3)
        report["splits"] = totals
        report["kept_cds"] = sum(v["extraction"]["kept"] for v in report["datasets"].values())
        report["dropped_cds"] = {
            r: sum(v["extraction"]["dropped"][r] for v in report["datasets"].values())
            for r in next(iter(report["datasets"].values()))["extraction"]["dropped"]
        }
        report["input_bytes"] = sum(i["bytes"] for v in inputs.values() for i in v)
        report["input_uncompressed_bytes"] = sum(i["uncompressed_bytes"] for v in inputs.values() for i in v)
        integrity = _integrity(totals)
        if run_dir is not None:
            write_json(Path(run_dir) / "integrity.json", integrity)
        if not integrity["ok"] and not force:
            raise UserError(
                f"integrity check failed: {integrity['pad_only_windows']} pad-only windows, "
                f"{integrity['windows_without_targets']} windows without targets (see integrity.json); "
                "re-run with --force to keep going, or adjust block_size / windows_per_seq"
            )
        # Everything is written: move it into place (old outputs stay intact until here).
        for sub in [*names, "all"]:
            dest = out_root / sub
            dest.mkdir(parents=True, exist_ok=True)
            for s in SPLITS:
                os.replace(staging / sub / f"{s}.npz", dest / f"{s}.npz")
        save_itos(cfg.outputs.itos_path)
        if Path(cfg.outputs.itos_path).resolve() != (out_root / "itos.json").resolve():
            save_itos(out_root / "itos.json")
        manifest = {
            "config_sha256": report["config_sha256"],
            "vocab_size": VOCAB_SIZE,
            "inputs": inputs,
            "outputs": {
                str(out_root / sub / f"{s}.npz"): sha256_file(out_root / sub / f"{s}.npz")
                for sub in [*names, "all"] for s in SPLITS
            },
        }
        write_json(out_root / "manifest.json", manifest)
        report["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
        mb = report["input_uncompressed_bytes"] / 1e6
        report["throughput_mb_per_s"] = round(mb / report["timings_s"]["total"], 2)
        if run_dir is not None:
            write_json(Path(run_dir) / "pipeline_prepare.json", report)
            write_json(Path(run_dir) / "dataset_manifest.json", manifest)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)
