"""Genomes as users hold them: bare assemblies (genes called by pyrodigal) and FASTA + GFF3, through
prepare and extract-cds; their bad input; the GFF3 path checked against the GenBank path."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from genbank_fixtures import genbank_text, gff3_from_genbank, revcomp, write_genbank

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.genbank import ExtractionStats, extract_file
from codonlm.data.inputs import InputFile, extract_input_records
from codonlm.data.layout import data_key

ECOLI = "Escherichia_coli_K12_MG1655.gbk.gz"


@pytest.fixture(scope="module")
def ecoli_seq(raw_corpus) -> str:
    import gb_io

    with gzip.open(raw_corpus / ECOLI) as fh:
        return bytes(next(gb_io.iter(fh)).sequence).decode().upper()


def _fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{name} test contig\n{seq}\n" for name, seq in records))
    return path


def _config(tmp_path: Path, tiny_config, datasets: list[dict], name: str = "cfg.yaml") -> Path:
    raw = tiny_config(tmp_path, [])
    raw["data"]["datasets"] = datasets
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _cds(source: InputFile, min_len: int = 1) -> list[tuple]:
    stats = ExtractionStats()
    return [(c.record_id, c.name, c.location, c.strand, c.dna(), c.transl_table, c.aa_exceptions)
            for batch in extract_input_records(source, min_len, 11, stats) for c in map(batch.cds, range(len(batch)))]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- assemblies in


def test_fasta_entries_prepare_with_gene_calling_provenance(tmp_path, ecoli_seq, tiny_config, capsys):
    """Two assemblies: 150 kb in two contigs (single mode, trained on both) and 40 kb soft-masked
    (metagenome mode); the called genes go through prepare, and every manifest records the calls."""
    big = _fasta(tmp_path / "big.fa", [("c1", ecoli_seq[:90_000]), ("c2", ecoli_seq[200_000:260_000])])
    small = _fasta(tmp_path / "small.fa", [("s1", ecoli_seq[400_000:440_000].lower())])
    cfg = _config(tmp_path, tiny_config, [{"name": "big", "fasta": str(big), "min_len": 10},
                                          {"name": "small", "fasta": str(small), "min_len": 10}])
    assert main(["prepare", "-c", str(cfg), "--run-id", "r1", "--quiet"]) == 0
    report = json.loads((tmp_path / "runs" / "r1" / "pipeline_prepare.json").read_text())
    calls = {name: report["datasets"][name]["extraction"]["gene_calling"] for name in ("big", "small")}
    import pyrodigal

    for name, mode, contigs in (("big", "single", 2), ("small", "meta", 1)):
        (call,) = calls[name]
        assert (call["caller"], call["version"], call["mode"], call["contigs"]) == ("pyrodigal", pyrodigal.__version__,
                                                                                    mode, contigs)
        extraction = report["datasets"][name]["extraction"]
        assert call["called"] == extraction["cds_features"] > 20
        assert call["kept"] == extraction["kept"] == sum(report["datasets"][name]["splits"][s]["genes"]
                                                         for s in ("train", "val", "test"))
        assert call["partial"] == extraction["dropped"]["partial"] >= 1  # genes run off the contig edges
    assert calls["big"][0]["bases"] == 150_000
    manifest = json.loads((tmp_path / "runs" / "r1" / "dataset_manifest.json").read_text())
    assert manifest["gene_calling"] == calls
    part = next(p for p in (tmp_path / "processed" / "parts").iterdir()
                if json.loads((p / "manifest.json").read_text())["dataset"] == "small")
    assert json.loads((part / "manifest.json").read_text())["gene_calling"] == calls["small"]
    # extract-cds audits the same calls
    out = tmp_path / "calls.fa"
    assert main(["extract-cds", "--fasta", str(small), "--out", str(out), "--min-len", "10"]) == 0
    assert out.read_text().count(">") == calls["small"][0]["kept"]
    assert "(meta mode)" in capsys.readouterr().out


def test_soft_masked_contigs_give_the_same_genes(tmp_path, ecoli_seq):
    upper = _fasta(tmp_path / "u.fa", [("c", ecoli_seq[:120_000])])
    masked = ecoli_seq[:120_000]
    masked = masked[:30_000] + masked[30_000:60_000].lower() + masked[60_000:]
    lower = _fasta(tmp_path / "l.fa", [("c", masked)])
    genes = _cds(InputFile("fasta", str(upper)))
    assert len(genes) > 80 and genes == _cds(InputFile("fasta", str(lower)))


def test_single_mode_on_a_small_contig_falls_back_to_meta_with_a_warning(tmp_path, ecoli_seq):
    path = _fasta(tmp_path / "five_kb.fa", [("tiny", ecoli_seq[:5_000])])
    stats = ExtractionStats()
    kept = list(extract_input_records(InputFile("fasta", str(path), gene_calling="single"), 1, 11, stats))
    assert stats.gene_calls[0]["mode"] == "meta" and stats.gene_calls[0]["requested"] == "single"
    assert sum(len(b) for b in kept) > 0
    assert len(stats.warnings) == 1 and "five_kb.fa" in stats.warnings[0] and "metagenome mode" in stats.warnings[0]


def test_gene_calling_mode_and_input_kind_are_in_the_key(tmp_path, ecoli_seq, tiny_config):
    fa = _fasta(tmp_path / "g.fa", [("c", ecoli_seq[:30_000])])
    keys = set()
    for entry in ({"fasta": str(fa)}, {"fasta": str(fa), "gene_calling": "meta"}, {"gff": str(fa)}):
        raw = tiny_config(tmp_path, [])
        raw["data"]["datasets"] = [{"name": "g", **entry}]
        keys.add(data_key(parse_config(raw)).key)
    assert len(keys) == 3


def _bad_inputs(tmp_path: Path, ecoli_seq: str) -> dict[str, tuple[dict, str]]:
    """kind -> (dataset entry, what the error line names besides the file)."""
    good = _fasta(tmp_path / "good.fa", [("chr", ecoli_seq[:30_000])])
    cds = "chr\tRefSeq\tCDS\t{}\t{}\t.\t+\t0\tID=cds1;locus_tag=L1\n"
    out = {
        "protein": ({"fasta": str(_fasta(tmp_path / "prot.fa", [("P1", "MKVLIEFQPRSTWY" * 10)]))}, "P1"),
        "empty_contig": ({"fasta": str(_fasta(tmp_path / "empty.fa", [("ok", ecoli_seq[:6000]), ("E1", "")]))}, "E1"),
        "all_n_contig": ({"fasta": str(_fasta(tmp_path / "alln.fa", [("ok", ecoli_seq[:6000]), ("N1", "N" * 500)]))},
                         "N1"),
        "duplicate_ids": ({"fasta": str(_fasta(tmp_path / "dup.fa", [("D1", ecoli_seq[:6000]),
                                                                    ("D1", ecoli_seq[6000:12000])]))}, "D1"),
        "gff_seqid_not_in_fasta": ({"gff": str(_write(tmp_path / "other.gff", "##gff-version 3\n"
                                                      + cds.format(1, 99).replace("chr", "plasmid9", 1))),
                                    "fasta": str(good)}, "plasmid9"),
        "gff_cds_past_contig": ({"gff": str(_write(tmp_path / "past.gff", "##gff-version 3\n" + cds.format(29_950, 30_050))),
                                 "fasta": str(good)}, "cds1"),
        "gff_without_sequence": ({"gff": str(_write(tmp_path / "noseq.gff", "##gff-version 3\n" + cds.format(1, 99)))},
                                 "##FASTA"),
        "fasta_missing": ({"fasta": str(tmp_path / "nowhere.fa")}, "fasta"),
        "gff_not_gff": ({"gff": str(_fasta(tmp_path / "fasta_as.gff", [("chr", ecoli_seq[:600])])), "fasta": str(good)},
                        "no CDS lines"),
    }
    return out


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["protein", "empty_contig", "all_n_contig", "duplicate_ids", "gff_seqid_not_in_fasta",
                                  "gff_cds_past_contig", "gff_without_sequence", "fasta_missing", "gff_not_gff"])
def test_bad_assembly_input_one_line_exit_2_prepared_untouched(tmp_path, capsys, kind, ecoli_seq, make_corpus,
                                                               tiny_config):
    files, _ = make_corpus(tmp_path, n_genes=20)
    good = [{"name": "ok", "gbff": str(files[0]), "min_len": 10}]
    assert main(["prepare", "-c", str(_config(tmp_path, tiny_config, good)), "--run-id", "r1", "--quiet"]) == 0
    before = _snapshot(tmp_path / "processed")
    capsys.readouterr()
    entry, named = _bad_inputs(tmp_path, ecoli_seq)[kind]
    bad = _config(tmp_path, tiny_config, good + [{"name": "bad", "min_len": 10, **entry}], "bad.yaml")
    assert main(["prepare", "-c", str(bad), "--run-id", "r2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    main_file = Path(entry.get("gff") or entry["fasta"]).name
    assert main_file in err[0] and named in err[0] and "Traceback" not in err[0]
    assert _snapshot(tmp_path / "processed") == before


# --------------------------------------------------------------------------- FASTA + GFF3 in


def test_gff_features_match_genbank_small(tmp_path):
    """Joined CDS (one across the origin of a circular record, one on the minus strand), a partial
    CDS, a pseudogene, a /transl_table and a /codon_start: the same CDS from the GFF3 as from the GenBank."""
    gene = "ATG" + "GCAAAACTG" * 12 + "TAA"  # 114 nt
    seq, feats = gene[60:], []  # the wrapped CDS: its last 54 nt open the record, its first 60 close it

    def add(spacer: str, piece: str, location: str, quals: dict) -> None:
        nonlocal seq
        seq += spacer
        a, b = len(seq) + 1, len(seq) + len(piece)
        seq += piece
        feats.append((location.format(a=a, b=b, m=a + 49, m1=a + 50), quals))  # m, m1: an exon boundary

    add("C" * 20, gene, "{a}..{b}", {"locus_tag": "plain", "transl_table": "4"})
    add("G" * 30, revcomp(gene), "complement(join({a}..{m},{m1}..{b}))", {"locus_tag": "minus"})
    add("T" * 40, gene, "{a}..{b}", {"locus_tag": "pseudo1", "pseudo": None})
    add("A" * 25, gene, "<{a}..{b}", {"locus_tag": "part"})
    add("C" * 10, "A" + gene, "{a}..{b}", {"locus_tag": "shifted", "codon_start": "2"})
    seq += "G" * 15 + gene[:60]
    n = len(seq)
    feats.append((f"join({n - 59}..{n},1..54)", {"locus_tag": "wrap"}))
    gbk = write_genbank(tmp_path / "c.gbk", [genbank_text("CIRC", seq, feats, circular=True)])
    genbank = _cds(InputFile("gbff", str(gbk)))
    assert {c[1] for c in genbank} == {"plain", "minus", "wrap", "shifted"}
    for flavour in ("ncbi", "prokka"):
        gff, fasta = gff3_from_genbank(gbk, flavour)
        gff_path = _write(tmp_path / f"{flavour}.gff", gff)
        fasta_path = None if flavour == "prokka" else str(_write(tmp_path / "c.fa", fasta))
        assert _cds(InputFile("gff", str(gff_path), fasta_path)) == genbank, flavour


@pytest.mark.integration
@pytest.mark.parametrize("genome,flavour", [(ECOLI, "ncbi"), ("Methanosarcina_acetivorans_C2A.gbk.gz", "prokka")])
def test_gff_path_yields_the_genbank_cds_on_a_real_genome(tmp_path, raw_corpus, genome, flavour):
    """E. coli (a joined CDS, selenoproteins' /transl_except, pseudogenes) and M. acetivorans (pyrrolysine)."""
    gff, fasta = gff3_from_genbank(raw_corpus / genome, flavour)
    gff_path = _write(tmp_path / "g.gff", gff)
    fasta_path = None if flavour == "prokka" else str(_write(tmp_path / "g.fa", fasta))
    stats = ExtractionStats()
    genbank = [(c.record_id, c.name, c.location, c.strand, c.dna(), c.transl_table, c.aa_exceptions)
               for c in extract_file(raw_corpus / genome, 1, 11, stats)]
    assert len(genbank) > 4000 and _cds(InputFile("gff", str(gff_path), fasta_path)) == genbank


def test_extract_cds_cli_gff_and_bad_pairing(tmp_path, capsys):
    gene = "ATG" + "GCAAAACTG" * 12 + "TAA"
    gbk = write_genbank(tmp_path / "one.gbk", [genbank_text("ONE", "CC" + gene + "CC",
                                                            [(f"3..{2 + len(gene)}", {"locus_tag": "L1"})])])
    gff, fasta = gff3_from_genbank(gbk, "ncbi")
    gff_path, fasta_path = _write(tmp_path / "one.gff", gff), _write(tmp_path / "one.fa", fasta)
    out = tmp_path / "cds.fa"
    assert main(["extract-cds", "--gff", str(gff_path), "--fasta", str(fasta_path), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == f">ONE L1 3..{2 + len(gene)} +" and "".join(lines[1:]) == gene
    capsys.readouterr()
    assert main(["extract-cds", "--gff", str(gff_path), str(gff_path), "--fasta", str(fasta_path), "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gff and fasta" in err[0]
    assert out.read_text().startswith(">ONE L1")  # earlier output intact


# --------------------------------------------------------------------------- the default corpus as assemblies


def test_assemblies_config_is_the_default_corpus_as_bare_fasta(raw_corpus):
    """Same genomes, model and training as tiny_cpu.yaml; each domain the one its GenBank lineage names."""
    from codonlm.config import load_config
    from codonlm.data.fetch import assembly_path
    from codonlm.stage2.tasks import genome_domain

    root = Path(__file__).resolve().parents[1]
    genbank, bare = (load_config(root / "configs" / n) for n in ("tiny_cpu.yaml", "tiny_cpu_assemblies.yaml"))
    assert [d.name for d in bare.data.datasets] == [d.name for d in genbank.data.datasets]
    for g, b in zip(genbank.data.datasets, bare.data.datasets, strict=True):
        assert b.kind == "fasta" and b.fasta == str(assembly_path("data/raw", Path(g.gbff).name))
        assert b.domain == genome_domain(str(raw_corpus / Path(g.gbff).name))
    assert bare.model == genbank.model and bare.train == genbank.train


def test_fetch_data_writes_the_bare_assemblies_a_config_names(tmp_path, raw_corpus, tiny_config, write_config, capsys):
    """fetch-data --if-needed writes data/raw/assemblies/<genome>.fasta.gz from the GenBank file: its sequence, no
    features; a second call finds it there."""
    import gb_io

    from codonlm.data.fetch import GENOMES, MANIFEST, assembly_path

    dest = tmp_path / "raw"
    dest.mkdir()
    for name in GENOMES:  # the corpus as fetch-data leaves it (links: no copy)
        (dest / name).symlink_to(raw_corpus / name)
    (dest / MANIFEST).write_text((raw_corpus / MANIFEST).read_text())
    name = "Methanococcus_maripaludis_S2.gbk.gz"
    fasta = assembly_path(dest, name)
    raw = tiny_config(tmp_path, [])
    raw["data"]["datasets"] = [{"name": "mm", "fasta": str(fasta)}]
    raw["data"]["raw_dir"] = str(dest)
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["fetch-data", "--if-needed", "-c", str(cfg)]) == 0
    with gzip.open(raw_corpus / name) as fh:
        expected = [(r.name, bytes(r.sequence).decode().upper()) for r in gb_io.iter(fh)]
    from codonlm.io import read_fasta

    assert [(n, s.upper()) for n, s in read_fasta(fasta)] == expected
    capsys.readouterr()
    assert main(["fetch-data", "--if-needed", "-c", str(cfg)]) == 0
    assert "nothing to fetch" in capsys.readouterr().out


@pytest.mark.parametrize("entry,needle", [
    ({}, "give either gbff, or fasta"),
    ({"gbff": "a.gbk", "fasta": "a.fa"}, "give either gbff, or fasta"),
    ({"fasta": ["a.fa", "b.fa"], "gff": ["a.gff"]}, "as many files"),
    ({"fasta": "a.fa", "gene_calling": "fast"}, "gene_calling"),
])
def test_dataset_entry_takes_one_kind_of_input(tmp_path, tiny_config, entry, needle):
    from codonlm.errors import UserError

    raw = tiny_config(tmp_path, [])
    raw["data"]["datasets"] = [{"name": "g", **entry}]
    with pytest.raises(UserError) as err:
        parse_config(raw, "cfg.yaml")
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1


def test_prepare_calls_each_genome_once_and_keeps_the_calls(tmp_path, ecoli_seq, tiny_config, monkeypatch):
    """Under split_by cluster prepare reads each assembly twice (the cluster pass, then its units): its genes
    are called once, kept under processed/gene_calls/, and a prepare with other split settings calls none;
    another gene_calling mode calls again. Kept calls give the same CDS as fresh ones."""
    if shutil.which("mmseqs") is None:
        pytest.skip("MMseqs2 is not installed (./scripts/setup_env.sh installs Debian's mmseqs2 when run as root)")
    from codonlm.data import assembly

    called = []
    real = assembly.gene_finder
    monkeypatch.setattr(assembly, "gene_finder", lambda *a: called.append(Path(a[3]).name) or real(*a))
    files = [_fasta(tmp_path / "a.fa", [("a1", ecoli_seq[:120_000])]),
             _fasta(tmp_path / "b.fa", [("b1", ecoli_seq[300_000:420_000])])]

    def prepare(run_id: str, gene_calling: str = "auto", test_frac: float = 0.1) -> dict:
        raw = tiny_config(tmp_path, [], data={"split_by": "cluster", "test_frac": test_frac})
        raw["data"]["datasets"] = [{"name": f.stem, "fasta": str(f), "min_len": 10, "gene_calling": gene_calling}
                                   for f in files]
        path = tmp_path / f"{run_id}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        assert main(["prepare", "-c", str(path), "--run-id", run_id, "--quiet", "--workers", "1"]) == 0
        return json.loads((tmp_path / "runs" / run_id / "dataset_manifest.json").read_text())["gene_calling"]

    first = prepare("r1")
    assert called == ["a.fa", "b.fa"]  # once each, though the cluster pass and the units both read them
    assert len(list((tmp_path / "processed" / "gene_calls").glob("*.json"))) == 2
    report = json.loads((tmp_path / "runs" / "r1" / "pipeline_prepare.json").read_text())
    assert set(report["worker_cpu_s"]) == {"a", "b"} and all(v > 0 for v in report["worker_cpu_s"].values())
    assert prepare("r2", test_frac=0.2) == first and called == ["a.fa", "b.fa"]  # another split: no new calls
    assert prepare("r3", gene_calling="meta")["a"][0]["mode"] == "meta" and called[2:] == ["a.fa", "b.fa"]
    kept = str(tmp_path / "processed" / "gene_calls")
    assert _cds(InputFile("fasta", str(files[0]), gene_calls=kept)) == _cds(InputFile("fasta", str(files[0])))
