"""Gene calling on bare assemblies: each default genome's sequence alone (its annotation stripped) through
the `fasta:` path (pyrodigal, as prepare runs it), against that genome's own annotation.

Per genome: genes called and kept (the extraction's screens, min_len 1), the share of annotated CDS
(those the GenBank path keeps) whose stop codon a kept call ends on, on the same strand (stop recall),
the same for the annotated CDS with a named /product (not "hypothetical protein": old annotations hold
many short ORFs no caller would confirm), the share whose start matches too (exact start), and
gene-calling seconds per Mb (reading the FASTA, training, calling). With --prepare, also `codonlm prepare` of the whole default corpus both ways on
--workers processes, each into a fresh folder: the FASTA path's time over the GenBank path's.

    python bench/gene_calling.py                  # about a minute on 2 cores
    python bench/gene_calling.py --prepare --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _named_products(genbank: Path) -> set[tuple[str, str]]:
    """(record, locus_tag) of the CDS whose /product names a function (not hypothetical, not absent)."""
    import gb_io

    from codonlm.io import open_binary

    named = set()
    with open_binary(genbank) as fh:
        for record in gb_io.iter(fh):
            for feature in (f for f in record.features if f.kind == "CDS"):
                quals = {q.key: q.value for q in feature.qualifiers}
                if quals.get("product") and "hypothetical" not in quals["product"].lower():
                    named.add((record.name, quals.get("locus_tag")))
    return named


def _ends(batch) -> list[tuple[tuple, tuple]]:
    """((record, strand, 3' end), (record, strand, 5' end)) of each CDS of a RecordCDS, 0-based genome positions."""
    out = []
    for segs in batch.segments:
        first, last = segs[0], segs[-1]
        three = last.end if last.strand == 1 else last.start
        five = first.start if first.strand == 1 else first.end
        out.append(((batch.record_id, last.strand, three), (batch.record_id, first.strand, five)))
    return out


def compare(genbank: Path, fasta: Path, table: int = 11) -> dict:
    """Called genes of `fasta` against the annotation in `genbank` (see the module docstring)."""
    from codonlm.data.assembly import call_genes
    from codonlm.data.genbank import ExtractionStats, extract_file_records, extract_record_cds

    batches = list(extract_file_records(genbank, 1, table, ExtractionStats()))
    annotated = [e for batch in batches for e in _ends(batch)]
    named = _named_products(genbank)
    is_named = [(batch.record_id, name) in named for batch in batches for name in batch.names]
    t0 = time.perf_counter()
    records, provenance = call_genes(str(fasta), "auto", table, [])
    seconds = time.perf_counter() - t0
    stats = ExtractionStats()
    called = [e for r in records for e in _ends(extract_record_cds(r, 1, table, stats, str(fasta)))]
    stops = {three: five for three, five in called}
    found = [three in stops for three, _ in annotated]
    found_named = [f for f, n in zip(found, is_named, strict=True) if n]
    exact = [stops.get(three) == five for three, five in annotated]
    return {"genome": genbank.name.split(".gb")[0], "mode": provenance["mode"], "bases": provenance["bases"],
            "annotated": len(annotated), "called": provenance["called"], "kept": len(called),
            "stop_recall": sum(found) / len(annotated), "exact_start": sum(exact) / len(annotated),
            "named": len(found_named), "stop_recall_named": sum(found_named) / max(1, len(found_named)),
            "s_per_mb": seconds / (provenance["bases"] / 1e6)}


def _prepare_seconds(config: Path, processed: Path, workers: int, assemblies: Path | None) -> float:
    """Wall seconds of one prepare of `config` into `processed` (FASTA paths moved to `assemblies`)."""
    from codonlm.config import load_config
    from codonlm.data.prepare import prepare

    cfg = load_config(config)
    cfg.data.processed_dir = str(processed)
    for spec in cfg.data.datasets:
        if assemblies is not None and spec.fasta is not None:
            spec.fasta = str(assemblies / Path(spec.fasta).name)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        prepare(cfg, show_progress=False, workers=workers)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", default=str(ROOT / "data" / "raw"), help="the default corpus (fetch-data)")
    p.add_argument("--prepare", action="store_true", help="also time prepare of the corpus both ways")
    p.add_argument("--workers", type=int, default=2, help="prepare workers for --prepare")
    args = p.parse_args(argv)
    from codonlm.data.fetch import GENOMES, assembly_path, write_assembly

    raw = Path(args.raw)
    with tempfile.TemporaryDirectory(prefix="codonlm-genecall-") as tmp:
        rows = []
        print("| genome | Mb | mode | annotated CDS | called | kept | stop recall | named-product CDS | "
              "stop recall (named) | exact start | s per Mb |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in GENOMES:
            fasta = assembly_path(tmp, name)
            write_assembly(raw / name, fasta)
            rows.append(compare(raw / name, fasta))
            r = rows[-1]
            print(f"| {r['genome']} | {r['bases'] / 1e6:.2f} | {r['mode']} | {r['annotated']:,} | {r['called']:,} | "
                  f"{r['kept']:,} | {r['stop_recall']:.3f} | {r['named']:,} | {r['stop_recall_named']:.3f} | "
                  f"{r['exact_start']:.3f} | {r['s_per_mb']:.2f} |", flush=True)
        print(f"lowest stop recall {min(r['stop_recall'] for r in rows):.3f} (named products: "
              f"{min(r['stop_recall_named'] for r in rows):.3f}); "
              f"{sum(r['bases'] for r in rows) / 1e6:.1f} Mb called in "
              f"{sum(r['s_per_mb'] * r['bases'] / 1e6 for r in rows):.1f} s")
        if args.prepare:
            genbank = _prepare_seconds(ROOT / "configs" / "tiny_cpu.yaml", Path(tmp) / "p1", args.workers, None)
            called = _prepare_seconds(ROOT / "configs" / "tiny_cpu_assemblies.yaml", Path(tmp) / "p2", args.workers,
                                      Path(tmp) / "assemblies")
            print(f"prepare on {args.workers} workers: GenBank {genbank:.1f} s, bare FASTA {called:.1f} s "
                  f"= {called / genbank:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
