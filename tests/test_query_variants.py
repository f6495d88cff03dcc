"""Variant scans (`codonlm query --mode mutate`): exact = naive rescoring, local, bounded batches, CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from codonlm.cli import main
from codonlm.config import ModelConfig, parse_config
from codonlm.data.codons import CODONS, ITOS, STOI, decode, frame_gene
from codonlm.evaluate.perplexity import score_genes
from codonlm.evaluate.query import run_query, score
from codonlm.evaluate.variants import KINDS, VariantScanner, variant_kinds
from codonlm.model.checkpoint import save_checkpoint
from codonlm.model.tinygpt import TinyGPT

BLOCK = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small batches on a shared 2-core machine: one intra-op thread avoids OpenMP spin-waits
    (measured about 20x faster under load); the results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def peaked_model(block_size: int = BLOCK, seed: int = 0) -> TinyGPT:
    """Random weights large enough that predictions are far from uniform (LLRs of order 1)."""
    torch.manual_seed(seed)
    model = TinyGPT(ModelConfig(block_size=block_size, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def random_codons(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, 68, n).astype(np.uint8)


def naive_llr(model, codons: np.ndarray, positions, stride=None, kinds=None) -> dict[tuple[int, int], float]:
    """Every mutant gene built and scored from scratch with score_genes (the old implementation)."""
    gene = frame_gene(codons)
    keep = set(kinds or KINDS)
    variants, keys = [gene], []
    for p in positions:
        for alt in range(4, 68):
            if alt != gene[p] and KINDS[variant_kinds(int(gene[p]))[alt - 4]] in keep:
                mutant = gene.copy()
                mutant[p] = alt
                variants.append(mutant)
                keys.append((p, alt))
    ll = [float(np.sum(s.logp, dtype=np.float64)) for s in score_genes(model, variants, stride=stride)]
    return {k: v - ll[0] for k, v in zip(keys, ll[1:], strict=True)}


def scanned(scanner, codons, positions=None) -> dict[tuple[int, int], float]:
    return {(s.position, int(a)): float(v) for s in scanner.scan(codons, positions)
            for a, v in zip(s.alts, s.llr, strict=True)}


def test_extend_continues_a_shared_prefix_for_many_rows():
    model = peaked_model(64)
    seq = torch.randint(4, 68, (5, 40))
    seq[:, :12] = seq[0, :12]  # one prefix, five different continuations
    seq[:, 0] = 1
    with torch.no_grad():
        full, _ = model(seq)
        _, past = model.extend(seq[:1, :12], None, 0)
        logits, _ = model.extend(seq[:, 12:], past, 12, all_logits=True)
    torch.testing.assert_close(logits, full[:, 12:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_codons,stride", [(20, None), (45, 8), (45, None), (70, BLOCK)])
def test_exact_scan_equals_rescoring_every_mutant(n_codons, stride):
    """Short genes fit the window; longer ones are scored with score_genes' strided windows."""
    model = peaked_model()
    codons = random_codons(n_codons, seed=n_codons)
    positions = range(1, n_codons + 1) if n_codons <= 20 else [1, 2, 7, BLOCK - 2, BLOCK - 1, BLOCK, n_codons - 1,
                                                                  n_codons]
    ours = scanned(VariantScanner(model, stride=stride, max_tokens=600), codons, positions)
    ref = naive_llr(model, codons, positions, stride=stride)
    assert ours.keys() == ref.keys() and len(ref) == 63 * len(positions)
    a, b = np.array(list(ours.values())), np.array([ref[k] for k in ours])
    assert np.abs(b).mean() > 0.5  # the comparison is not between near-zero numbers
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=0)


def test_local_scan_is_the_mutated_codons_own_term():
    model = peaked_model()
    codons = random_codons(25, seed=3)
    gene = torch.from_numpy(frame_gene(codons).astype(np.int64))[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(gene)[0][0], -1)
    ours = scanned(VariantScanner(model, llr="local"), codons)
    for (p, alt), v in ours.items():
        assert v == pytest.approx(float(logp[p - 1, alt] - logp[p - 1, gene[0, p]]), abs=1e-4)
    exact = scanned(VariantScanner(model), codons)
    assert max(abs(exact[k] - ours[k]) for k in ours) > 0.1  # the downstream codons do matter


