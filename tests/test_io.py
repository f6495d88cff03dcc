"""The one I/O module: atomic writes survive a failing writer, FASTA goes through Biopython, splits read back."""

from __future__ import annotations

import numpy as np
import pytest

from codonlm.data.codons import frame_gene
from codonlm.data.records import read_records
from codonlm.errors import UserError
from codonlm.io import atomic_path, atomic_write, read_fasta, read_split_genes, write_fasta


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.csv"
    atomic_write(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary left behind


def test_atomic_path_keeps_suffix_for_format_sniffing(tmp_path):
    with atomic_path(tmp_path / "fig.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path


def test_fasta_round_trip_and_clean_dna(tmp_path):
    path = tmp_path / "genes.fasta"
    n = write_fasta(path, [("g1", "ATGAAATAA"), ("g2", "ATG" * 30 + "TAA")])
    assert n == 2
    assert read_fasta(path) == [("g1", "ATGAAATAA"), ("g2", "ATG" * 30 + "TAA")]
    assert max(len(line) for line in path.read_text().splitlines()) == 60
    path.write_text(">a desc\natg aaa\nuaa\n>b\nATGNAA\n")
    with pytest.raises(UserError, match="record 'b'.*position 4"):
        read_records(fasta=path)


def test_read_split_genes(tmp_path):
    genes = [frame_gene(np.array([10, 11], np.uint8)), frame_gene(np.array([20], np.uint8))]
    path = tmp_path / "test.npz"
    np.savez(path, gene_tokens=np.concatenate(genes), gene_offsets=np.array([0, 4, 7]),
             gene_dataset=np.array([0, 1], np.int16), gene_names=np.array(["r|a", "r|b"]),
             dataset_names=np.array(["ds0", "ds1"]))
    split = read_split_genes(path)
    assert [g.tolist() for g in split.genes] == [g.tolist() for g in genes]
    assert split.codons(0).tolist() == [10, 11] and split.of_dataset(1) == [1]
    assert split.names == ["r|a", "r|b"] and split.dataset_names == ["ds0", "ds1"]
    with pytest.raises(UserError, match="prepare"):
        read_split_genes(tmp_path / "missing.npz")
