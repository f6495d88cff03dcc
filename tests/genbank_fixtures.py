"""Write small GenBank files for unit tests, and the synonym table to write them with (real-data tests use
the default corpus)."""

from __future__ import annotations

import gzip
from pathlib import Path

from codonlm.data.codons import STOI, genetic_code

# amino acid -> its codons (table 11), to write synonymous copies of a protein
SYNONYMS: dict[str, list[str]] = {}
for _codon in (a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"):
    SYNONYMS.setdefault(chr(genetic_code(11).aa[STOI[_codon]]), []).append(_codon)


def genbank_text(name: str, seq: str, features: list[tuple[str, dict]], circular: bool = False,
                 division: str = "BCT") -> str:
    topo = "circular" if circular else "linear"
    lines = [
        f"LOCUS       {name:<16} {len(seq):>11} bp    DNA     {topo:<8} {division} 01-JAN-2020",
        f"DEFINITION  {name} test record.",
        f"ACCESSION   {name}",
        f"VERSION     {name}.1",
        "KEYWORDS    .",
        "SOURCE      test",
        "  ORGANISM  test",
        "            Bacteria.",
        "FEATURES             Location/Qualifiers",
        f"     source          1..{len(seq)}",
    ]
    for location, quals in features:
        lines.append(f"     CDS             {location}")
        for key, value in quals.items():
            lines.append(f"                     /{key}" if value is None else f'                     /{key}="{value}"'
                         if not str(value).isdigit() else f"                     /{key}={value}")
    if seq:
        lines.append("ORIGIN")
        for i in range(0, len(seq), 60):
            chunk = seq[i : i + 60].lower()
            groups = " ".join(chunk[j : j + 10] for j in range(0, len(chunk), 10))
            lines.append(f"{i + 1:>9} {groups}")
    else:
        lines.append(f"CONTIG      join(AAAA01000001.1:1..{len(seq) or 3000})")
    lines.append("//")
    return "\n".join(lines) + "\n"


def write_genbank(path: Path, records: list[str], gz: bool = False) -> Path:
    text = "".join(records)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        Path(path).write_text(text)
    return Path(path)


def revcomp(s: str) -> str:
    return s.translate(str.maketrans("ACGT", "TGCA"))[::-1]
