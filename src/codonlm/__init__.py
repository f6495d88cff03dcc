"""codonlm: a codon-level GPT for prokaryotic genes. From Python: `from codonlm import CodonLM` (see api.py).

Importing the package stays light (the CLI's --help imports no torch): `CodonLM` is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from codonlm.api import CodonLM

__all__ = ["CodonLM"]


def __getattr__(name: str):
    if name == "CodonLM":
        from codonlm.api import CodonLM

        return CodonLM
    raise AttributeError(f"module 'codonlm' has no attribute {name!r}")
