"""The package's layout holds: layers import downward only and no module cycles (the import-linter contracts
in pyproject.toml), no private names imported from another package, no test-only switches in src/."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "codonlm"


def _modules() -> dict[str, ast.Module]:
    """codonlm.<dotted name> -> its parsed source, for every module in src/codonlm."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = ast.parse(path.read_text())
    return out


def _package(module: str) -> str:
    """The top-level part of codonlm a module belongs to: codonlm.analysis.summary -> codonlm.analysis."""
    return ".".join(module.split(".")[:2])


def test_import_contracts_hold():
    """`lint-imports` (import-linter, reading [tool.importlinter] in pyproject.toml), as a developer runs it."""
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert re.search(r"Contracts: (\d+) kept, 0 broken", res.stdout).group(1) == "2", res.stdout[-2000:]


def test_no_private_name_is_imported_from_another_package():
    """A name with a leading underscore is its package's own business: another package that needs it gets a
    public name (e.g. GeneticCode.aa_classes, once evaluate.perplexity's _aa_for)."""
    found = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("codonlm"):
                if _package(node.module) != _package(module):
                    found += [f"{module}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_")]
    assert not found, found


def test_src_has_no_test_only_switches():
    """Fault injection lives in tests/support/codonlm_faults.py (loaded by the test's own subprocess
    environment), not as environment switches or write hooks in the package."""
    found = [f"{path.relative_to(REPO)}:{i}: {line.strip()}" for path in sorted(SRC.rglob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"CODONLM_TEST|AFTER_WRITE|kill_hook|KILL_(AT|IN)_", line)]
    assert not found, found


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes of a module and of its classes and functions."""
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def test_the_checkpoints_folder_comes_from_the_config():
    """`outputs.out_dir` (default outputs/checkpoints) is written once, in config.py: code, defaults, help
    and messages take it from a run's config (runid.locate_run) or from the schema's default, so a run with
    another out_dir is found without flags (docstrings may still name the default as an example)."""
    found = []
    for module, tree in _modules().items():
        docs = _docstrings(tree)
        found += [f"{module}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                  and "outputs/checkpoints" in node.value and module != "codonlm.config"]
    assert not found, found
