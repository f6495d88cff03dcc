"""Design on the real default corpus (issue 21, "Done when"): every held-out protein of every host designs with
exact back-translation, and the synthesis constraints hold on real proteins of several hosts or are named.

The model is a host-conditioned tiny one trained 2 steps (explicit model settings, whatever the default
config says): what is checked is the decoder's synonym constraint and the constraint repair, not quality.
Every check here is the test's own: Biopython translates, sites are searched on both strands, GC is counted
per window and homopolymers by a regular expression.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from Bio.Data.CodonTable import unambiguous_dna_by_id
from Bio.Seq import Seq

from codonlm import CodonLM
from codonlm.cli import main
from codonlm.config import parse_config
from codonlm.data.codons import decode
from codonlm.data.prepare import prepare
from codonlm.errors import UserError
from codonlm.evaluate.design_bench import design_every_heldout
from codonlm.io import read_split_genes

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RUN = "heldout"
SITES = {"EcoRI": "GAATTC", "BsaI": "GGTCTC", "BsmBI": "CGTCTC"}
GC_LOW, GC_HIGH, GC_WINDOW, MAX_HOMOPOLYMER = 0.40, 0.60, 50, 6
CONSTRAINT_HOSTS = ("ecoli_k12", "bradyrhizobium_japonicum", "methanosarcina_acetivorans", "methanococcus_maripaludis")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, raw_corpus):
    """The default corpus prepared for a host-conditioned 2-layer model (width 32, block 64) trained 2 steps."""
    tmp = tmp_path_factory.mktemp("design_heldout")
    raw = yaml.safe_load((raw_corpus.parents[1] / "configs" / "tiny_cpu.yaml").read_text())
    for d in raw["data"]["datasets"]:
        d["gbff"] = str(raw_corpus / d["gbff"].rsplit("/", 1)[-1])
    raw["model"].update(condition_on_host=True, block_size=64, n_layer=2, n_head=2, n_embd=32)
    raw["data"]["processed_dir"] = str(tmp / "processed")
    raw["train"].update(max_steps=2, batch_size=4, eval_windows=16, amp=False)
    raw["outputs"].update(itos_path=str(tmp / "processed" / "itos.json"), runs_dir=str(tmp / "runs"),
                          out_dir=str(tmp / "ckpt"), scores_dir=str(tmp / "scores"))
    config = tmp / "c.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    prepare(parse_config(raw), show_progress=False)
    assert main(["train", "-c", str(config), "--run-id", RUN]) == 0
    lm = CodonLM.load(RUN, runs_dir=tmp / "runs")
    assert lm.hosts  # host tokens on: decoding starts after <BOS_CDS> <HOST:name>
    return tmp, lm


def _heldout(tmp) -> dict[str, list[tuple[str, str]]]:
    """Host -> (gene name, natural DNA) of every held-out (test-split) gene, read straight from the NPZ."""
    (path,) = (tmp / "processed").glob("*/all/test.npz")
    held = read_split_genes(path)
    return {host: [(held.names[g], decode(held.codons(g))) for g in held.of_dataset(d)]
            for d, host in enumerate(held.dataset_names)}


def _protein(dna: str, table_id: int) -> str:
    """Biopython's protein of a natural gene: a start codon of the table read as M, the last stop dropped."""
    protein = str(Seq(dna).translate(table=table_id))
    if dna[:3] in unambiguous_dna_by_id[table_id].start_codons:
        protein = "M" + protein[1:]
    return protein[:-1] if protein.endswith("*") else protein


def _back_translates(dna: str, protein: str, table_id: int) -> bool:
    """Biopython: a CDS (start codon of the table read as M, one stop, at the end) encoding exactly `protein`;
    a protein not starting with M (a fragment) starts with a codon of its first residue."""
    if protein.startswith("M"):
        return str(Seq(dna).translate(table=table_id, cds=True)) == protein
    return str(Seq(dna).translate(table=table_id)) == protein + "*"


