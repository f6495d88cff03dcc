"""Default corpus fetch: no-op when present, clear message without apt."""

from __future__ import annotations

import shutil

import pytest

from codonlm.data import fetch
from codonlm.errors import UserError


def test_refetch_is_noop(raw_corpus, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in raw_corpus.iterdir()}
    manifest = fetch.fetch_default_corpus(raw_corpus)
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in raw_corpus.iterdir()} == before
    assert set(manifest["files"]) == set(fetch.GENOMES)
    assert all(len(v["sha256"]) == 64 and v["bytes"] > 0 for v in manifest["files"].values())


def test_without_apt_says_how_to_use_local_files(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError) as exc:
        fetch.fetch_default_corpus(tmp_path / "raw")
    assert "apt-get" in str(exc.value) and "gbff" in str(exc.value)
