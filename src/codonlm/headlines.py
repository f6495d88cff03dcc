"""The closing lines of ./main.sh: where each output of a run is, and its headline numbers.

Read from the files the stages wrote (never recomputed), so the lines say what is on disk; a stage
that has not run yet is named as missing rather than guessed.
"""

from __future__ import annotations

from pathlib import Path

from codonlm.io import read_json
from codonlm.stage2.classifiers import KMER_MODELS


def _heldout(run_dir: Path) -> str:
    m = read_json(run_dir / "evaluate" / "metrics.json")
    if not m:
        return "not evaluated yet"
    ppl, best = m["model"]["perplexity"], m["best_baseline"]
    base = m["baselines"][best]["perplexity"]
    return (f"{m['split']} perplexity {ppl:.2f} vs best baseline {best} {base:.2f} ({ppl / base:.3f}x) "
            f"over {m['genes']:,} genes")


def _generation(scores_dir: Path) -> str:
    s = read_json(scores_dir / "gen_prefix" / "summary.json")
    if not s:
        return "not generated yet"
    rows = [r for r in s.get("summary", []) if r.get("genome") == "all"]
    parts = []
    for r in rows:
        t = r["temperature"]
        label = "real genes" if str(t) == "real" else f"T={t}"
        cap = "" if str(t) == "real" or r.get("frac_hit_cap") is None else f", hit length cap {r['frac_hit_cap']:.2f}"
        parts.append(f"{label}: valid ORF {r['frac_valid_orf']:.2f}{cap}, codon JS {r['codon_js']:.4f}")
    return "; ".join(parts)


def _model(checkpoints: Path) -> str:
    """The checkpoints that exist, and what a missing best.pt means."""
    best, last = checkpoints / "best.pt", checkpoints / "last.pt"
    if best.is_file():
        return f"{best}" + (" (last.pt to resume)" if last.is_file() else "")
    if last.is_file():
        return f"{last} only, no best.pt (training stopped before an epoch ended, or diverged: see log.txt)"
    return f"{checkpoints}/: no checkpoint yet"


def _stage2(stage2_dir: Path) -> list[str]:
    s = read_json(stage2_dir / "summary.json")
    if not s:
        return ["not run yet"]
    lines = []
    for task, t in (s.get("tasks") or {}).items():
        f1 = {m: v.get("macro_f1") for m, v in (t.get("models") or {}).items() if v.get("macro_f1") is not None}
        if not f1:
            continue
        emb = {m: v for m, v in f1.items() if m not in KMER_MODELS}
        kmer = {m: v for m, v in f1.items() if m in KMER_MODELS}
        best = [f"{m} {v:.3f}" for group in (emb, kmer) if group for m, v in [max(group.items(), key=lambda kv: kv[1])]]
        lines.append(f"{task}: macro-F1 " + " vs ".join(best))
    return lines or ["no task results"]


def headline_lines(run_id: str, run_dir: Path, checkpoints: Path, scores: Path, reports: Path) -> list[str]:
    """Where every output of the run is, with the numbers a reader looks for first."""
    analysis = run_dir / "analysis"
    steps = sorted(p.parent.name for p in analysis.glob("*/summary.json"))
    stage2 = reports / run_id / "stage2"
    report = run_dir / "report.html"
    return [
        f"=== outputs of run {run_id}:",
        f"    log, config, stage stamps  {run_dir}/ (log.txt, config.yaml, stages/)",
        f"    model                      {_model(checkpoints)}",
        f"    training curves            {scores}/curves.csv",
        f"    held-out evaluation        {run_dir}/evaluate/: {_heldout(run_dir)}",
        f"    generated genes            {scores}/gen_prefix/: {_generation(scores)}",
        f"    interpretability           {analysis}/: {len(steps)} step(s) done"
        + (f" ({', '.join(steps)})" if steps else ""),
        f"    stage-2 classifiers        {stage2}/: " + "; ".join(_stage2(stage2)),
        f"    report                     {report}" + ("" if report.is_file() else " (not written yet)"),
    ]