def test_every_heldout_protein_of_every_host_designs_with_exact_back_translation(real_run):
    tmp, lm = real_run
    heldout = _heldout(tmp)
    t0 = time.perf_counter()
    results = design_every_heldout(lm.model, lm.design_prompt, lm.cfg, RUN, runs_dir=tmp / "runs", batch=32)
    print(f"greedy design of every held-out protein: {time.perf_counter() - t0:.1f} s")
    assert [r.host for r in results] == [d.name for d in lm.cfg.data.datasets]  # every host, the archaea too
    designed = 0
    for r in results:
        natural = dict(heldout[r.host])
        proteins = {name: _protein(dna, r.table_id) for name, dna in natural.items()}
        assert sorted([n for n, _, _ in r.designs] + [n for n, _ in r.refused]) == sorted(natural)  # every one
        assert r.failures == []
        starts = set(unambiguous_dna_by_id[r.table_id].start_codons)
        for name, protein, ids in r.designs:
            dna = decode(ids)
            assert protein == proteins[name], name
            assert _back_translates(dna, protein, r.table_id), (r.host, name)
            assert (dna[:3] in starts) == protein.startswith("M"), (r.host, name, dna[:3])
        # refused: exactly the proteins with a stop inside (selenocysteine / pyrrolysine codons), one line each
        assert sorted(n for n, _ in r.refused) == sorted(n for n, p in proteins.items() if "*" in p)
        for name, reason in r.refused:
            assert "inside the protein" in reason and "\n" not in reason
            with pytest.raises(UserError, match="inside the protein"):
                lm.design({name: proteins[name]}, r.host)
        designed += len(r.designs)
    assert designed == sum(map(len, heldout.values())) - sum(len(r.refused) for r in results) > 1200


def test_beam_and_sampling_back_translate_on_a_couple_hundred_heldout_proteins(real_run):
    """Beam (K=2) and sampling through CodonLM.design, one protein at a time: the 30 shortest held-out proteins
    of each host (30-230 residues, most past the model's 64-token block: the sliding cache), for CI time."""
    tmp, lm = real_run
    table_of = {d.name: d.transl_table for d in lm.cfg.data.datasets}
    n = 0
    for host, genes in _heldout(tmp).items():
        proteins = {name: _protein(dna, table_of[host]) for name, dna in genes}
        shortest = sorted((name for name, p in proteins.items() if "*" not in p), key=lambda n: len(proteins[n]))
        proteins = {name: proteins[name] for name in shortest[:30]}
        beam = lm.design(proteins, host, beam=2)
        samples = lm.design(proteins, host, samples=2, temperature=1.0, seed=3)
        assert len(beam) == len(proteins) and len(samples) == 2 * len(proteins)
        for table in (beam, samples):
            for r in table.itertuples():
                assert _back_translates(r.dna, proteins[r.id], table_of[host]), (host, r.id, r.design)
        n += len(proteins)
    assert n == 30 * len(table_of)


# --------------------------------------------------------------------------- constraints on real proteins


def _longest_homopolymer(dna: str) -> int:
    return max(len(m.group()) for m in re.finditer(r"A+|C+|G+|T+", dna))


def _window_gc(dna: str) -> np.ndarray:
    is_gc = np.array([b in "GC" for b in dna], dtype=float)
    return np.convolve(is_gc, np.ones(GC_WINDOW), "valid") / GC_WINDOW


def _breached(dna: str) -> set[str]:
    """The test's own labels of the constraints `dna` breaks (both strands for the sites)."""
    rc = str(Seq(dna).reverse_complement())
    out = {f"avoid {name} ({site})" for name, site in SITES.items() if site in dna or site in rc}
    gc = (dna.count("G") + dna.count("C")) / len(dna)
    if not GC_LOW <= gc <= GC_HIGH:
        out.add("GC 0.4-0.6")
    windows = _window_gc(dna)
    if windows.min() < GC_LOW - 1e-9 or windows.max() > GC_HIGH + 1e-9:
        out.add("GC 0.4-0.6 in 50-nt windows")
    if _longest_homopolymer(dna) > MAX_HOMOPOLYMER:
        out.add("homopolymer <= 6")
    return out


