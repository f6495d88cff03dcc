"""A user's own sequences: every command that takes a FASTA reads plain, gzipped, commented and CRLF files alike
(bad files end in one line, exit 2, nothing written), and genes with internal stop codons are scored and
embedded with a count column and one warning line, or skipped with --skip-invalid."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.codons import CODONS, ITOS, genetic_code, internal_stop_count
from codonlm.model.checkpoint import save_checkpoint
from codonlm.model.tinygpt import TinyGPT
from codonlm.stage2.embeddings import load_embeddings

REPO = Path(__file__).resolve().parents[1]
RUN = "us"
THRL = "ATGAAACGCATTAGCACCACCATTACCACCACCATCACCATTACCACAGGTAACGGTGCGGGCTGA"  # E. coli thrL
THRL_STOP = THRL[:9] + "TAA" + THRL[9:]  # an extra in-frame TAA after codon 3


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A checkpoint of a random tiny model (the plumbing under test needs no training)."""
    tmp = tmp_path_factory.mktemp("user_seqs")
    cfg = parse_config({"name": "u", "model": {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 16},
                        "data": {"datasets": [{"name": "d", "gbff": "x.gbk"}]},
                        "outputs": {"runs_dir": str(tmp / "runs"), "out_dir": str(tmp / "ckpt")}})
    torch.manual_seed(0)
    model = TinyGPT(cfg.model)
    save_checkpoint(tmp / "ckpt" / RUN / "best.pt", {"model": model.state_dict(), "run_id": RUN, "itos": ITOS,
                                                     "config": cfg.model_dump(mode="json"), "step": 0})
    return tmp


def genes(n: int = 12) -> dict[str, str]:
    """Random CDS (ATG, sense codons, TAA), half of them GC3-rich, named with a description after the id."""
    rng = np.random.default_rng(3)
    sense = [c for c in CODONS if not genetic_code(11).is_stop[ITOS.index(c)]]
    out = {}
    for i in range(n):
        pool = [c for c in sense if (c[2] in "GC") == (i % 2 == 0)]
        out[f"g{i} a gene of class {'ab'[i % 2]}"] = "ATG" + "".join(rng.choice(pool, rng.integers(8, 40))) + "TAA"
    return out


def fasta_text(records: dict[str, str]) -> str:
    return "".join(f">{name}\n{dna[:50]}\n{dna[50:]}\n" for name, dna in records.items())


VARIANTS = {
    "plain": lambda t: ("genes.fasta", t.encode()),
    "gzip": lambda t: ("genes.fa.gz", gzip.compress(t.encode())),
    "gzip_without_gz_name": lambda t: ("genes.fa", gzip.compress(t.encode())),
    "comments": lambda t: ("genes.fasta", f"# my genes\n; exported by hand\n\n{t}".encode()),
    "crlf_bom": lambda t: ("genes.fasta", b"\xef\xbb\xbf" + t.replace("\n", "\r\n").encode()),
}


