"""Prefix generation's length-cap hits are shown beside the valid-ORF share wherever that share is: the closing
summary of ./main.sh, report.html and the temperature trade-off figure (a low valid-ORF share at T = 0.7 is
explained by genes the cap cut before the model wrote <EOS_CDS>)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd

from codonlm.analysis.report import generation_part
from codonlm.evaluate.generation import SUMMARY_COLUMNS, tradeoff_figure
from codonlm.headlines import headline_lines
from codonlm.io import write_json

TEMPS = [0.7, 1.0, 1.3]
CAP = {0.7: 0.76, 1.0: 0.31, 1.3: 0.12}
VALID = {0.7: 0.39, 1.0: 0.62, 1.3: 0.41}


def _summary_rows() -> list[dict]:
    rows = []
    for genome in ("g1", "g2", "all"):
        for t in ["real", *TEMPS]:
            row = dict.fromkeys(SUMMARY_COLUMNS, 0.5)
            row.update(genome=genome, temperature=t, n=50, frac_valid_orf=1.0 if t == "real" else VALID[t],
                       frac_hit_cap=0.0 if t == "real" else CAP[t] + (0.05 if genome == "g1" else 0.0))
            rows.append(row)
    return rows


def _write_generation(scores: Path) -> None:
    write_json(scores / "gen_prefix" / "summary.json", {
        "n_prompts": 100, "settings": {"prompt_codons": 10, "length_factor": 2.0, "max_codons": 1500},
        "summary": _summary_rows()})


def test_closing_summary_names_cap_hits_beside_valid_orf(tmp_path):
    scores = tmp_path / "scores" / "r1"
    _write_generation(scores)
    text = "\n".join(headline_lines("r1", tmp_path / "runs" / "r1", tmp_path / "ckpt" / "r1", scores,
                                    tmp_path / "reports"))
    assert "T=0.7: valid ORF 0.39, hit length cap 0.76, codon JS 0.5000" in text
    assert "T=1.3: valid ORF 0.41, hit length cap 0.12" in text
    assert "real genes: valid ORF 1.00, codon JS" in text  # real genes are not capped: no cap figure for them


def test_report_table_has_cap_hits_next_to_valid_orf(tmp_path):
    scores = tmp_path / "scores" / "r1"
    _write_generation(scores)
    html = generation_part("r1", scores)
    header = html[html.index("<table>"):html.index("</tr>")]
    assert header.index("frac_valid_orf") < header.index("frac_hit_cap")
    cells = header.split("</th>")
    assert cells[[c.endswith("frac_valid_orf") for c in cells].index(True) + 1].endswith("frac_hit_cap")
    assert '<td class="num">0.76</td>' in html and "length cap (2x the real gene, at most 1,500 codons)" in html


def test_tradeoff_figure_has_a_cap_hit_panel():
    summary = pd.DataFrame(_summary_rows())
    fig = tradeoff_figure(summary, TEMPS)
    (ax,) = [a for a in fig.axes if "length cap" in a.get_ylabel()]
    (pooled,) = [ln for ln in ax.get_lines() if ln.get_label() == "all"]
    np.testing.assert_allclose(pooled.get_ydata(), [CAP[t] for t in TEMPS])
    assert list(pooled.get_xdata()) == TEMPS