def _gc_window_impossible(protein: str, table_id: int) -> bool:
    """Whether some 17 residues force every 50-nt window inside their 51 nt out of GC 0.40-0.60, whatever
    synonyms are chosen: at most 19 G/C (< 0.40) even with the most G/C-rich codons, or at least 31 (> 0.60,
    one base dropped) even with the poorest."""
    most, least = {}, {}
    for codon, aa in unambiguous_dna_by_id[table_id].forward_table.items():
        n = sum(b in "GC" for b in codon)
        most[aa], least[aa] = max(most.get(aa, 0), n), min(least.get(aa, 3), n)
    spans = [protein[i : i + 17] for i in range(len(protein) - 16)]
    return any(sum(most[a] for a in w) < GC_LOW * GC_WINDOW or sum(least[a] for a in w) - 1 > GC_HIGH * GC_WINDOW
               for w in spans)


def _constraint_proteins(tmp, host: str, table_id: int, per_host: int = 5) -> tuple[dict[str, str], set[str]]:
    """The first `per_host` held-out proteins of 80-300 residues of a host without an impossible GC window,
    and the first one with such a window when the host has one; and the names of the latter."""
    ordinary, impossible = {}, {}
    for name, dna in _heldout(tmp)[host]:
        protein = _protein(dna, table_id)
        if "*" in protein or not 80 <= len(protein) <= 300:
            continue
        if _gc_window_impossible(protein, table_id):
            impossible.setdefault(name, protein)
        elif len(ordinary) < per_host:
            ordinary[name] = protein
    impossible = dict(list(impossible.items())[:1])
    return {**ordinary, **impossible}, set(impossible)


@pytest.mark.parametrize("host", CONSTRAINT_HOSTS)
def test_constraints_hold_or_are_named_on_real_heldout_proteins(real_run, host, tmp_path, capsys):
    tmp, lm = real_run
    table_id = next(d.transl_table for d in lm.cfg.data.datasets if d.name == host)
    proteins, impossible = _constraint_proteins(tmp, host, table_id)
    fasta = tmp_path / "p.fa"
    fasta.write_text("".join(f">{name}\n{p}\n" for name, p in proteins.items()))
    code = main(["design", RUN, "--runs-dir", str(tmp / "runs"), "--protein", str(fasta), "--host", host,
                 "--avoid", ",".join(SITES), "--gc", f"{GC_LOW}-{GC_HIGH}", "--gc-window", str(GC_WINDOW),
                 "--max-homopolymer", str(MAX_HOMOPOLYMER), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    table = pd.read_csv(tmp_path / "out" / "designs.csv", keep_default_na=False)
    assert list(table["id"]) == list(proteins)  # every design written, unsatisfied ones too
    for r in table.itertuples():
        assert _back_translates(r.dna, proteins[r.id], table_id), r.id
        named = set(filter(None, r.unsatisfied.split("; ")))
        assert named == _breached(r.dna), r.id  # satisfied, or named: never silently dropped
        assert not any(n.startswith(("avoid", "homopolymer")) for n in named), r.id  # synonyms always allow these
        if r.id in impossible:
            assert "GC 0.4-0.6 in 50-nt windows" in named, r.id
    failed = table[table["unsatisfied"] != ""]
    assert (~table["id"].isin(failed["id"]) & ~table["id"].isin(impossible)).sum() >= 4  # of 5: the repair works
    if host == "bradyrhizobium_japonicum":  # GC-rich: the host with 17 residues of only A/G/P/R-like codons
        assert len(impossible) == 1
    if len(failed):  # exit 2, one line (stderr) naming the first; the log names each in one line (stdout)
        (line,) = err.strip().splitlines()
        assert code == 2 and failed["id"].iloc[0] in line and "constraints not satisfied" in line
        for name, unsatisfied in zip(failed["id"], failed["unsatisfied"], strict=True):
            assert [line for line in out.splitlines() if name in line and unsatisfied in line] != [], name
    else:
        assert code == 0 and err == ""
