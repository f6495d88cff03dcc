"""Gene design (issue 21): synonym-constrained decoding back-translates exactly, constraints hold on real
proteins, beam >= greedy, metric known answers, bad input one line + exit 2, earlier designs kept."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from Bio.Seq import Seq

from codonlm import CodonLM
from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.codons import CODON_OFFSET, CODONS, STOI
from codonlm.data.prepare import prepare
from codonlm.errors import UserError
from codonlm.evaluate.constraints import breaches, enforce, parse_constraints
from codonlm.evaluate.design import clean_protein, is_ribosomal_protein
from codonlm.evaluate.designmetrics import cfd, minmax_profile, synonymous_frequencies
from codonlm.evaluate.seqmetrics import CAIReference


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_corpus, tiny_config, write_config):
    """A tiny run trained 6 steps on the fixture corpus (hosts ds0, ds1)."""
    tmp = tmp_path_factory.mktemp("design")
    files, _ = make_corpus(tmp, n_genes=20)
    raw = tiny_config(tmp, files, epochs=1, max_steps=6)
    cfg = parse_config(raw)
    prepare(cfg, show_progress=False)
    assert main(["train", "-c", str(write_config(tmp / "c.yaml", raw)), "--run-id", "designrun"]) == 0
    return tmp, CodonLM.load("designrun", runs_dir=tmp / "runs")


@pytest.fixture(scope="module")
def real_proteins(raw_corpus):
    """Real E. coli K-12 proteins (the first 12 kept CDS of 80-400 codons) from the default corpus."""
    from codonlm.data.genbank import extract_file

    out = {}
    for cds in extract_file(raw_corpus / "Escherichia_coli_K12_MG1655.gbk.gz", min_len=30):
        if 80 <= len(cds.ids) <= 400 and not cds.aa_exceptions and "*" not in cds.protein:
            out[cds.name] = cds.protein
        if len(out) == 12:
            break
    return out


def _encodes(dna: str, protein: str) -> bool:
    got = str(Seq(dna).translate(table=11))
    return got[1:] == protein[1:] + "*" and dna[:3] in ("ATG", "GTG", "TTG") and len(dna) == 3 * (len(protein) + 1)


def test_every_design_back_translates_greedy_beam_samples(run, real_proteins):
    _, lm = run
    greedy = lm.design(real_proteins, "ds0")
    beam = lm.design(dict(list(real_proteins.items())[:4]), "ds0", beam=4)
    samples = lm.design(dict(list(real_proteins.items())[:3]), "ds0", samples=5, temperature=1.2, seed=1)
    for table in (greedy, beam, samples):
        for r in table.itertuples():
            assert _encodes(r.dna, real_proteins[r.id]), r.id
    assert len(samples) == 15 and samples.groupby("id")["dna"].nunique().min() > 1  # samples differ
    again = lm.design(dict(list(real_proteins.items())[:3]), "ds0", samples=5, temperature=1.2, seed=1)
    assert list(again["dna"]) == list(samples["dna"])  # seeded


def test_beam_is_at_least_greedy_in_model_log_likelihood(run, real_proteins):
    _, lm = run
    some = dict(list(real_proteins.items())[:5])
    greedy = lm.design(some, "ds0").set_index("id")
    beam = lm.design(some, "ds0", beam=4).set_index("id")
    assert (beam["log_likelihood_per_codon"] >= greedy["log_likelihood_per_codon"] - 1e-6).all()
    assert (beam["log_likelihood_per_codon"] > greedy["log_likelihood_per_codon"] + 1e-6).any()


def test_long_protein_decodes_through_the_sliding_cache(run, real_proteins):
    _, lm = run
    long = "M" + "".join(list(real_proteins.values()))[:700]  # block_size is 64: 11x past it
    (row,) = lm.design(long, "ds0").itertuples()
    assert _encodes(row.dna, long)
    assert np.isfinite(row.log_likelihood_per_codon)


def test_constraints_hold_on_real_proteins(run, real_proteins, tmp_path):
    _, lm = run
    table = lm.design(real_proteins, "ds0", avoid="EcoRI,BsaI", gc="0.35-0.65", gc_window=60, max_homopolymer=5,
                      out_dir=tmp_path)
    for r in table.itertuples():
        assert _encodes(r.dna, real_proteins[r.id])
        rc = str(Seq(r.dna).reverse_complement())
        for site in ("GAATTC", "GGTCTC"):
            assert site not in r.dna and site not in rc, (r.id, site)
        windows = [sum(b in "GC" for b in r.dna[i : i + 60]) / 60 for i in range(len(r.dna) - 59)]
        assert 0.35 - 1e-9 <= min(windows) and max(windows) <= 0.65 + 1e-9
        assert not re.search(r"([ACGT])\1{5}", r.dna)
        assert r.unsatisfied == ""
    assert (table["changed_codons"] > 0).any()  # the tiny model's designs needed repair
    written = pd.read_csv(tmp_path / "designs.csv")
    assert list(written["dna"]) == list(table["dna"])


def test_unsatisfiable_constraints_are_named_and_exit_2_after_writing(run, tmp_path, capsys):
    tmp, _ = run
    fasta = tmp_path / "p.fa"
    fasta.write_text(">kk\nMKKKKKKKKKKKKKKKKKKKK\n>ok\nMSTAVLENPGLGRKLSDFGQETSYIEDNCNQNGAISLIFSLKEEVGALAKVLRLFEENDINLTHIESRPSRLKK\n")
    code = main(["design", "designrun", "--runs-dir", str(tmp / "runs"), "--protein", str(fasta), "--host", "ds0",
                 "--gc", "0.5-0.6", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "kk" in err and "GC 0.5-0.6" in err and "Traceback" not in err
    table = pd.read_csv(tmp_path / "out" / "designs.csv", keep_default_na=False)
    assert list(table["id"]) == ["kk", "ok"]  # both written
    assert table.set_index("id").loc["kk", "unsatisfied"] == "GC 0.5-0.6"  # poly-Lys AAR codons: GC <= 1/3


@pytest.mark.parametrize("text, message", [
    ("MKT*LLV", "inside the protein"),
    ("MKTXLLV", "'X' at residue 4"),
    ("MKTBLLV", "'B'"),
    ("MKTZLLV", "'Z'"),
    ("MKTJLLV", "'J'"),
    ("ATGAAACGCATTAGCACCACCATTACC", "looks like DNA"),
    ("  ", "empty protein"),
])  # fmt: skip
def test_bad_proteins_are_one_line_errors(text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        clean_protein("p1", text, "in.fa")


def test_lowercase_whitespace_and_trailing_stop_are_accepted():
    assert clean_protein("p", " mkt\n av l*\n", "in.fa") == "MKTAVL"


def test_bad_input_on_the_command_line(run, tmp_path, capsys):
    tmp, _ = run
    good = tmp_path / "good.fa"
    good.write_text(">a\nMSTAVLENPGLGRK\n")
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    base = ["design", "designrun", "--runs-dir", str(tmp / "runs")]
    cases = [
        (["--protein", str(good), "--host", "nohost"], "unknown host 'nohost'; this run knows: ds0, ds1"),
        (["--protein", str(good), "--host", "ds0", "--avoid", "NotAnEnzymeI"], "'NotAnEnzymeI' is neither"),
        (["--protein", str(empty), "--host", "ds0"], "no FASTA records"),
        (["--protein", str(good), "--host", "ds0", "--gc", "0.7-0.2"], "--gc '0.7-0.2'"),
    ]
    for extra, message in cases:
        assert main(base + extra + ["--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_bad_record_keeps_the_earlier_designs(run, tmp_path, capsys):
    tmp, _ = run
    fasta = tmp_path / "p.fa"
    fasta.write_text(">one\nMSTAVLENPG\n>two\nMKKLLVAG\n>bad\nMKT*LL\n>four\nMAAA\n")
    code = main(["design", "designrun", "--runs-dir", str(tmp / "runs"), "--protein", str(fasta), "--host", "ds1",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "record 'bad'" in capsys.readouterr().err
    assert list(pd.read_csv(tmp_path / "out" / "designs.csv")["id"]) == ["one", "two"]
    assert (tmp_path / "out" / "designs.fasta").read_text().count(">") == 2


def test_enzyme_names_and_sites_both_strands():
    c = parse_constraints("ecori,BsaI,GGATCC")
    assert c.sites == {"ecori": "GAATTC", "BsaI": "GGTCTC", "GGATCC": "GGATCC"}
    assert breaches("AAAGAGACCAAA", c) == ["avoid BsaI (GGTCTC)"]  # BsaI's site on the other strand


def test_cai_of_a_gene_of_only_best_codons_is_one():
    rng = np.random.default_rng(0)
    ref = [np.array([STOI[c] for c in rng.choice(CODONS, 300)]) for _ in range(20)]
    cai = CAIReference().fit(ref, 11)
    best = np.flatnonzero(cai.weights_ == 1.0) + CODON_OFFSET
    gene = rng.choice(best, 200)
    assert cai.cai(gene) == pytest.approx(1.0)
    assert cfd(gene, cai) == 0.0


def test_minmax_known_answer_and_cfd():
    # A host using GCT 3x, GCC 1x (Ala, 4-fold: GCA, GCG never seen -> pseudocount 0.5): frequencies
    ref = [np.array([STOI["GCT"]] * 3 + [STOI["GCC"]])]
    f = synonymous_frequencies(ref, 11)
    ala = {c: f[CODONS.index(c)] for c in ("GCT", "GCC", "GCA", "GCG")}
    assert ala["GCT"] == pytest.approx(3 / 5) and ala["GCA"] == pytest.approx(0.5 / 5)
    mean = 0.25  # mean synonym frequency of a 4-codon family
    all_best = minmax_profile(np.array([STOI["GCT"]] * 18), f, 11)
    all_rare = minmax_profile(np.array([STOI["GCA"]] * 18), f, 11)
    half = minmax_profile(np.array([STOI["GCT"]] * 9 + [STOI["GCC"]] * 9), f, 11)
    assert all_best.tolist() == pytest.approx([100.0]) and all_rare.tolist() == pytest.approx([-100.0])
    expected = 100 * ((0.6 + 0.2) / 2 - mean) / (0.6 - mean)  # mean actual 0.4 above the 0.25 mean
    assert half.tolist() == pytest.approx([expected])
    assert minmax_profile(np.array([STOI["GCT"]] * 20), f, 11).size == 3  # 20 - 18 + 1 windows
    cai = CAIReference().fit(ref, 11)  # w: GCT 1, GCC 1/3, GCA, GCG 0.5/3
    assert cfd(np.array([STOI[c] for c in ("GCT", "GCC", "GCA", "GCG")]), cai) == pytest.approx(0.5)


def test_ribosomal_products():
    assert is_ribosomal_protein("50S ribosomal subunit protein L2")
    assert is_ribosomal_protein("30S ribosomal protein S12")
    assert not is_ribosomal_protein("ribosomal protein S12 methylthiotransferase RimO")
    assert not is_ribosomal_protein("ribosomal-protein-alanine N-acetyltransferase")



def test_design_bench_writes_its_table_plot_and_report_section(run):
    tmp, _ = run
    from codonlm.analysis.report import design_part

    assert main(["design-bench", "designrun", "--runs-dir", str(tmp / "runs"), "--per-host", "5"]) == 0
    folder = tmp / "runs" / "designrun" / "design"
    summary = pd.read_csv(folder / "summary.csv")
    assert set(summary["method"]) == {"model_greedy", "model_sampling", "most_frequent", "usage_sampling", "uniform",
                                      "dnachisel_use_best_codon", "dnachisel_match_codon_usage"}
    assert set(summary["host"]) <= {"ds0", "ds1"} and len(summary) == 7 * summary["host"].nunique()  # hosts with test genes
    assert summary["codon_identity"].between(0, 1).all() and (summary["codon_identity_ci_low"]
                                                              <= summary["codon_identity"]).all()
    designs = pd.read_csv(folder / "designs.csv")
    assert (designs.groupby(["host", "method"]).size() > 0).all()
    assert (folder / "design_bench.png").stat().st_size > 10_000
    html = design_part("designrun", tmp / "runs" / "designrun")
    assert "Gene design from held-out proteins" in html and "model_greedy" in html and "data:image/png" in html


def test_design_bench_figure_labels_do_not_meet_and_dtw_has_its_unit():
    """The two panels' y-labels each stay within their own panel's height (they touched at the boundary), the
    legend clears the title, and the DTW axis says what the distance is in (dtaidistance: root of summed
    squared %MinMax differences along the warping path, %MinMax points)."""
    from codonlm.evaluate.design_bench import METHODS, bench_figure, summarise

    rng = np.random.default_rng(0)
    hosts = ["ecoli_k12", "bradyrhizobium_japonicum", "methanothermobacter_thermautotrophicus", "thermococcus_kodakaraensis"]
    rows = [{"host": h, "method": m, "protein": i, "length": 100, "codon_identity": rng.uniform(0.3, 0.6),
             "minmax_dtw": rng.uniform(100, 900), "csi_diff": 0.0, "gc3_diff": 0.0, "kn3_loglik_per_codon": -3.5}
            for h in hosts for m in METHODS for i in range(5)]
    fig = bench_figure(summarise(rows, n_boot=50))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    labels = [ax.yaxis.label.get_window_extent(renderer) for ax in axes]
    for ax, label in zip(axes, labels, strict=True):
        box = ax.get_window_extent(renderer)
        assert box.y0 - 1 <= label.y0 and label.y1 <= box.y1 + 1, ax.get_ylabel()
    assert not labels[0].overlaps(labels[1])
    legend, title = fig.legends[0].get_window_extent(renderer), axes[0].title.get_window_extent(renderer)
    assert not legend.overlaps(title)
    assert "%MinMax points" in axes[1].get_ylabel()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_dnachisel_repairs_the_same_way_whatever_numpys_global_random_state(real_proteins):
    """DnaChisel draws mutations from numpy's global state: a repair is seeded, so the same design is
    repaired alike in every process (a study resumed after an interruption gives the same files)."""
    rng = np.random.default_rng(0)
    protein = max(real_proteins.values(), key=len)
    synonyms = {aa: [c for c in CODONS if str(Seq(c).translate()) == aa] for aa in set(protein)}
    dna = "ATG" + "".join(str(rng.choice(synonyms[aa])) for aa in protein[1:]) + "TAA"
    c = parse_constraints("EcoRI,BsaI", "0.45-0.55", 30, 4)
    repaired = []
    for state in (1, 2, 3):
        np.random.seed(state)
        repaired.append(enforce(dna, c, 11))
    assert repaired[0][0] != dna  # there was something to repair
    assert repaired[0] == repaired[1] == repaired[2]
