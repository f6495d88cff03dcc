"""CDS extraction on small hand-built GenBank files, each case checked against Biopython."""

from __future__ import annotations

import gzip
import random

import pytest
from Bio import SeqIO
from genbank_fixtures import genbank_text, revcomp, write_genbank

from codonlm.data.genbank import ExtractionStats, extract_file
from codonlm.errors import UserError

SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")]


def orf(rng: random.Random, n_codons: int, start: str = "ATG", stop: str = "TAA") -> str:
    return start + "".join(rng.choice(SENSE) for _ in range(n_codons - 1)) + stop


class RecordBuilder:
    """Appends pieces of sequence and hands back their 1-based coordinates."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.seq = ""

    def spacer(self, n: int = 20) -> None:
        self.seq += "".join(self.rng.choice("ACGT") for _ in range(n))

    def add(self, piece: str) -> tuple[int, int]:
        self.spacer()
        start = len(self.seq) + 1
        self.seq += piece
        return start, len(self.seq)


@pytest.fixture()
def cases(tmp_path):
    rng = random.Random(7)
    b = RecordBuilder(rng)
    feats: list[tuple[str, dict]] = []
    expect: dict[str, str | None] = {}  # locus_tag -> expected DNA (None: dropped)
    reasons: dict[str, str] = {}

    def kept(tag, loc, dna, **q):
        feats.append((loc, {"locus_tag": tag, **q}))
        expect[tag] = dna

    def dropped(tag, loc, reason, **q):
        feats.append((loc, {"locus_tag": tag, **q}))
        expect[tag] = None
        reasons[tag] = reason

    g = orf(rng, 40)
    s, e = b.add(g)
    kept("plus", f"{s}..{e}", g)
    g = orf(rng, 41, start="GTG", stop="TAG")
    s, e = b.add(revcomp(g))
    kept("minus", f"complement({s}..{e})", g)
    g = orf(rng, 42)
    s1, e1 = b.add(g[:50])
    s2, e2 = b.add(g[50:])
    kept("join", f"join({s1}..{e1},{s2}..{e2})", g)
    g = orf(rng, 43)
    s1, e1 = b.add(revcomp(g[70:]))
    s2, e2 = b.add(revcomp(g[:70]))
    kept("minus_join", f"complement(join({s1}..{e1},{s2}..{e2}))", g)
    g = orf(rng, 44)
    s, e = b.add("A" + g)
    kept("codon_start2", f"{s}..{e}", g, codon_start=2)
    g = orf(rng, 45, stop="TAA")
    g = g[:30] + "TGA" + g[33:]
    s, e = b.add(g)
    kept("table4", f"{s}..{e}", g, transl_table=4)
    g = orf(rng, 46)
    g = g[:60] + "TGA" + g[63:]
    s, e = b.add(g)
    kept("selenocysteine", f"{s}..{e}", g, transl_except=f"(pos:{s + 60}..{s + 62},aa:Sec)")
    g = orf(rng, 47)
    s, e = b.add(g)
    dropped("partial5", f"<{s}..{e}", "partial")
    dropped("partial3", f"{s}..>{e}", "partial")
    dropped("pseudo", f"{s}..{e}", "pseudo", pseudo=None)
    dropped("pseudogene", f"{s}..{e}", "pseudo", pseudogene="unprocessed")
    g = orf(rng, 48)
    s, e = b.add(g[:40] + "N" + g[41:])
    dropped("iupac", f"{s}..{e}", "ambiguous_bases")
    g = orf(rng, 49)
    s, e = b.add(g[:40] + "A" + g[40:])
    dropped("frameshift", f"{s}..{e}", "length_not_multiple_of_3")
    g = orf(rng, 50)
    s, e = b.add(g[:30] + "TAA" + g[33:])
    dropped("internal_stop", f"{s}..{e}", "internal_stop")
    g = orf(rng, 5)
    s, e = b.add(g)
    dropped("short", f"{s}..{e}", "too_short")
    g = orf(rng, 51)[:-3] + "AAA"
    s, e = b.add(g)
    dropped("no_stop", f"{s}..{e}", "no_stop_codon")
    dropped("outside", f"{len(b.seq) + 100}..{len(b.seq) + 202}", "location_out_of_bounds")
    b.spacer(30)
    linear = genbank_text("LIN1", b.seq, feats)

    # Circular record with a CDS spanning the origin.
    g = orf(rng, 60)
    body = "".join(rng.choice("ACGT") for _ in range(200))
    circ_seq = g[40:] + body + g[:40]
    n = len(circ_seq)
    circular = genbank_text("CIRC1", circ_seq, [(f"join({n - 39}..{n},1..{len(g) - 40})", {"locus_tag": "origin"})],
                            circular=True)
    expect["origin"] = g
    path = write_genbank(tmp_path / "cases.gbk", [linear, circular])
    return path, expect, reasons


def test_every_case_kept_or_dropped_for_the_right_reason(cases):
    path, expect, reasons = cases
    stats = ExtractionStats()
    got = {c.name: c for c in extract_file(path, min_len=10, stats=stats)}
    for tag, dna in expect.items():
        if dna is None:
            assert tag not in got, tag
        else:
            assert got[tag].dna() == dna, tag
    want = {}
    for r in reasons.values():
        want[r] = want.get(r, 0) + 1
    assert {k: v for k, v in stats.dropped.items() if v} == want
    assert stats.kept == sum(d is not None for d in expect.values())
    assert stats.cds_features == len(expect)
    assert stats.kept + sum(stats.dropped.values()) == stats.cds_features


def test_translation_honours_tables_and_exceptions(cases):
    path, _, _ = cases
    got = {c.name: c for c in extract_file(path, min_len=10)}
    assert got["minus"].protein.startswith("M")  # GTG start read as initiator Met
    assert "*" not in got["table4"].protein and got["table4"].protein[10] == "W"
    assert got["selenocysteine"].protein[20] == "U"
    assert got["table4"].transl_table == 4


def test_matches_biopython_feature_extract(cases):
    path, _, _ = cases
    ours = {c.name: c.dna() for c in extract_file(path, min_len=10)}
    checked = 0
    for rec in SeqIO.parse(path, "genbank"):
        for f in rec.features:
            tag = f.qualifiers.get("locus_tag", [None])[0]
            if f.type != "CDS" or tag not in ours:
                continue
            start = int(f.qualifiers.get("codon_start", ["1"])[0]) - 1
            assert str(f.extract(rec.seq))[start:].upper() == ours[tag], tag
            checked += 1
    assert checked == len(ours)


def test_gzip_and_plain_agree(cases, tmp_path):
    path, _, _ = cases
    gz = write_genbank(tmp_path / "cases.gbff.gz", [path.read_text()], gz=True)
    plain = [(c.name, c.dna()) for c in extract_file(path, min_len=10)]
    assert plain == [(c.name, c.dna()) for c in extract_file(gz, min_len=10)]


def test_multi_member_gzip_reads_as_one_file(cases, tmp_path):
    """bgzip and `cat a.gz b.gz` write several gzip members; they are one GenBank text."""
    path, _, _ = cases
    text = path.read_bytes()
    cut = text.index(b"\nLOCUS", 1) + 1 if b"\nLOCUS" in text[1:] else len(text) // 2
    multi = tmp_path / "multi.gbff.gz"
    multi.write_bytes(gzip.compress(text[:cut]) + gzip.compress(text[cut:]))
    plain = [(c.name, c.dna()) for c in extract_file(path, min_len=10)]
    assert plain and plain == [(c.name, c.dna()) for c in extract_file(multi, min_len=10)]


def test_record_without_sequence_is_skipped_and_counted(tmp_path):
    rng = random.Random(1)
    g = orf(rng, 40)
    good = genbank_text("GOOD1", g, [(f"1..{len(g)}", {"locus_tag": "g1"})])
    con = genbank_text("CON1", "", [("1..120", {"locus_tag": "c1"})], division="CON")
    path = write_genbank(tmp_path / "mixed.gbk", [con, good])
    stats = ExtractionStats()
    kept = list(extract_file(path, min_len=10, stats=stats))
    assert [c.name for c in kept] == ["g1"]
    assert stats.records_without_sequence == 1
    assert any("CON1" in w and "no sequence" in w for w in stats.warnings)


@pytest.mark.parametrize("location", ["join(1..12,", "abc..12", "12..3"])
def test_malformed_location_is_one_clear_error(tmp_path, location):
    rng = random.Random(2)
    g = orf(rng, 40)
    path = write_genbank(tmp_path / "bad.gbk", [genbank_text("BAD1", g, [(location, {"locus_tag": "x"})])])
    with pytest.raises(UserError) as exc:
        list(extract_file(path))
    msg = str(exc.value)
    assert "bad.gbk" in msg and "BAD1" in msg and "\n" not in msg