def write_variant(folder: Path, variant: str, text: str) -> Path:
    name, data = VARIANTS[variant](text)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def cli(args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one command run through codonlm.cli.main (argparse exits: their code)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def warnings_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def _ok(args: list[str]) -> str:
    code, out, err = cli(args)
    assert code == 0, err
    assert not warnings_of(err)  # clean genes: nothing to flag
    return out


def every_fasta_command(fasta: Path, work: Path, ckpt: Path, source: list[str] | None = None,
                        seq_column: str = "seq") -> dict:
    """Run each command that reads a FASTA on `fasta` (the commands with a model on `source`: by default
    --fasta FASTA; the classifiers read a table's `seq_column`); their results, to compare between variants."""
    base = ["--checkpoints-dir", str(ckpt)]
    source = source or ["--fasta", str(fasta)]
    results: dict = {}
    _ok(["eval-perplexity", RUN, *source, "--out", str(work / "scores.csv"), *base])
    results["eval-perplexity"] = pd.read_csv(work / "scores.csv").to_dict("list")
    for mode in ("score", "next"):
        results[mode] = json.loads(_ok(["query", RUN, "--mode", mode, *source, "--json", *base]))
    _ok(["query", RUN, "--mode", "mutate", *source, "--region", "1-2", "--llr", "local",
         "--out", str(work / "scan.tsv"), "--heatmaps", "0", *base])
    results["mutate"] = pd.read_csv(work / "scan.tsv", sep="\t").to_dict("list")
    _ok(["extract-embeddings", "--run_id", RUN, *source, "--out", str(work / "e.npz"), "--quiet", *base])
    emb = load_embeddings(work / "e.npz")
    results["extract-embeddings"] = (emb.ids, emb.embeddings.tolist(), emb.internal_stops.tolist())
    labels = work / "labels.csv"
    pd.DataFrame({"id": [f"g{i}" for i in range(12)], "label": list("ab" * 6)}).to_csv(labels, index=False)
    config = work / "kmer.yaml"
    config.write_text(json.dumps({"train_labels": str(labels), "train_seqs": str(fasta), "models": ["kmer_logreg"],
                                  "bootstrap": 0, "out_dir": str(work / "kmer"), "seq_column": seq_column}))
    _ok(["train-classifier", "--config", str(config), "--quiet"])
    trained = json.loads((work / "kmer" / "metrics.json").read_text())
    results["train-classifier"] = (trained["n_train"], trained["models"]["kmer_logreg"]["confusion"])
    _ok(["eval-classifier", "--kind", "kmer", "--model", str(work / "kmer" / "kmer_logreg.skops"), "--vectorizer",
         str(work / "kmer" / "vectorizer.skops"), "--seqs", str(fasta), "--labels", str(labels),
         "--out", str(work / "eval"), "--bootstrap", "0", "--seq-column", seq_column])
    evaluated = json.loads((work / "eval" / "eval_metrics.json").read_text())["models"]["kmer_logreg"]
    results["eval-classifier"] = (evaluated["accuracy"], evaluated["confusion"])
    return results


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory) -> tuple[dict, Path]:
    """Every command's results on the plain FASTA, and the folder of its outputs (the k-mer model)."""
    work = tmp_path_factory.mktemp("plain")
    return every_fasta_command(write_variant(work, "plain", fasta_text(genes())), work, run / "ckpt"), work


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "plain"])
def test_every_fasta_command_reads_gzipped_commented_and_crlf_files_alike(run, reference, tmp_path, variant):
    fasta = write_variant(tmp_path, variant, fasta_text(genes()))
    results, expected = every_fasta_command(fasta, tmp_path, run / "ckpt"), reference[0]
    assert list(results) == list(expected)
    for command, result in results.items():
        assert result == expected[command], command
    assert results["extract-embeddings"][0] == [f"g{i}" for i in range(12)]  # ids without their descriptions


def test_eval_perplexity_module_and_embeddings_script_read_a_gzipped_commented_crlf_file(run, reference, tmp_path):
    """The manual's entry points, as subprocesses, on the file of the issue (gzipped, a comment, CRLF): the
    same numbers as the same entry points on the plain file (both in fresh processes, so nothing an earlier
    test left in this process's torch settings can tell them apart)."""
    text = "# my genes\r\n" + fasta_text(genes()).replace("\n", "\r\n")
    odd = tmp_path / "genes.fa.gz"
    odd.write_bytes(gzip.compress(text.encode()))
    plain = write_variant(tmp_path / "plain", "plain", fasta_text(genes()))
    ckpt = ["--checkpoints-dir", str(run / "ckpt")]
    results = []
    for name, fasta in (("odd", odd), ("plain", plain)):
        scores, vectors = tmp_path / f"{name}.csv", tmp_path / f"{name}.npz"
        for args in (["-m", "codonlm.eval_perplexity", RUN, "--fasta", str(fasta), "--out", str(scores), *ckpt],
                     ["-m", "scripts.extract_embeddings", "--run_id", RUN, "--fasta", str(fasta), "--out",
                      str(vectors), "--quiet", *ckpt]):
            res = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
            assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        results.append((pd.read_csv(scores).to_dict("list"), load_embeddings(vectors).embeddings.tolist()))
    assert results[0] == results[1]
    assert results[1][0]["id"] == reference[0]["eval-perplexity"]["id"]  # the records the other commands read


def gene_table(records: dict[str, str], folder: Path) -> list[str]:
    """The records as a user's table (gene_id,note,cds; RNA, lower case; commas in a quoted note), and the
    flags that read it."""
    table = pd.DataFrame({"gene_id": [name.split()[0] for name in records], "note": ["a, gene"] * len(records),
                          "cds": [dna.lower().replace("t", "u") for dna in records.values()]})
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "genes.csv", index=False)
    return ["--csv", str(folder / "genes.csv"), "--id-column", "gene_id", "--seq-column", "cds"]


