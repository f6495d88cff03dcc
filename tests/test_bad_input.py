"""Bad input: one clear line naming the file, exit 2, no traceback, earlier outputs untouched."""

from __future__ import annotations

import gzip
import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest
from genbank_fixtures import genbank_text, write_genbank

from codonlm.cli import main


@pytest.fixture
def write_cfg(tiny_config, write_config):
    """`write_cfg(tmp_path, files, name="cfg.yaml") -> path`: the tiny config for these files as YAML."""
    return lambda tmp_path, files, name="cfg.yaml": write_config(tmp_path / name, tiny_config(tmp_path, files))


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good_text = genbank_text("REC9", "ATG" + "AAA" * 40 + "TAA", [("1..126", {"locus_tag": "x"})])
    out = {}
    out["missing"] = tmp_path / "does_not_exist.gbk"
    out["empty"] = tmp_path / "empty.gbk"
    out["empty"].write_text("")
    full = gzip.compress(good_text.encode() * 50)
    out["truncated_gzip"] = tmp_path / "trunc.gbk.gz"
    out["truncated_gzip"].write_bytes(full[: len(full) // 2])
    out["corrupt_gzip"] = tmp_path / "corrupt.gbk.gz"  # a damaged deflate stream: the inflater itself fails
    out["corrupt_gzip"].write_bytes(full[:40] + bytes(64) + full[104:])
    out["not_genbank"] = tmp_path / "notes.gbk"
    out["not_genbank"].write_text("this is a FASTA file\n>seq1\nACGT\n")
    out["malformed_location"] = write_genbank(
        tmp_path / "badloc.gbk", [genbank_text("REC8", "ATG" + "AAA" * 40 + "TAA", [("join(1..12,", {"locus_tag": "y"})])]
    )
    out["directory"] = tmp_path / "a_folder.gbk"
    out["directory"].mkdir()
    return out


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated_gzip", "corrupt_gzip", "not_genbank", "malformed_location",
                                  "directory"])
def test_bad_file_one_line_exit_2_outputs_intact(tmp_path, capsys, kind, make_corpus, write_cfg):
    files, _ = make_corpus(tmp_path, n_genes=20)
    good_cfg = write_cfg(tmp_path, files)
    assert main(["prepare", "-c", str(good_cfg), "--run-id", "r1", "--quiet"]) == 0
    before = _snapshot(tmp_path / "processed")
    capsys.readouterr()
    bad = _bad_files(tmp_path)[kind]
    bad_cfg = write_cfg(tmp_path, [files[0], bad], name="bad.yaml")
    assert main(["prepare", "-c", str(bad_cfg), "--run-id", "r2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert bad.name in err[0] and "Traceback" not in err[0]
    assert _snapshot(tmp_path / "processed") == before


def test_record_without_sequence_warns_and_continues(tmp_path, capsys, make_corpus, write_cfg):
    files, _ = make_corpus(tmp_path, n_genes=20)
    con = write_genbank(tmp_path / "con.gbk", [genbank_text("CON7", "", [("1..120", {"locus_tag": "c"})], division="CON")]
                        + [genbank_text("OK7", "ATG" + "GCA" * 40 + "TAA", [("1..126", {"locus_tag": "k"})])])
    cfg = write_cfg(tmp_path, [files[0], con])
    assert main(["prepare", "-c", str(cfg), "--run-id", "r3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "CON7" in out and "no sequence" in out
    import json

    report = json.loads((tmp_path / "runs" / "r3" / "pipeline_prepare.json").read_text())
    assert report["datasets"]["ds1"]["extraction"]["records_without_sequence"] == 1


def test_config_typo_exit_2_subprocess(tmp_path):
    """Through a real process: stderr is one line, no traceback."""
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("model:\n  n_layers: 2\ndata:\n  datasets: [{name: a, gbff: x.gbk}]\n")
    res = subprocess.run([sys.executable, "-m", "codonlm.cli", "prepare", "-c", str(cfg)], capture_output=True,
                         text=True, cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "n_layers" in lines[0] and "n_layer" in lines[0] and "Traceback" not in res.stderr


def test_extract_cds_cli(tmp_path, capsys):
    rng = random.Random(3)
    g = "ATG" + "".join(rng.choice(["GCA", "AAA", "CTG"]) for _ in range(40)) + "TGA"
    path = write_genbank(tmp_path / "one.gbk", [genbank_text("ONE", g, [(f"1..{len(g)}", {"locus_tag": "L1"})])])
    out = tmp_path / "cds.fasta"
    assert main(["extract-cds", str(path), "--out", str(out), "--min-len", "10"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == f">ONE L1 1..{len(g)} +" and "".join(lines[1:]) == g
    assert main(["extract-cds", str(tmp_path / "nope.gbk"), "--out", str(out)]) == 2
    assert out.read_text().splitlines()[0].startswith(">ONE")  # earlier output intact
