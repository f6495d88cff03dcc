"""Variant scans of many genes, streamed: a table (TSV, CSV or JSON lines), heatmaps and a summary.

Rows are written as each position is scanned, so memory does not grow with the number of
variants; a table written to a file lands atomically (temporary file, renamed when complete).
Next to `--out scan.csv`: `scan.summary.json` (counts and mean LLR per kind, per gene and overall)
and `scan.<gene id>.png` heatmaps (position x codon, codons grouped by amino acid).
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from codonlm.data.codons import CODON_OFFSET, CODONS, ITOS, as_codon_ids, genetic_code
from codonlm.errors import UserError
from codonlm.evaluate.variants import KINDS, VariantScanner
from codonlm.io import atomic_path, save_figure, write_json
from codonlm.log import log, progress

COLUMNS = ("id", "codon_position", "wt_codon", "mut_codon", "wt_aa", "mut_aa", "kind", "llr")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def table_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"--out {path}: unknown table format '{suffix}'; use .csv, .tsv or .jsonl")
    return FORMATS[suffix]


class RowWriter:
    """Streams variant rows to a text stream as TSV, CSV or JSON lines."""

    def __init__(self, stream, fmt: str):
        self.stream, self.fmt = stream, fmt
        if fmt != "jsonl":
            self.csv = csv.writer(stream, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
            self.csv.writerow(COLUMNS)

    def write(self, rows: list[tuple]) -> None:
        if self.fmt == "jsonl":
            self.stream.writelines(json.dumps(dict(zip(COLUMNS, r, strict=True))) + "\n" for r in rows)
        else:
            self.csv.writerows(r[:-1] + (f"{r[-1]:.6f}",) for r in rows)


class KindMeans:
    """Running count and mean LLR per variant kind."""

    def __init__(self):
        self.count, self.total = np.zeros(len(KINDS), np.int64), np.zeros(len(KINDS))

    def add(self, kinds: np.ndarray, llr: np.ndarray) -> None:
        np.add.at(self.count, kinds, 1)
        np.add.at(self.total, kinds, llr)

    def merge(self, other: KindMeans) -> None:
        self.count += other.count
        self.total += other.total

    def as_dict(self) -> dict:
        return {k: {"variants": int(n), "mean_llr": float(t / n) if n else None}
                for k, n, t in zip(KINDS, self.count, self.total, strict=True)}


def parse_region(text: str | None) -> tuple[int, int] | None:
    """'START-END' (1-based codon positions, inclusive; END may be omitted) -> (start, end)."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d*)\s*", text)
    if not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(2)) < int(m.group(1))):
        raise UserError(f"--region '{text}': expected START-END codon positions (1-based, START <= END), "
                        "such as 10-120 or 50-")
    return int(m.group(1)), int(m.group(2)) if m.group(2) else 10**12