def test_every_command_reads_a_users_table_as_the_same_records_in_fasta(run, reference, tmp_path):
    """--csv FILE --id-column C --seq-column C gives every number the FASTA gives; the classifier inputs read
    a tab-separated table (known by its header line) by its seq_column / --seq-column; CodonLM reads a
    table's path as the CLI does."""
    from codonlm import CodonLM

    records = genes()
    seqs = tmp_path / "genes.txt"
    pd.DataFrame({"id": [n.split()[0] for n in records], "cds": list(records.values())}).to_csv(seqs, sep="\t",
                                                                                               index=False)
    flags = gene_table(records, tmp_path)
    results = every_fasta_command(seqs, tmp_path, run / "ckpt", source=flags, seq_column="cds")
    assert list(results) == list(reference[0])
    for command, result in results.items():
        assert result == reference[0][command], command
    pd.read_csv(tmp_path / "genes.csv").rename(columns={"gene_id": "id", "cds": "seq"}).to_csv(
        tmp_path / "plain.csv", index=False)
    lm = CodonLM.load(RUN, checkpoints_dir=str(run / "ckpt"))
    pd.testing.assert_frame_equal(lm.score(str(tmp_path / "plain.csv")), lm.score(str(reference[1] / "genes.fasta")))


def _table_commands(flags: list[str], tmp: Path, ckpt: Path) -> dict[str, tuple[list[str], Path | None]]:
    base = ["--checkpoints-dir", str(ckpt)]
    return {
        "eval-perplexity": (["eval-perplexity", RUN, *flags, "--out", str(tmp / "s.csv"), *base], tmp / "s.csv"),
        "query": (["query", RUN, "--mode", "score", *flags, "--json", *base], None),
        "mutate": (["query", RUN, "--mode", "mutate", *flags, "--region", "1-2", "--out", str(tmp / "scan.tsv"),
                    "--heatmaps", "0", *base], tmp / "scan.tsv"),
        "extract-embeddings": (["extract-embeddings", "--run_id", RUN, *flags, "--out", str(tmp / "e.npz"),
                                "--quiet", *base], tmp / "e.npz"),
    }


BAD_TABLES = {  # kind: (change to the table, what the one line says)
    "repeated_id": (lambda t: pd.concat([t, t.head(1)]), "id 'g0' appears twice (row 2 and row 14)"),
    "no_seq_column": (lambda t: t.rename(columns={"cds": "dna"}), "no 'cds' column (columns: gene_id, note, dna)"),
    "empty": (lambda t: t.head(0), "no rows"),
    "not_dna": (lambda t: t.assign(cds=[*t["cds"][:4], "augxxxuaa", *t["cds"][5:]]),
                "row 6 (id 'g4'): character 'X' at position 4"),
}


@pytest.mark.parametrize("kind", BAD_TABLES)
def test_a_bad_table_ends_in_one_line_naming_file_and_row_and_writes_nothing(run, reference, tmp_path, kind):
    change, needle = BAD_TABLES[kind]
    flags = gene_table(genes(), tmp_path)
    path = tmp_path / "genes.csv"
    change(pd.read_csv(path, dtype=str)).to_csv(path, index=False)
    commands = _table_commands(flags, tmp_path, run / "ckpt")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"gene_id": [f"g{i}" for i in range(12)], "label": list("ab" * 6)}).to_csv(labels, index=False)
    kmer = reference[1] / "kmer"
    commands["eval-classifier"] = (["eval-classifier", "--kind", "kmer", "--model", str(kmer / "kmer_logreg.skops"),
                                    "--vectorizer", str(kmer / "vectorizer.skops"), "--seqs", str(path),
                                    *flags[2:], "--labels", str(labels), "--out", str(tmp_path / "ev")],
                                   tmp_path / "ev" / "eval_metrics.json")
    _assert_each_refused_in_one_line(commands, path, needle)


def test_dedupe_first_keeps_each_ids_first_record_and_skip_invalid_counts_bad_rows(run, reference, tmp_path):
    flags = gene_table(genes(), tmp_path)
    path = tmp_path / "genes.csv"
    table = pd.read_csv(path, dtype=str)
    extra = table.head(2).assign(cds="AUGAAAUAA")  # g0 and g1 again, other sequences: dropped
    bad = pd.DataFrame({"gene_id": ["junk"], "note": [""], "cds": ["ATGNNNTAA"]})
    pd.concat([table, extra, bad]).to_csv(path, index=False)
    code, out, err = cli(_table_commands(flags, tmp_path, run / "ckpt")["query"][0])
    assert code == 2 and "--dedupe first" in err
    for command, (args, _) in _table_commands([*flags, "--dedupe", "first", "--skip-invalid"], tmp_path,
                                              run / "ckpt").items():
        code, out, err = cli(args)
        assert code == 0, (command, err)
        assert "2 record(s) of repeated ids dropped, each id's first record kept (first repeated: 'g0')" in err
        assert "skipped 1 record(s): 1 invalid (first: 'junk')" in err, (command, err)
    assert pd.read_csv(tmp_path / "s.csv").to_dict("list") == reference[0]["eval-perplexity"]
    emb = load_embeddings(tmp_path / "e.npz")
    assert emb.embeddings.tolist() == reference[0]["extract-embeddings"][1] and emb.meta["n_skipped"] == 1
    code, _, err = cli([*_table_commands(flags, tmp_path, run / "ckpt")["query"][0], "--dedupe", "mean"])
    assert code == 2 and "invalid choice: 'mean'" in err  # no value column to average: only first or error


