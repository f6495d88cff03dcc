"""Default corpus: complete prokaryotic genomes from Debian's cct-examples package.

`apt-get download` + `dpkg-deb -x` fetch and unpack the package without installing it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from codonlm.errors import UserError
from codonlm.io import atomic_write, sha256_file, write_json
from codonlm.log import log

PACKAGE = "cct-examples"
_EX = "usr/share/doc/cct/examples/sample_projects"
# data/raw name -> path inside the unpacked package
GENOMES = {
    "Escherichia_coli_K12_MG1655.gbk.gz": f"{_EX}/sample_project_3/comparison_genomes/NC_000913.gbk.gz",
    "Bradyrhizobium_japonicum_USDA110.gbk.gz": f"{_EX}/sample_project_3/reference_genome/NC_004463.gbk.gz",
    "Roseobacter_denitrificans_OCh114.gbk": "usr/share/cct/lib/scripts/cgview_xml_builder/test_input/R_denitrificans.gbk",
    "Methanosarcina_acetivorans_C2A.gbk.gz": f"{_EX}/sample_project_2/comparison_genomes/Methanosarcina_acetivorans.gbk.gz",
    "Methanococcus_maripaludis_S2.gbk.gz": f"{_EX}/sample_project_2/comparison_genomes/Methanococcus_maripaludis.gbk.gz",
    "Methanothermobacter_thermautotrophicus_DeltaH.gbk.gz":
        f"{_EX}/sample_project_2/reference_genome/Methanobacterium_thermoautotrophicum.gbk.gz",
    "Thermococcus_kodakaraensis_KOD1.gbk.gz": f"{_EX}/sample_project_2/comparison_genomes/Thermococcus_kodakaraensis.gbk.gz",
}
MANIFEST = "manifest.json"
_NO_APT = (
    "cannot fetch the default corpus: {why}. Without Debian's apt, point data.datasets[].gbff in your "
    "config at local GenBank files (.gb/.gbk/.gbff, optionally .gz) instead"
)


def _manifest_ok(dest: Path) -> bool:
    path = dest / MANIFEST
    if not path.is_file():
        return False
    try:
        entries = json.loads(path.read_text())["files"]
    except (ValueError, KeyError):
        return False
    for name in GENOMES:
        f = dest / name
        entry = entries.get(name)
        if entry is None or not f.is_file() or f.stat().st_size != entry["bytes"]:
            return False
    return True


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def fetch_default_corpus(dest: str | Path = "data/raw") -> dict:
    """Copy the default genomes into dest and write dest/manifest.json; a no-op when already there."""
    dest = Path(dest)
    if _manifest_ok(dest):
        log(f"[fetch-data] default corpus already in {dest} ({len(GENOMES)} genomes); nothing to do")
        return json.loads((dest / MANIFEST).read_text())
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise UserError(_NO_APT.format(why=f"'{tool}' is not available on this machine"))
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="codonlm-fetch-") as tmp:
        work = Path(tmp)
        got = _run(["apt-get", "download", PACKAGE], work)
        if got.returncode != 0:
            _run(["apt-get", "update", "-qq"], work)  # package lists may be missing on a fresh machine
            got = _run(["apt-get", "download", PACKAGE], work)
        debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
        if got.returncode != 0 or not debs:
            last = (got.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(_NO_APT.format(why=f"'apt-get download {PACKAGE}' failed ({last})"))
        version = debs[0].name.split("_")[1].replace("%3a", ":")
        unpacked = work / "pkg"
        res = _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], work)
        if res.returncode != 0:
            raise UserError(f"could not unpack {debs[0].name}: {res.stderr.strip()}; retry 'codonlm fetch-data'")
        files = {}
        for name, inner in GENOMES.items():
            src = unpacked / inner
            if not src.is_file():
                raise UserError(f"{PACKAGE} {version} lacks {inner}; the package layout changed, please report it")
            atomic_write(dest / name, src.read_bytes())
            files[name] = {"sha256": sha256_file(dest / name), "bytes": (dest / name).stat().st_size,
                           "source": f"{PACKAGE} {version}: /{inner}"}
    manifest = {"package": PACKAGE, "version": version, "files": files}
    write_json(dest / MANIFEST, manifest)
    log(f"[fetch-data] wrote {len(files)} genomes from {PACKAGE} {version} to {dest}")
    return manifest


def missing_default_files(cfg, dest: str | Path = "data/raw") -> list[str]:
    """Default-corpus files the config names that are not on disk yet, GenBank or bare FASTA (others are
    the user's to supply)."""
    dest = Path(dest)
    wanted = {str(dest / name) for name in GENOMES} | {str(assembly_path(dest, name)) for name in GENOMES}
    named = [f for d in cfg.data.datasets for f in d.files]
    return [f for f in named if str(Path(f)) in wanted and not Path(f).is_file()]


ASSEMBLIES = "assemblies"


def assembly_path(dest: str | Path, genbank_name: str) -> Path:
    """Where the default genome `genbank_name` lies as a bare assembly: dest/assemblies/<genome>.fasta.gz."""
    return Path(dest) / ASSEMBLIES / (genbank_name.split(".gb")[0] + ".fasta.gz")


def write_assembly(genbank: str | Path, out: str | Path) -> int:
    """The sequences of a GenBank file as gzipped FASTA, features stripped (a genome as an assembler
    leaves it), atomically; returns the bases written."""
    import gzip

    from codonlm.data.genbank import iter_records

    parts, bases = [], 0
    for record in iter_records(genbank):
        seq = bytes(record.sequence)
        bases += len(seq)
        parts.append(b">" + record.name.encode() + b"\n" + b"\n".join(seq[i : i + 80] for i in range(0, len(seq), 80)))
    atomic_write(out, gzip.compress(b"\n".join(parts) + b"\n", mtime=0))
    return bases


def write_default_assemblies(dest: str | Path, wanted: list[str]) -> None:
    """The bare assemblies among `wanted` paths, written from the default corpus's GenBank files in dest."""
    for name in GENOMES:
        out = assembly_path(dest, name)
        if str(out) in {str(Path(w)) for w in wanted}:
            bases = write_assembly(Path(dest) / name, out)
            log(f"[fetch-data] wrote {out}: {bases:,} bp, {name} without its annotation")
