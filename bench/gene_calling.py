"""Gene calling on bare assemblies: each default genome's sequence alone (its annotation stripped) through
the `fasta:` path (pyrodigal, as prepare runs it), against that genome's own annotation.

Per genome: genes called and kept (the extraction's screens, min_len 1), the share of annotated CDS
(those the GenBank path keeps) whose stop codon a kept call ends on, on the same strand (stop recall);
the same for the annotated CDS of at least 30 sense codons (those tiny_cpu's min_len 30 keeps: the corpus),
the same for the annotated CDS whose /product names a function (not "hypothetical protein", "predicted
protein", "unknown", "uncharacterized": old annotations hold many short ORFs no caller would confirm), the share whose start matches too (exact start), and
gene-calling CPU seconds per Mb (reading the FASTA, training, finding; each step's CPU seconds too). With
--prepare, also `codonlm prepare` of the whole default corpus both ways on --workers processes, each into a
fresh folder, wall and CPU seconds (this process's and its workers'): the FASTA path's time over the GenBank path's; then
the FASTA path again with another test_frac, which reads the genes the first run called (processed/gene_calls).

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


# /product values that name no function: "hypothetical protein" (NCBI), "predicted protein" (M. acetivorans),
# "unknown" (M. thermautotrophicus), "uncharacterized protein"
_NO_FUNCTION = ("hypothetical", "predicted protein", "unknown", "uncharacterized")


def _named_products(genbank: Path) -> set[tuple[str, str]]:
    """(record, locus_tag) of the CDS whose /product names a function (see _NO_FUNCTION; not absent)."""
    import gb_io

    from codonlm.io import open_binary

    named = set()
    with open_binary(genbank) as fh:
        for record in gb_io.iter(fh):
            for feature in (f for f in record.features if f.kind == "CDS"):
                quals = {q.key: q.value for q in feature.qualifiers}
                product = (quals.get("product") or "").lower()
                if product and not any(word in product for word in _NO_FUNCTION):
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
    """Called genes of `fasta` against the annotation in `genbank` (see the module docstring), and the CPU
    seconds of each step of calling (reading the FASTA, training Prodigal, finding genes)."""
    from codonlm.data.assembly import called_records, find_genes, gene_finder, read_contigs
    from codonlm.data.genbank import ExtractionStats, extract_file_records, extract_record_cds

    batches = list(extract_file_records(genbank, 1, table, ExtractionStats()))
    annotated = [e for batch in batches for e in _ends(batch)]
    corpus = {three for batch in extract_file_records(genbank, 30, table, ExtractionStats()) for three, _ in _ends(batch)}
    named = _named_products(genbank)
    is_named = [(batch.record_id, name) in named for batch in batches for name in batch.names]
    cpu = [time.process_time()]
    contigs = read_contigs(str(fasta))
    cpu.append(time.process_time())
    finder, mode = gene_finder(contigs, "auto", table, str(fasta), [])
    cpu.append(time.process_time())
    genes = find_genes(contigs, finder)
    cpu.append(time.process_time())
    stats = ExtractionStats()
    called = [e for r in called_records(contigs, genes) for e in _ends(extract_record_cds(r, 1, table, stats, str(fasta)))]
    stops = {three: five for three, five in called}
    found = [three in stops for three, _ in annotated]
    kept = [f for f, (three, _) in zip(found, annotated, strict=True) if three in corpus]  # tiny_cpu's (min_len 30)
    found_named = [f for f, n in zip(found, is_named, strict=True) if n]
    exact = [stops.get(three) == five for three, five in annotated]
    mb = sum(len(c.seq) for c in contigs) / 1e6
    return {"genome": genbank.name.split(".gb")[0], "mode": mode, "bases": mb * 1e6,
            "annotated": len(annotated), "called": len(genes), "kept": len(called),
            "stop_recall": sum(found) / len(annotated), "exact_start": sum(exact) / len(annotated),
            "min30": len(kept), "stop_recall_min30": sum(kept) / max(1, len(kept)),
            "named": len(found_named), "stop_recall_named": sum(found_named) / max(1, len(found_named)),
            "s_per_mb": (cpu[3] - cpu[0]) / mb, "cpu_read": cpu[1] - cpu[0], "cpu_train": cpu[2] - cpu[1],
            "cpu_find": cpu[3] - cpu[2]}


def _cpu_seconds() -> float:
    """CPU seconds of this process (the writer): its workers' are in prepare's report (worker_cpu_s)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _prepare_seconds(config: Path, processed: Path, workers: int, assemblies: Path | None,
                     test_frac: float | None = None) -> tuple[float, float, float]:
    """Wall and CPU seconds of one prepare of `config` into `processed` (FASTA paths moved to `assemblies`;
    test_frac: another split of the same genomes), and its workers' wall seconds summed (over the prepare's
    wall seconds: how many ran side by side)."""
    from codonlm.config import load_config
    from codonlm.data.prepare import prepare

    cfg = load_config(config)
    cfg.data.processed_dir = str(processed)
    if test_frac is not None:
        cfg.data.test_frac = test_frac
    for spec in cfg.data.datasets:
        if assemblies is not None and spec.fasta is not None:
            spec.fasta = str(assemblies / Path(spec.fasta).name)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    with contextlib.redirect_stdout(io.StringIO()):
        report = prepare(cfg, show_progress=False, workers=workers)
    return (time.perf_counter() - t0, _cpu_seconds() - cpu0 + sum(report["worker_cpu_s"].values()),
            sum(report["timings_s"][name] for name in report["datasets"]))