BAD_FILES = {  # kind: (file content, what the one line says)
    "corrupt_gzip": (b"\x1f\x8b\x08\x00" + bytes(range(40)), "truncated or corrupt gzip"),
    "truncated_gzip": (gzip.compress(fasta_text(genes()).encode())[:60], "truncated or corrupt gzip"),
    "not_utf8": (b">a\n\xff\xfeATGAAATAA\n", "not UTF-8"),
    "empty": (b"", "no sequences"),
    "empty_gzip": (gzip.compress(b""), "no sequences"),
    "only_comments": (b"# nothing yet\n\n", "no sequences"),
    "text_before_first_record": (b"# my genes\nsee below\n>a\nATGAAATAA\n", "line 2"),
    "missing": (None, "not found"),
}


def bad_input_commands(fasta: Path, tmp: Path, ckpt: Path, kmer: Path) -> dict[str, tuple[list[str], Path | None]]:
    """Each command that reads a FASTA, pointed at `fasta`, with the output it must leave untouched."""
    labels = tmp / "labels.csv"
    labels.write_text("id,label\na,x\nb,y\n")
    config = tmp / "kmer.yaml"
    config.write_text(json.dumps({"train_labels": str(labels), "train_seqs": str(fasta), "models": ["kmer_logreg"],
                                  "bootstrap": 0, "out_dir": str(tmp / "kmer")}))
    base = ["--checkpoints-dir", str(ckpt)]
    return {
        "eval-perplexity": (["eval-perplexity", RUN, "--fasta", str(fasta), "--out", str(tmp / "s.csv"), *base],
                            tmp / "s.csv"),
        "query": (["query", RUN, "--mode", "score", "--fasta", str(fasta), *base], None),
        "mutate": (["query", RUN, "--mode", "mutate", "--fasta", str(fasta), "--out", str(tmp / "scan.tsv"), *base],
                   tmp / "scan.tsv"),
        "extract-embeddings": (["extract-embeddings", "--run_id", RUN, "--fasta", str(fasta), "--out",
                                str(tmp / "e.npz"), *base], tmp / "e.npz"),
        "train-classifier": (["train-classifier", "--config", str(config)], tmp / "kmer" / "metrics.json"),
        "eval-classifier": (["eval-classifier", "--kind", "kmer", "--model", str(kmer / "kmer_logreg.skops"),
                             "--vectorizer", str(kmer / "vectorizer.skops"), "--seqs", str(fasta), "--labels",
                             str(labels), "--out", str(tmp / "ev")], tmp / "ev" / "eval_metrics.json"),
    }


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_fasta_ends_in_one_line_naming_it_and_writes_nothing(run, reference, tmp_path, kind):
    content, needle = BAD_FILES[kind]
    fasta = tmp_path / "genes.fa.gz"
    if content is not None:
        fasta.write_bytes(content)
    _assert_each_refused_in_one_line(bad_input_commands(fasta, tmp_path, run / "ckpt", reference[1] / "kmer"),
                                     fasta, needle)


# --------------------------------------------------------------------------- internal stop codons


def test_internal_stops_are_stops_before_the_last_codon_of_the_genetic_code():
    assert internal_stop_count(THRL) == 0  # the terminal TGA is the gene's own stop
    assert internal_stop_count(THRL_STOP) == 1
    assert internal_stop_count("ATGTAAAAA") == 1  # a prompt without a stop still has one inside
    assert internal_stop_count("ATGTGAAAATAA") == 1 and internal_stop_count("ATGTGAAAATAA", table_id=4) == 0
    assert internal_stop_count("TAA") == 0


def stop_fasta(folder: Path, *extra: tuple[str, str]) -> Path:
    path = folder / "thr.fasta"
    two_stops = THRL_STOP[:18] + "TAG" + THRL_STOP[18:]
    path.write_text(fasta_text({"thrL": THRL, "thrL_stop": THRL_STOP, "two_stops": two_stops, **dict(extra)}))
    return path


