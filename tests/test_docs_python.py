"""README's "From Python" code blocks run as written against a tiny trained run (`RUN_ID` names it)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.prepare import prepare

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)


def test_readme_python_blocks_run(tmp_path, monkeypatch, make_corpus, tiny_config, write_config):
    files, _ = make_corpus(tmp_path, n_genes=20)
    raw = tiny_config(tmp_path, files, epochs=1, max_steps=4)
    cfg = parse_config(raw)
    prepare(cfg, show_progress=False)
    assert main(["train", "-c", str(write_config(tmp_path / "c.yaml", raw)), "--run-id", "docrun"]) == 0
    monkeypatch.chdir(tmp_path)  # CodonLM.load(RUN_ID) looks in ./runs, where the run folder is
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2
    namespace = {"RUN_ID": "docrun"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert isinstance(namespace["scores"], pd.DataFrame) and np.isfinite(namespace["scores"].perplexity).all()
    assert namespace["vectors"].shape == (1, cfg.model.n_embd)
    assert len(namespace["variants"]) == 63 * (len(namespace["genes"]["thrL"]) // 3)
    assert not namespace["lm"].model.has_active_hooks()


@pytest.mark.parametrize("name", ["score", "embed", "next_codons", "generate", "scan_variants",
                                  "run_with_cache", "run_with_hooks"])
def test_readme_shows_every_api_method(name):
    assert f"lm.{name}(" in "".join(python_blocks(README.read_text()))