def _time_prepare(tmp: Path, workers: int) -> None:
    """prepare of the default corpus from GenBank, then from bare FASTA (genes called), then the FASTA again
    with another test_frac (the calls kept from the first run): wall and CPU seconds of each."""
    root = ROOT / "configs"
    genbank = _prepare_seconds(root / "tiny_cpu.yaml", tmp / "p1", workers, None)
    called = _prepare_seconds(root / "tiny_cpu_assemblies.yaml", tmp / "p2", workers, tmp / "assemblies")
    again = _prepare_seconds(root / "tiny_cpu_assemblies.yaml", tmp / "p2", workers, tmp / "assemblies", 0.1)
    print(f"prepare on {workers} workers, wall (CPU) seconds: GenBank {genbank[0]:.1f} ({genbank[1]:.1f}), "
          f"bare FASTA {called[0]:.1f} ({called[1]:.1f}) = {called[0] / genbank[0]:.1f}x wall, "
          f"{called[1] / genbank[1]:.1f}x CPU; FASTA again with its calls kept (test_frac 0.1) {again[0]:.1f} "
          f"({again[1]:.1f}) = {again[0] / genbank[0]:.1f}x wall; workers side by side (their wall summed over "
          f"prepare's): GenBank {genbank[2] / genbank[0]:.2f}, FASTA {called[2] / called[0]:.2f}")


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
        print("| genome | Mb | mode | annotated CDS | called | kept | stop recall | CDS >= 30 codons | stop recall "
              "(>= 30) | named-product CDS | stop recall (named) | exact start | s per Mb | CPU s read/train/find |\n"
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for name in GENOMES:
            fasta = assembly_path(tmp, name)
            write_assembly(raw / name, fasta)
            rows.append(compare(raw / name, fasta))
            r = rows[-1]
            print(f"| {r['genome']} | {r['bases'] / 1e6:.2f} | {r['mode']} | {r['annotated']:,} | {r['called']:,} | "
                  f"{r['kept']:,} | {r['stop_recall']:.3f} | {r['min30']:,} | {r['stop_recall_min30']:.3f} | "
                  f"{r['named']:,} | {r['stop_recall_named']:.3f} | {r['exact_start']:.3f} | {r['s_per_mb']:.2f} | "
                  f"{r['cpu_read']:.1f}/{r['cpu_train']:.1f}/{r['cpu_find']:.1f} |", flush=True)
        print(f"lowest stop recall {min(r['stop_recall'] for r in rows):.3f} (CDS >= 30 codons: "
              f"{min(r['stop_recall_min30'] for r in rows):.3f}; named products: "
              f"{min(r['stop_recall_named'] for r in rows):.3f}); {sum(r['bases'] for r in rows) / 1e6:.1f} Mb called "
              f"in {sum(r['s_per_mb'] * r['bases'] / 1e6 for r in rows):.1f} CPU s")
        if args.prepare:
            _time_prepare(Path(tmp), args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