def test_kind_filter_and_region_select_variants():
    model = peaked_model()
    codons = random_codons(30, seed=5)
    scanner = VariantScanner(model, kinds=["synonymous"], stride=8)
    ours = scanned(scanner, codons, range(5, 12))
    ref = naive_llr(model, codons, range(5, 12), stride=8, kinds=["synonymous"])
    assert ours.keys() == ref.keys() and 0 < len(ref) < 7 * 10
    np.testing.assert_allclose([ours[k] for k in ref], list(ref.values()), atol=2e-4)


def test_variant_kinds_follow_the_genetic_code():
    def kind(wt: str, mut: str, table: int = 11) -> str:
        return KINDS[variant_kinds(STOI[wt], table)[CODONS.index(mut)]]

    assert kind("AAA", "AAG") == "synonymous" and kind("TAA", "TAG") == "synonymous"
    assert kind("AAA", "GAA") == "missense" and kind("AAA", "TAA") == "nonsense"
    assert kind("TAA", "CAA") == "stop_loss"
    assert kind("TGG", "TGA") == "nonsense" and kind("TGG", "TGA", table=4) == "synonymous"  # Trp in table 4


def test_batches_stay_bounded_whatever_the_gene_length():
    """Memory is bounded by the batch, not by the gene: in a 40- and a 100-codon scan every batch
    holds at most max(max_tokens, 63 x block) input tokens and max(4 x max_tokens, 63 x block)
    attended key positions over all its rows, far fewer than the scan runs in all, and rows stream
    out before the scan ends."""
    model = peaked_model()
    for n in (40, 100):
        scanner = VariantScanner(model, max_tokens=1000, chunk_positions=8, stride=BLOCK, kinds=["missense"])
        it = scanner.scan(random_codons(n, seed=n))
        next(it)
        batches_at_first_row = len(scanner.batch_shapes)
        assert sum(1 for _ in it) == n - 1
        assert batches_at_first_row < len(scanner.batch_shapes) / 4  # results streamed, not held to the end
        inputs = [rows * length for rows, _, length in scanner.batch_shapes]
        keys = [rows * (prefix + length) for rows, prefix, length in scanner.batch_shapes]
        assert max(inputs) <= max(1000, 63 * BLOCK) and sum(inputs) > 10 * max(inputs)
        assert max(keys) <= max(4 * 1000, 63 * BLOCK)
        assert max(rows for rows, _, _ in scanner.batch_shapes) > 63  # short suffixes do share batches