def test_scoring_counts_internal_stops_warns_once_and_skip_invalid_skips_them(run, tmp_path):
    fasta, base = stop_fasta(tmp_path), ["--checkpoints-dir", str(run / "ckpt")]
    code, out, err = cli(["eval-perplexity", RUN, "--fasta", str(fasta), *base])
    table = pd.read_csv(io.StringIO(out))  # the CSV on stdout stays clean: the warning is on stderr
    assert code == 0 and table["id"].tolist() == ["thrL", "thrL_stop", "two_stops"]
    assert table["internal_stops"].tolist() == [0, 1, 2] and table["perplexity"].notna().all()
    warning = warnings_of(err)
    assert len(warning) == 1 and str(fasta) in warning[0]
    assert "2 record(s) with internal stop codons (first: 'thrL_stop')" in warning[0]
    code, out, err = cli(["eval-perplexity", RUN, "--fasta", str(fasta), "--skip-invalid", *base])
    assert code == 0 and pd.read_csv(io.StringIO(out))["id"].tolist() == ["thrL"]
    assert "skipped 2 record(s): 2 with internal stop codons (first: 'thrL_stop')" in err
    code, out, err = cli(["query", RUN, "--mode", "score", "--fasta", str(fasta), "--json", *base])
    assert code == 0 and [r["internal_stops"] for r in json.loads(out)] == [0, 1, 2] and "warning:" in err
    code, out, _ = cli(["query", RUN, "--mode", "score", "--fasta", str(fasta), *base])
    assert pd.read_csv(io.StringIO(out), sep="\t")["internal_stops"].tolist() == [0, 1, 2]


def test_query_counts_stops_of_the_chosen_genetic_code(run):
    tga_inside = "ATGTGAAAATAA"  # TGA is Trp in table 4 (Mycoplasma), a stop in table 11
    base = ["query", RUN, "--mode", "score", "--dna", tga_inside, "--json", "--checkpoints-dir", str(run / "ckpt")]
    code, out, err = cli(base)
    assert code == 0 and json.loads(out)[0]["internal_stops"] == 1 and "--dna: 1 record(s)" in err
    code, out, err = cli([*base, "--transl-table", "4"])
    assert code == 0 and json.loads(out)[0]["internal_stops"] == 0 and not warnings_of(err)
    code, _, err = cli([*base, "--transl-table", "99"])
    assert code == 2 and "'99' is not an NCBI genetic code" in err and "Traceback" not in err


def test_embeddings_count_internal_stops_and_skip_invalid_counts_them_with_bad_records(run, tmp_path):
    base = ["extract-embeddings", "--run_id", RUN, "--out", str(tmp_path / "e.npz"), "--quiet",
            "--checkpoints-dir", str(run / "ckpt")]
    code, _, err = cli([*base, "--fasta", str(stop_fasta(tmp_path))])
    emb = load_embeddings(tmp_path / "e.npz")
    assert code == 0 and emb.ids == ["thrL", "thrL_stop", "two_stops"] and emb.internal_stops.tolist() == [0, 1, 2]
    assert warnings_of(err) == [
        f"warning: {tmp_path / 'thr.fasta'}: 2 record(s) with internal stop codons (first: 'thrL_stop'), used as "
        "given; the output counts them per record (internal_stops); --skip-invalid skips such records"]
    with_bad = stop_fasta(tmp_path, ("broken", "ATGNAATAA"))
    code, _, err = cli([*base, "--fasta", str(with_bad)])
    assert code == 2 and "'broken'" in err and "--skip-invalid" in err
    code, _, err = cli([*base, "--fasta", str(with_bad), "--skip-invalid"])
    emb = load_embeddings(tmp_path / "e.npz")
    assert code == 0 and emb.ids == ["thrL"] and emb.meta["n_skipped"] == 3
    assert ("skipped 3 record(s): 1 invalid (first: 'broken'), 2 with internal stop codons (first: 'thrL_stop')"
            in err)
    (tmp_path / "stops.fasta").write_text(f">s\n{THRL_STOP}\n")
    code, _, err = cli([*base, "--fasta", str(tmp_path / "stops.fasta"), "--skip-invalid"])
    assert code == 2 and "every record was skipped" in err


def _assert_each_refused_in_one_line(commands: dict, path, needle: str) -> None:
    """Each command (args, output it would write) exits 2 with one line naming `path` and `needle`, no
    traceback, and leaves an earlier result at its output untouched."""
    for command, (args, output) in commands.items():
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text("an earlier result\n")
        code, _, err = cli(args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (command, err)
        assert str(path) in lines[0] and needle in lines[0], (command, lines[0])
        assert output is None or output.read_text() == "an earlier result\n", command
