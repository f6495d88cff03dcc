"""Shared fixtures: the real default corpus (fetched by ./run_tests.sh) and small configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # genbank_fixtures

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "raw"


@pytest.fixture(scope="session")
def raw_corpus() -> Path:
    from codonlm.data.fetch import GENOMES

    missing = [n for n in GENOMES if not (RAW / n).is_file()]
    if missing:
        pytest.fail(f"default corpus missing ({missing[0]} ...): run ./run_tests.sh or 'codonlm fetch-data'")
    return RAW
