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


def _spans(loc, strand: int = 1) -> tuple[list[tuple[int, int, bool, bool]], int] | None:
    """(start, end, before, after) of each range of a gb-io location in genome order, and the strand;
    None for a location GFF3 cannot say (external, between bases ...)."""
    import gb_io

    if isinstance(loc, gb_io.Range):
        return [(loc.start, loc.end, loc.before, loc.after)], strand
    if isinstance(loc, gb_io.Complement):
        return _spans(loc.location, -strand)
    if isinstance(loc, gb_io.Join):
        parts = [_spans(sub, strand) for sub in loc.locations]
        if any(p is None for p in parts):
            return None
        return [s for p, _ in parts for s in p], parts[0][1]
    return None


def _attr(value: str) -> str:
    """A GFF3 attribute value, percent-encoded where GFF3 reserves the character."""
    for ch, code in (("%", "%25"), (";", "%3B"), ("=", "%3D"), ("&", "%26"), (",", "%2C"), ("\t", "%09")):
        value = value.replace(ch, code)
    return value


def gff3_from_genbank(path: Path, flavour: str = "ncbi") -> tuple[str, str]:
    """(GFF3 text, FASTA text) of a GenBank file's CDS, as NCBI writes them (gene lines carry locus_tag and
    pseudo, CDS lines point to them with Parent, joined CDS as lines sharing an ID, partial ends as
    start_range/end_range) or as Prokka does (everything on the CDS lines, the FASTA after ##FASTA)."""
    import gb_io

    from codonlm.io import open_binary

    gff, fasta = ["##gff-version 3"], []
    with open_binary(path) as fh:
        records = list(gb_io.iter(fh))
    for rec in records:
        seq = bytes(rec.sequence).decode().upper()
        n = len(seq)
        fasta.append(f">{rec.name}\n" + "\n".join(seq[i : i + 80] for i in range(0, n, 80)))
        gff.append(f"##sequence-region {rec.name} 1 {n}")
        circular = ";Is_circular=true" if rec.circular else ""
        gff.append(f"{rec.name}\tRefSeq\tregion\t1\t{n}\t.\t+\t.\tID={rec.name}:1..{n}{circular}")
        for k, feat in enumerate((f for f in rec.features if f.kind == "CDS"), 1):
            found = _spans(feat.location)
            if found is None:
                continue
            spans, strand = found
            spans = [part for s in spans for part in ([(s[0], n, s[2], False), (0, s[1], False, s[3])]
                                                       if s[0] > s[1] else [s])]  # a range across the origin
            quals = {q.key: q.value for q in feat.qualifiers}
            flags = {"pseudo": "true"} if "pseudo" in quals or "pseudogene" in quals else {}
            left, right = spans[0][2] if strand == 1 else spans[-1][2], spans[-1][3] if strand == 1 else spans[0][3]
            lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
            if left or right:
                flags["partial"] = "true"
                flags.update({"start_range": f".,{lo + 1}"} if any(s[2] for s in spans) else {})
                flags.update({"end_range": f"{hi},."} if any(s[3] for s in spans) else {})
            own = {key: quals[key] for key in ("protein_id", "gene", "transl_table", "transl_except") if quals.get(key)}
            tag = {"locus_tag": quals["locus_tag"]} if quals.get("locus_tag") else {}
            phase = str(int(quals.get("codon_start") or 1) - 1)
            sign = "+" if strand == 1 else "-"
            if flavour == "ncbi":
                gene = {"ID": f"gene-{rec.name}-{k}", **tag, **({"pseudo": "true"} if flags.get("pseudo") else {})}
                gff.append(f"{rec.name}\tRefSeq\tgene\t{lo + 1}\t{hi}\t.\t{sign}\t.\t"
                           + ";".join(f"{key}={_attr(v)}" for key, v in gene.items()))
                attrs = {"ID": f"cds-{rec.name}-{k}", "Parent": gene["ID"], **own, **flags}
            else:
                attrs = {"ID": f"PROKKA_{rec.name}_{k:05d}", **tag, **own, **flags}
            text = ";".join(f"{key}={_attr(v)}" for key, v in attrs.items())
            five_prime = 0 if strand == 1 else len(spans) - 1
            for i, (a, b, _, _) in enumerate(spans):
                gff.append(f"{rec.name}\tRefSeq\tCDS\t{a + 1}\t{b}\t.\t{sign}\t{phase if i == five_prime else '0'}\t{text}")
    fasta_text = "\n".join(fasta) + "\n"
    gff_text = "\n".join(gff) + "\n"
    if flavour == "prokka":
        gff_text += "##FASTA\n" + fasta_text
    return gff_text, fasta_text