# ---- the command --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A checkpoint of the peaked random model (no training needed to test the plumbing)."""
    tmp = tmp_path_factory.mktemp("qv")
    cfg = parse_config({"name": "q", "model": {"block_size": BLOCK, "n_layer": 2, "n_head": 2, "n_embd": 32},
                        "data": {"datasets": [{"name": "d", "gbff": "x.gbk"}]},
                        "outputs": {"runs_dir": str(tmp / "runs"), "out_dir": str(tmp / "ckpt")}})
    model = peaked_model()
    save_checkpoint(tmp / "ckpt" / "qv" / "best.pt", {"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                                                      "run_id": "qv", "itos": ITOS, "step": 0})
    return tmp, model


def _cli(run, *args) -> int:
    return main(["query", "qv", "--checkpoints-dir", str(run[0] / "ckpt"), *args])


def test_mutate_cli_streams_table_summary_and_heatmap(run, tmp_path, capsys):
    fasta = tmp_path / "genes.fasta"
    genes = {"g1": decode(random_codons(12, 1)), "g/2": decode(random_codons(40, 2))}
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in genes.items()))
    out = tmp_path / "scan.csv"
    assert _cli(run, "--mode", "mutate", "--fasta", str(fasta), "--out", str(out)) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "codon_position", "wt_codon", "mut_codon", "wt_aa", "mut_aa", "kind", "llr"]
    assert len(table) == 63 * (12 + 40) and set(table["id"]) == set(genes)
    g2 = table[table.id == "g/2"]
    ref = naive_llr(run[1], random_codons(40, 2), [3, 33])
    for (p, alt), v in ref.items():
        assert g2[(g2.codon_position == p) & (g2.mut_codon == ITOS[alt])]["llr"].item() == pytest.approx(v, abs=2e-4)
    summary = json.loads((tmp_path / "scan.summary.json").read_text())
    assert summary["variants"] == len(table) and summary["genes"] == 2
    assert summary["by_kind"]["missense"]["mean_llr"] == pytest.approx(table[table.kind == "missense"].llr.mean(),
                                                                       abs=1e-5)
    for name in ("g1", "g_2"):
        assert (tmp_path / f"scan.{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "codons/s" in capsys.readouterr().err


def test_mutate_cli_region_kinds_local_and_json_lines(run, capsys):
    dna = decode(random_codons(20, 7))
    assert _cli(run, "--mode", "mutate", "--dna", dna, "--region", "3-5", "--only", "missense,nonsense",
                "--llr", "local", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["codon_position"] for r in rows} == {3, 4, 5}
    assert {r["kind"] for r in rows} <= {"missense", "nonsense"} and len(rows) > 3 * 50


@pytest.mark.parametrize("args,needle", [(["--region", "30-40"], "has 20 codons"), (["--region", "9-2"], "START-END"),
                                         (["--out", "x.xlsx"], "unknown table format")])
def test_mutate_cli_bad_options_one_line(run, tmp_path, capsys, args, needle):
    assert _cli(run, "--mode", "mutate", "--dna", decode(random_codons(20, 7)), *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_mutate_cli_amp_runs_the_scan_in_bf16_and_records_it(run, tmp_path, capsys):
    """--amp (true) scans under bf16 autocast: LLRs near float32's, the precision in the summary and on stderr;
    the default (auto) keeps a small scan in float32 untimed, with no precision line."""
    dna = decode(random_codons(30, 4))
    tables = {}
    for flag in ([], ["--amp"], ["--amp", "false"]):
        out = tmp_path / f"scan{len(flag)}.csv"
        assert _cli(run, "--mode", "mutate", "--dna", dna, "--region", "2-6", "--out", str(out), *flag) == 0
        summary = json.loads(out.with_suffix(".summary.json").read_text())
        tables[len(flag)] = pd.read_csv(out).llr.to_numpy()
        err = capsys.readouterr().err
        assert summary["precision"] == ("bfloat16" if len(flag) == 1 else "float32")
        assert ("[mutate] precision bfloat16: amp: true" in err) is (len(flag) == 1)
    assert tables[0].tolist() == tables[2].tolist()
    drift = np.abs(tables[1] - tables[0])
    assert 0 < drift.max() < 0.1 * np.abs(tables[0]).max()


def test_score_is_one_function_for_query_and_eval_perplexity(run, tmp_path, capsys):
    records = [("a", decode(random_codons(10, 1))), ("b", decode(random_codons(50, 2)))]
    fasta = tmp_path / "x.fasta"
    fasta.write_text("".join(f">{n}\n{d}\n" for n, d in records))
    out = tmp_path / "scores.csv"
    assert main(["eval-perplexity", "qv", "--fasta", str(fasta), "--out", str(out),
                 "--checkpoints-dir", str(run[0] / "ckpt")]) == 0
    table = pd.read_csv(out)
    rows = score(run[1], records)
    np.testing.assert_allclose(table["log_likelihood"], [r["log_likelihood"] for r in rows], rtol=1e-6)
    assert list(table.columns) == ["id", "n_codons", "internal_stops", "log_likelihood", "nll", "perplexity"]
    printed = run_query(run[1], "score", records, out=io.StringIO())
    assert [r["perplexity"] for r in printed] == [r["perplexity"] for r in rows]


def test_eval_perplexity_and_query_score_keep_stdout_for_the_table(run, tmp_path, capsys):
    """The amp line (the precision chosen and why) goes to stderr when stdout carries the result; a small
    job's untimed float32 prints none."""
    fasta = tmp_path / "x.fasta"
    fasta.write_text(f">a\n{decode(random_codons(10, 1))}\n")
    ckpt = ["--checkpoints-dir", str(run[0] / "ckpt")]
    assert main(["eval-perplexity", "qv", "--fasta", str(fasta), *ckpt]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "id,n_codons,internal_stops,log_likelihood,nll,perplexity"
    assert len(captured.out.splitlines()) == 2 and "precision" not in captured.out + captured.err
    assert main(["eval-perplexity", "qv", "--fasta", str(fasta), "--amp", *ckpt]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "[score] precision bfloat16: " in captured.err
    assert _cli(run, "--mode", "score", "--fasta", str(fasta), "--amp") == 0
    captured = capsys.readouterr()
    assert "precision" not in captured.out and "[score] precision bfloat16: " in captured.err
