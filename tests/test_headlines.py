"""The closing lines of ./main.sh read what the stages wrote and name what is missing."""

from __future__ import annotations

from pathlib import Path

from codonlm.headlines import headline_lines
from codonlm.io import write_json


def _lines(tmp_path: Path) -> list[str]:
    run = tmp_path / "runs" / "r1"
    return headline_lines("r1", run, tmp_path / "ckpt" / "r1", tmp_path / "scores" / "r1", tmp_path / "reports")


def test_missing_stages_are_named_not_guessed(tmp_path):
    text = "\n".join(_lines(tmp_path))
    assert "not evaluated yet" in text
    assert "not generated yet" in text
    assert "0 step(s) done" in text
    assert "stage2/: not run yet" in text
    assert "report.html (not written yet)" in text


def test_numbers_come_from_the_stage_files(tmp_path):
    run, scores, reports = tmp_path / "runs" / "r1", tmp_path / "scores" / "r1", tmp_path / "reports" / "r1"
    write_json(run / "evaluate" / "metrics.json", {
        "split": "test", "genes": 1318, "model": {"perplexity": 38.0}, "best_baseline": "per_genome_unigram",
        "baselines": {"per_genome_unigram": {"perplexity": 47.5}, "unigram": {"perplexity": 53.8}}})
    write_json(scores / "gen_prefix" / "summary.json", {"summary": [
        {"genome": "all", "temperature": "real", "frac_valid_orf": 0.997, "codon_js": 0.0017},
        {"genome": "all", "temperature": 1.0, "frac_valid_orf": 0.786, "codon_js": 0.0193},
        {"genome": "ecoli", "temperature": 1.0, "frac_valid_orf": 0.5, "codon_js": 0.9}]})
    write_json(run / "analysis" / "summary" / "summary.json", {})
    write_json(run / "analysis" / "probe_linear" / "summary.json", {})
    write_json(reports / "stage2" / "summary.json", {"tasks": {"genome_id": {"models": {
        "probe_logreg": {"macro_f1": 0.91}, "mlp": {"macro_f1": 0.93},
        "kmer_logreg": {"macro_f1": 0.88}, "kmer_xgb": {"macro_f1": 0.95}}}}})
    (run / "report.html").write_text("<html></html>")
    text = "\n".join(_lines(tmp_path))
    assert "test perplexity 38.00 vs best baseline per_genome_unigram 47.50 (0.800x) over 1,318 genes" in text
    assert "real genes: valid ORF 1.00, codon JS 0.0017; T=1.0: valid ORF 0.79, codon JS 0.0193" in text
    assert "0.9000" not in text  # per-genome rows are not the headline
    assert "2 step(s) done (probe_linear, summary)" in text
    assert "genome_id: macro-F1 mlp 0.930 vs kmer_xgb 0.950" in text
    assert "not written yet" not in text
