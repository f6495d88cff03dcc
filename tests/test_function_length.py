"""Functions a reader can hold in their head: none in src/ runs past MAX_LINES without a `# long:` reason
written on its def line or the line above it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 80


def long_functions(path: Path, max_lines: int = MAX_LINES) -> list[str]:
    """'file:line name (N lines)' for each function of `path` longer than max_lines with no `# long:` reason."""
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse("\n".join(lines), filename=str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = node.end_lineno - node.lineno + 1  # def line to last line, docstring included
        reason = any("# long:" in line for line in lines[max(node.lineno - 2, 0) : node.lineno])
        if length > max_lines and not reason:
            found.append(f"{path}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_the_check_finds_a_long_function_and_accepts_a_reason(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    plain = tmp_path / "plain.py"
    plain.write_text(f"def short():\n    return 1\n\n\ndef long_one():\n{body}")
    assert [f.split()[1] for f in long_functions(plain)] == ["long_one"]
    reasoned = tmp_path / "reasoned.py"
    reasoned.write_text(f"# long: one flat table, read top to bottom\ndef long_one():\n{body}")
    assert long_functions(reasoned) == []


def test_no_function_in_src_is_long_without_a_reason():
    found = [f for path in sorted(SRC.rglob("*.py")) for f in long_functions(path)]
    assert not found, "split these, or write a '# long: why' beside the def:\n" + "\n".join(found)