def scan_records(model, records: list[tuple[str, str]], stream=None, out_path: str | Path | None = None,
                 fmt: str = "tsv", llr: str = "exact", region: tuple[int, int] | None = None,
                 kinds: list[str] | None = None, stride: int | None = None, table_id: int = 11,
                 max_tokens: int = 8192, heatmaps: int = 20, show_progress: bool = True,
                 host: int | None = None, amp: bool = False) -> dict:
    """Scan every record (name, DNA); rows go to out_path (atomically) or to `stream`. host: the host token
    id of a host-conditioned model; amp: forward passes under bf16 autocast.

    Returns the summary (also written as <out>.summary.json): variants and mean LLR per kind,
    per gene and overall, codons scanned per second.
    """
    scanner = VariantScanner(model, llr=llr, kinds=kinds, stride=stride, max_tokens=max_tokens, table_id=table_id,
                             host=host, amp=amp)
    plan = [(name, as_codon_ids(dna).astype(np.uint8), scan_positions(name, len(dna) // 3, region))
            for name, dna in records]
    t0, plotting = time.perf_counter(), 0.0
    overall, per_gene = KindMeans(), []
    with ExitStack() as stack:
        if out_path is not None:
            fmt = table_format(out_path)
            stream = stack.enter_context(open(stack.enter_context(atomic_path(out_path)), "w"))
        writer = RowWriter(stream or sys.stdout, fmt)
        bar = stack.enter_context(progress(total=sum(len(p) for _, _, p in plan), desc=f"[mutate {llr}]",
                                           unit="codon", disable=not show_progress))
        for g, (name, codons, positions) in enumerate(plan):
            gene_means = KindMeans()
            grid = np.full((codons.size, len(CODONS)), np.nan)
            for s in scanner.scan(codons, positions):
                writer.write(_rows(name, s, table_id))
                gene_means.add(s.kinds, s.llr)
                grid[s.position - 1, s.alts - CODON_OFFSET] = s.llr
                bar.update(1)
            overall.merge(gene_means)
            per_gene.append({"id": name, "n_codons": int(codons.size), "codons_scanned": len(positions),
                             "by_kind": gene_means.as_dict()})
            if out_path is not None and g < heatmaps:
                t_plot = time.perf_counter()
                plot_heatmap(name, codons, grid, llr, _sibling(out_path, f"{_safe(name)}.png"), table_id)
                plotting += time.perf_counter() - t_plot
    seconds = time.perf_counter() - t0 - plotting
    scanned = sum(len(p) for _, _, p in plan)
    summary = {"llr": llr, "genes": len(plan), "codons_scanned": scanned, "variants": int(overall.count.sum()),
               "seconds": round(seconds, 2), "codons_per_s": round(scanned / max(seconds, 1e-9), 2),
               "heatmap_seconds": round(plotting, 2),
               "stride": scanner.stride, "block_size": scanner.block,
               "precision": "bfloat16" if amp else "float32", "by_kind": overall.as_dict(),
               "per_gene": per_gene}
    if out_path is not None:
        write_json(_sibling(out_path, "summary.json"), summary)
    means = ", ".join(f"{k} {v['mean_llr']:.3f}" for k, v in summary["by_kind"].items() if v["variants"])
    log(f"[mutate] {llr}: {summary['genes']} gene(s), {scanned} codons, {summary['variants']} variants in "
        f"{seconds:.1f} s ({summary['codons_per_s']:.1f} codons/s; heatmaps {plotting:.1f} s more); mean LLR {means}"
        + (f"; table {out_path}" if out_path is not None else ""))
    return summary


def scan_positions(name: str, n_codons: int, region: tuple[int, int] | None) -> list[int]:
    """The 1-based codon positions of record `name` that `region` selects (all without one)."""
    if region is None:
        return list(range(1, n_codons + 1))
    start, end = region
    if start > n_codons:
        raise UserError(f"record '{name}' has {n_codons} codons; --region {start}-... selects none of them "
                        "(scan it without --region or pick a smaller START)")
    return list(range(start, min(end, n_codons) + 1))


def _rows(name: str, s, table_id: int) -> list[tuple]:
    aa = genetic_code(table_id).aa
    wt_codon, wt_aa = ITOS[s.wt], chr(aa[s.wt])
    return [(name, s.position, wt_codon, ITOS[alt], wt_aa, chr(aa[alt]), KINDS[kind], float(v))
            for alt, kind, v in zip(s.alts, s.kinds, s.llr, strict=True)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80] or "gene"


def _sibling(out_path: str | Path, suffix: str) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.{suffix}")


def codon_order(table_id: int = 11) -> list[int]:
    """Codon indices (0..63) grouped by amino acid (alphabetical one-letter code, stops last)."""
    aa = genetic_code(table_id).aa[CODON_OFFSET:]
    return sorted(range(len(CODONS)), key=lambda c: (aa[c] == ord("*"), aa[c], CODONS[c]))


def plot_heatmap(name: str, codons: np.ndarray, grid: np.ndarray, llr: str, path: Path, table_id: int = 11) -> None:
    """LLR of every scanned substitution: codon position (x) by codon, grouped by amino acid (y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = codon_order(table_id)
    aa = genetic_code(table_id).aa[CODON_OFFSET:]
    values = grid[:, order].T  # [64, positions]
    finite = np.abs(values[np.isfinite(values)])
    limit = float(np.percentile(finite, 99)) if finite.size else 1.0
    n = codons.size
    fig, ax = plt.subplots(figsize=(min(24.0, 4.0 + n / 25), 9.0))
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")  # grey: not scanned
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest",
                      extent=(0.5, n + 0.5, len(order) - 0.5, -0.5))
    row_of = {c: r for r, c in enumerate(order)}
    wt_rows = [row_of[int(c) - CODON_OFFSET] for c in codons]
    ax.scatter(np.arange(1, n + 1), wt_rows, s=max(1.0, 60.0 / max(1.0, n / 50)), c="black", marker="s",
               label="wild-type codon", linewidths=0)
    ax.set_yticks(range(len(order)), [f"{CODONS[c]} {chr(aa[c])}" for c in order], fontsize=6)
    for r in range(1, len(order)):  # lines between amino-acid groups
        if aa[order[r]] != aa[order[r - 1]]:
            ax.axhline(r - 0.5, color="black", linewidth=0.3)
    ax.set_xlabel("codon position in the gene (1 = start codon)")
    ax.set_ylabel("substituted codon (amino acid), grouped by amino acid")
    ax.set_title(f"Single-codon substitutions in {name}: log-likelihood ratio mutant vs wild type ({llr})")
    bar = fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    bar.set_label("LLR (nats); < 0: the model finds the mutant less likely")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.06), fontsize=8, frameon=False)
    save_figure(fig, path)
