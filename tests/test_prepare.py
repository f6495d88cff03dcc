"""prepare on small GenBank fixtures: NPZ layout, leak-free splits, determinism, reports.

The content-addressed layout, run records, parallel workers and faults: test_prepare_layout.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from codonlm.config import parse_config
from codonlm.data.codons import genetic_code
from codonlm.data.layout import SPLITS, data_key, key_dir
from codonlm.data.prepare import prepare


@pytest.fixture(scope="session")
def make_config(tiny_config):
    """`make_config(tmp_path, files, **data)`: the validated tiny config with a 20% test split."""
    return lambda tmp_path, files, **data: parse_config(tiny_config(tmp_path, files, data={"test_frac": 0.2, **data}))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.npz"))}


def prepared(cfg) -> Path:
    """data/processed/<key>/ of a config."""
    return key_dir(cfg.data.processed_dir, data_key(cfg).key)


def test_prepare_writes_documented_arrays(tmp_path, make_corpus, make_config):
    files, _ = make_corpus(tmp_path)
    cfg = make_config(tmp_path, files)
    report = prepare(cfg, run_dir=tmp_path / "run", show_progress=False)
    processed = prepared(cfg)
    assert report["processed"] == str(processed) and not report["reused"]
    total_genes = 0
    for s in SPLITS:
        combined = np.load(processed / "all" / f"{s}.npz")
        assert combined["tokens"].shape[1] == 65 and combined["tokens"].dtype == np.uint8
        assert list(combined["dataset_names"]) == ["ds0", "ds1"]
        parts = [np.load(processed / f"ds{i}" / f"{s}.npz") for i in range(2)]
        for i, p in enumerate(parts):  # each dataset's NPZ stands alone: its own name, index 0
            assert list(p["dataset_names"]) == [f"ds{i}"] and not p["window_dataset"].any() and not p["gene_dataset"].any()
        assert np.array_equal(combined["tokens"], np.concatenate([p["tokens"] for p in parts]))
        assert np.array_equal(combined["gene_tokens"], np.concatenate([p["gene_tokens"] for p in parts]))
        assert np.array_equal(combined["window_dataset"],
                              np.concatenate([np.full(len(p["tokens"]), i) for i, p in enumerate(parts)]))
        off = combined["gene_offsets"]
        assert off[0] == 0 and off[-1] == combined["gene_tokens"].size
        assert len(combined["gene_names"]) == len(off) - 1 == len(combined["gene_dataset"])
        total_genes += len(off) - 1
    assert total_genes == report["kept_cds"] == 120
    assert json.loads((tmp_path / "run" / "integrity.json").read_text())["ok"]
    saved = json.loads((tmp_path / "run" / "pipeline_prepare.json").read_text())
    assert saved["splits"]["train"]["coverage"] == 1.0
    assert set(saved["datasets"]["ds0"]["extraction"]["dropped"]) >= {"pseudo", "partial", "internal_stop"}
    assert json.loads((processed / "itos.json").read_text())[:4] == ["<PAD>", "<BOS_CDS>", "<EOS_CDS>", "<SEP>"]
    assert (tmp_path / "processed" / "itos.json").read_text() == (processed / "itos.json").read_text()


def test_identical_proteins_never_straddle_splits(tmp_path, make_corpus, make_config):
    files, shared = make_corpus(tmp_path)
    cfg = make_config(tmp_path, files)
    prepare(cfg, show_progress=False)
    code = genetic_code(11)
    seen: dict[str, str] = {}
    for s in SPLITS:
        z = np.load(prepared(cfg) / "all" / f"{s}.npz")
        off, toks = z["gene_offsets"], z["gene_tokens"]
        for g in range(len(off) - 1):
            protein = code.translate(toks[off[g] + 1 : off[g + 1] - 1])
            assert seen.setdefault(protein, s) == s, "identical protein in two splits"
    assert sum(p in {k[1:-1] for k in seen} for p in shared) == len(shared)


def test_prepare_is_deterministic_and_seeded(tmp_path, make_corpus, make_config):
    files, _ = make_corpus(tmp_path)
    cfg = make_config(tmp_path, files)
    prepare(cfg, show_progress=False)
    first = _digest(prepared(cfg))
    again = make_config(tmp_path / "again", files)  # a fresh processed folder: built again from scratch
    prepare(again, show_progress=False)
    assert _digest(prepared(again)) == first
    cfg.outputs.seed = 99
    prepare(cfg, show_progress=False)
    assert _digest(prepared(cfg)).keys() == first.keys() and _digest(prepared(cfg)) != first


def test_single_pack_mode_one_gene_per_window(tmp_path, make_corpus, make_config):
    files, _ = make_corpus(tmp_path)
    cfg = make_config(tmp_path, files, pack_mode="single")
    prepare(cfg, show_progress=False)
    z = np.load(prepared(cfg) / "all" / "train.npz")
    assert z["segment_ids"].max() == 1


def test_windows_per_seq_cap_reduces_coverage(tmp_path, make_corpus, make_config):
    files, _ = make_corpus(tmp_path)
    cfg = make_config(tmp_path, files, windows_per_seq=1)
    report = prepare(cfg, show_progress=False)
    assert report["splits"]["train"]["coverage"] < 1.0
    assert report["splits"]["train"]["lost_targets"] > 0


@pytest.mark.integration
def test_prepare_real_corpus(tmp_path, raw_corpus):
    from codonlm.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml")
    cfg.data.processed_dir = str(tmp_path / "processed")
    cfg.outputs.itos_path = str(tmp_path / "processed" / "itos.json")
    for d in cfg.data.datasets:
        d.gbff = str(raw_corpus / Path(d.files[0]).name)
    report = prepare(cfg, run_dir=tmp_path / "run", show_progress=False)
    assert 26_000 < report["kept_cds"] < 28_000
    assert report["splits"]["train"]["coverage"] == 1.0
    assert report["splits"]["test"]["genes"] > 1000
    z = np.load(prepared(cfg) / "all" / "test.npz")
    assert len(z["dataset_names"]) == 7 and set(np.unique(z["window_dataset"])) == set(range(7))


def test_integrity_failure_stops_unless_forced(tmp_path, monkeypatch, make_corpus, make_config):
    from codonlm.data import prepare as prep
    from codonlm.errors import UserError

    files, _ = make_corpus(tmp_path)
    cfg = make_config(tmp_path, files)
    prepare(cfg, show_progress=False)
    before = _digest(tmp_path / "processed")
    real = prep._integrity

    def failing(splits):
        report = real(splits)
        report.update(pad_only_windows=3, ok=False)
        return report

    monkeypatch.setattr(prep, "_integrity", failing)
    cfg.outputs.seed = 5  # would change every output
    with pytest.raises(UserError, match="--force") as exc:
        prepare(cfg, run_dir=tmp_path / "run", show_progress=False)
    assert "block_size" in str(exc.value) and "windows_per_seq" in str(exc.value)
    after = _digest(tmp_path / "processed")
    assert {k: after[k] for k in before} == before  # nothing replaced (the new datasets' parts may stay)
    assert not prepared(cfg).exists()  # and the failed key is not published
    assert json.loads((tmp_path / "run" / "integrity.json").read_text())["pad_only_windows"] == 3
    prepare(cfg, run_dir=tmp_path / "run", force=True, show_progress=False)
    assert (prepared(cfg) / "manifest.json").is_file()
    with pytest.raises(UserError, match="--force"):  # a later prepare without --force still refuses
        prepare(cfg, run_dir=tmp_path / "run", show_progress=False)
