"""Gene design: a protein -> a coding sequence for a host, decoded by the model under synonym constraints.

At each step only the codons of the next amino acid (under the host's genetic code) can be chosen;
the first codon of a protein starting with M is one of the host's start codons among ATG/GTG/TTG
(the model chooses, or `start` pins one), and the last is a stop codon. Decoding extends the model's
key/value cache one codon a step (`sampling.KVStepper`, sliding past block_size: no length limit);
greedy, beam search and sampling. Every design is translated back and must equal the protein:
a mismatch is a bug and raises.

The host (one of the run's datasets) gives the genetic code, and the references the metrics are
computed against, all from the host's TRAINING genes (never its held-out ones, which the benchmark
designs): CAI against its ribosomal-protein genes (CDS whose /product names a ribosomal protein
L or S, from its own GenBank annotation; all genes when it has none, e.g. FASTA input, said in the
result), CSI and CFD against all its genes, %MinMax with its synonymous codon frequencies, and the
DTW distance of the design's %MinMax profile to the profile of the host's natural gene of the same
protein when the host has one, else to a flat profile at the median %MinMax of its genes (the level a
typical host gene sits at), named in `minmax_reference`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from codonlm.data.codons import CODON_OFFSET, CODONS, STOI, VOCAB_SIZE, genetic_code
from codonlm.errors import UserError
from codonlm.evaluate.designmetrics import cfd, minmax_dtw, minmax_profile, synonymous_frequencies
from codonlm.evaluate.sampling import KVStepper, torch_threads
from codonlm.evaluate.seqmetrics import CAIReference, gc, gc3

START_CODONS = ("ATG", "GTG", "TTG")
"""Start codons a design may use (those of the host's table among them)."""

PROTEIN_LETTERS = set("ACDEFGHIKLMNPQRSTVWY")
_RIBOSOMAL = re.compile(r"\bribosomal (?:subunit )?protein [LS]\d", re.IGNORECASE)
_NOT_RIBOSOMAL = re.compile(r"ase\b|modif|maturation|factor|binding|associated", re.IGNORECASE)


def is_ribosomal_protein(product: str) -> bool:
    """A /product naming a ribosomal protein itself (not an enzyme that modifies one)."""
    return bool(_RIBOSOMAL.search(product)) and not _NOT_RIBOSOMAL.search(product)


# --------------------------------------------------------------------------- proteins


def clean_protein(name: str, text: str, source: str) -> str:
    """The protein of one record, upper case and without whitespace or a trailing '*'; else a one-line UserError."""
    seq = re.sub(r"\s+", "", text).upper()
    seq = seq[:-1] if seq.endswith("*") else seq
    where = f"{source} record '{name}'"
    if not seq:
        raise UserError(f"{where}: empty protein; give one amino-acid sequence per FASTA record")
    if len(seq) >= 10 and set(seq) <= set("ACGTUN"):
        raise UserError(f"{where}: looks like DNA, not a protein; give the amino-acid sequence (translate it first)")
    if "*" in seq:
        raise UserError(f"{where}: stop '*' at residue {seq.index('*') + 1} inside the protein; "
                        "only a trailing '*' is allowed")
    bad = [(i, ch) for i, ch in enumerate(seq) if ch not in PROTEIN_LETTERS]
    if bad:
        i, ch = bad[0]
        raise UserError(f"{where}: '{ch}' at residue {i + 1} is not one of the 20 standard amino acids "
                        "(X, B, Z, J, U, O have no codons to design); replace it")
    return seq


def read_protein_records(path: str | Path) -> list[tuple[str, str]]:
    """(id, raw sequence) records of a protein FASTA file; an empty file is a one-line UserError."""
    from codonlm.io import read_fasta

    records = read_fasta(path)
    if not records:
        raise UserError(f"{path}: no FASTA records; give proteins as '>id' lines followed by the sequence")
    return records


# --------------------------------------------------------------------------- hosts


@dataclass
class HostReference:
    """What a host contributes to a design: its genetic code, start codons and the metric references."""

    name: str
    table_id: int
    starts: list[str]  # start codons the host's training genes use, of START_CODONS and its table
    genes: list[np.ndarray]  # training genes' codon ids
    gene_names: list[str]
    cai: CAIReference  # ribosomal-protein reference
    csi: CAIReference  # all training genes
    cai_reference: str  # what the CAI reference is, in words
    frequencies: np.ndarray  # synonymous codon frequencies (%MinMax)
    minmax_median: float
    by_protein: dict[str, int] = field(default_factory=dict)  # protein -> a training gene index

    def natural_profile(self, protein: str, length: int) -> tuple[np.ndarray, str]:
        """%MinMax profile the design is compared with, and what it is (see the module docstring)."""
        g = self.by_protein.get(protein)
        if g is not None:
            return minmax_profile(self.genes[g], self.frequencies, self.table_id), f"natural gene {self.gene_names[g]}"
        return np.full(max(length, 0), self.minmax_median), "host median %MinMax"


def ribosomal_names(spec) -> set[str] | None:
    """'record|name' of the host's ribosomal-protein CDS from its GenBank annotation; None without GenBank."""
    from codonlm.data.genbank import cds_products

    files = [spec.gbff] if isinstance(spec.gbff, str) else list(spec.gbff or [])
    if not files:
        return None
    names: set[str] = set()
    for f in files:
        names |= {k for k, product in cds_products(f).items() if is_ribosomal_protein(product)}
    return names


def build_host(spec, genes: list[np.ndarray], gene_names: list[str]) -> HostReference:
    """A host's reference from its training genes (codon ids, stop included) and its dataset spec."""
    from codonlm.data.codons import translate

    table_id = spec.transl_table
    code = genetic_code(table_id)
    used = {CODONS[int(g[0]) - CODON_OFFSET] for g in genes if g.size}
    starts = [c for c in START_CODONS if code.is_start[STOI[c]] and c in used] or ["ATG"]
    ribo = ribosomal_names(spec)
    ribo_genes = [g for g, n in zip(genes, gene_names, strict=True) if ribo and n in ribo]
    if len(ribo_genes) >= 10:
        cai_ref, what = ribo_genes, f"{len(ribo_genes)} ribosomal-protein genes"
    else:
        cai_ref, what = genes, f"all {len(genes)} training genes (no ribosomal-protein annotation found)"
    freqs = synonymous_frequencies(genes, table_id)
    pick = np.random.default_rng(0).permutation(len(genes))[:300]
    profiles = [minmax_profile(genes[i], freqs, table_id) for i in pick]
    values = np.concatenate([p for p in profiles if p.size]) if any(p.size for p in profiles) else np.zeros(1)
    by_protein = {}
    for i, g in enumerate(genes):
        by_protein.setdefault(translate(g, table_id), i)
    return HostReference(
        name=spec.name, table_id=table_id, starts=starts, genes=genes, gene_names=gene_names,
        cai=CAIReference().fit(cai_ref, table_id), csi=CAIReference().fit(genes, table_id), cai_reference=what,
        frequencies=freqs, minmax_median=float(np.median(values)), by_protein=by_protein,
    )  # fmt: skip


def host_spec(cfg, dataset_names: list[str], host: str):
    """The dataset spec of host `host`; an unknown host is a one-line UserError listing the known ones."""
    specs = {d.name: d for d in cfg.data.datasets}
    if host not in dataset_names or host not in specs:
        raise UserError(f"unknown host '{host}'; this run knows: {', '.join(dataset_names)}")
    return specs[host]


def load_host(cfg, run_id: str, host: str, runs_dir: str | Path | None = None,
              processed_dir: str | Path | None = None) -> HostReference:
    """Host `host` of a run (one of its datasets), from the run's prepared training genes."""
    from codonlm.data.layout import run_split_path
    from codonlm.io import read_split_genes

    train = read_split_genes(run_split_path(cfg, run_id, "train", runs_dir=runs_dir, processed_dir=processed_dir))
    spec = host_spec(cfg, train.dataset_names, host)
    idx = train.of_dataset(train.dataset_names.index(host))
    return build_host(spec, [train.codons(g) for g in idx], [train.names[g] for g in idx])


# --------------------------------------------------------------------------- synonym masks


def synonym_masks(protein: str, table_id: int, starts: list[str]) -> np.ndarray:
    """[len(protein) + 1, VOCAB] allowed tokens per step: each residue's codons, then the stop codons.

    A protein starting with M starts with one of `starts`; any other first residue takes its own
    codons (a fragment)."""
    code = genetic_code(table_id)
    by_letter = np.zeros((256, VOCAB_SIZE), dtype=bool)
    sense = np.arange(CODON_OFFSET, VOCAB_SIZE)
    sense = sense[~code.is_stop[sense]]
    by_letter[code.aa[sense], sense] = True
    masks = by_letter[np.frombuffer(protein.encode("ascii"), dtype=np.uint8)]
    if protein.startswith("M"):
        masks[0] = False
        masks[0, [STOI[c] for c in starts]] = True
    return np.concatenate([masks, code.is_stop[None, :]], axis=0)


def check_translation(ids: np.ndarray, protein: str, table_id: int) -> None:
    """Raise if the codon ids do not encode exactly `protein` then a stop (a bug, never a user error)."""
    code = genetic_code(table_id)
    got = code.translate(ids.astype(np.uint8), initiator=protein.startswith("M"))
    if got != protein + "*":
        at = next((i for i, (a, b) in enumerate(zip(got, protein + "*", strict=False)) if a != b), len(got))
        raise RuntimeError(f"design does not translate to its protein (residue {at + 1}: {got[at:at + 1]!r}); a bug")


# --------------------------------------------------------------------------- decoding


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the 68 fixed tokens: a host-conditioned model's host tokens share the softmax (as
    when it is scored) but are never designed."""
    return torch.log_softmax(logits.float().cpu(), dim=-1)[..., :VOCAB_SIZE]


@torch.no_grad()
@torch_threads(1)
def decode_batch(model, prompt: list[int], masks: list[np.ndarray], temperature: float | None = None,
                 seed: int = 0, device: str | torch.device = "cpu") -> list[tuple[np.ndarray, float]]:
    """Greedy (temperature None) or sampled codons for each row's masks, all rows in one batch.

    Returns (codon ids, summed model log-likelihood of them) per row. Rows shorter than the longest
    run on with any codon, discarded."""
    steps = max(m.shape[0] for m in masks)
    allowed = np.zeros((len(masks), steps, VOCAB_SIZE), dtype=bool)
    allowed[:, :, CODON_OFFSET:] = True
    for r, m in enumerate(masks):
        allowed[r, : m.shape[0]] = m
    allowed_t = torch.from_numpy(allowed)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    stepper = KVStepper(model, [prompt] * len(masks), torch.device(device), slide=True)
    picks_all = torch.zeros(len(masks), steps, dtype=torch.long)
    loglik = torch.zeros(len(masks), steps)
    logits = stepper.logits
    for t in range(steps):
        logp = _log_probs(logits)
        masked = logp.masked_fill(~allowed_t[:, t], float("-inf"))
        if temperature is None:
            picks = masked.argmax(-1)
        else:
            picks = torch.multinomial(torch.softmax(masked / max(temperature, 1e-6), -1), 1, generator=gen)[:, 0]
        picks_all[:, t] = picks
        loglik[:, t] = logp.gather(1, picks[:, None])[:, 0]
        if t + 1 < steps:
            logits = stepper.advance(picks)
    return [(picks_all[r, : m.shape[0]].numpy().astype(np.uint8), float(loglik[r, : m.shape[0]].sum()))
            for r, m in enumerate(masks)]


@torch.no_grad()
@torch_threads(1)
def decode_beam(model, prompt: list[int], mask: np.ndarray, beam: int,
                device: str | torch.device = "cpu") -> tuple[np.ndarray, float]:
    """Beam search over synonymous codons: the `beam` best partial genes by summed model log-likelihood."""
    allowed = torch.from_numpy(mask)
    stepper = KVStepper(model, [prompt], torch.device(device), slide=True)
    scores = torch.zeros(1)
    paths = torch.zeros(1, 0, dtype=torch.long)
    logits = stepper.logits
    for t in range(mask.shape[0]):
        logp = _log_probs(logits).masked_fill(~allowed[t], float("-inf"))
        total = (scores[:, None] + logp).flatten()
        k = min(beam, int(torch.isfinite(total).sum()))
        best = torch.topk(total, k).indices
        rows, toks = best // VOCAB_SIZE, best % VOCAB_SIZE
        scores, paths = total[best], torch.cat([paths[rows], toks[:, None]], dim=1)
        if t + 1 < mask.shape[0]:
            stepper.select(rows.tolist())
            logits = stepper.advance(toks)
    return paths[0].numpy().astype(np.uint8), float(scores[0])


# --------------------------------------------------------------------------- metrics


def design_metrics(ids: np.ndarray, protein: str, host: HostReference) -> dict:
    """Host-relative metrics of one design (codon ids, stop included); see the module docstring."""
    profile = minmax_profile(ids, host.frequencies, host.table_id)
    natural, what = host.natural_profile(protein, profile.size)
    return {
        "cai": host.cai.cai(ids),
        "csi": host.csi.cai(ids),
        "gc": gc(ids),
        "gc3": gc3(ids),
        "cfd": cfd(ids, host.csi),
        "minmax_mean": float(profile.mean()) if profile.size else float("nan"),
        "minmax_dtw": minmax_dtw(profile, natural),
        "minmax_reference": what,
    }


# --------------------------------------------------------------------------- designing proteins

DESIGN_COLUMNS = [
    "id", "host", "design", "protein_length", "log_likelihood_per_codon", "cai", "csi", "gc", "gc3", "cfd",
    "minmax_mean", "minmax_dtw", "minmax_reference", "constraints", "unsatisfied", "changed_codons", "seconds",
    "dna",
]  # fmt: skip


@dataclass
class DesignSettings:
    """How to decode (greedy: beam 1 and no samples) and what to enforce."""

    beam: int = 1
    samples: int = 0
    temperature: float = 1.0
    seed: int = 0
    start: str | None = None  # pin the start codon (ATG/GTG/TTG); None: the model picks among the host's
    constraints: object = None  # constraints.Constraints, or None

    def check(self, host: HostReference) -> None:
        if self.beam < 1 or self.samples < 0 or not self.temperature > 0:
            raise UserError("--beam must be >= 1, --samples >= 0 and --temperature > 0")
        if self.beam > 1 and self.samples:
            raise UserError("--beam and --samples exclude each other: beam search is deterministic")
        if self.start is not None and self.start.upper() not in START_CODONS:
            raise UserError(f"--start {self.start}: give one of {', '.join(START_CODONS)}")
        code = genetic_code(host.table_id)
        if self.start is not None and not code.is_start[STOI[self.start.upper()]]:
            raise UserError(f"--start {self.start}: not a start codon of genetic code {host.table_id} (host {host.name})")


def score_design(model, prompt: list[int], ids: np.ndarray, device="cpu") -> float:
    """Summed model log-likelihood of given codon ids, through the same cache path as decoding."""
    masks = np.zeros((ids.size, VOCAB_SIZE), dtype=bool)
    masks[np.arange(ids.size), ids] = True
    ((_, loglik),) = decode_batch(model, prompt, [masks], device=device)
    return loglik


def design_one(model, prompt: list[int], name: str, protein: str, host: HostReference, s: DesignSettings,
               device="cpu") -> list[dict]:
    """The design(s) of one protein: greedy, beam or samples, each repaired, checked and measured."""
    import time

    from codonlm.data.codons import decode
    from codonlm.evaluate.constraints import enforce

    t0 = time.perf_counter()
    starts = [s.start.upper()] if s.start else host.starts
    mask = synonym_masks(protein, host.table_id, starts)
    if s.samples:
        found = decode_batch(model, prompt, [mask] * s.samples, s.temperature, s.seed, device)
        labels = [f"sample{i + 1}" for i in range(s.samples)]
    elif s.beam > 1:
        found, labels = [decode_beam(model, prompt, mask, s.beam, device)], [f"beam{s.beam}"]
    else:
        found, labels = decode_batch(model, prompt, [mask], device=device), ["greedy"]
    rows = []
    for label, (ids, loglik) in zip(labels, found, strict=True):
        check_translation(ids, protein, host.table_id)
        unsatisfied, changed = [], 0
        if s.constraints:
            dna, unsatisfied = enforce(decode(ids), s.constraints, host.table_id)
            fixed = np.array([STOI[dna[i : i + 3]] for i in range(0, len(dna), 3)], dtype=np.uint8)
            check_translation(fixed, protein, host.table_id)
            changed = int((fixed != ids).sum())
            if changed:
                ids, loglik = fixed, score_design(model, prompt, fixed, device)
        rows.append({
            "id": name, "host": host.name, "design": label, "protein_length": len(protein),
            "log_likelihood_per_codon": loglik / ids.size, **design_metrics(ids, protein, host),
            "constraints": "; ".join(s.constraints.labels()) if s.constraints else "",
            "unsatisfied": "; ".join(unsatisfied), "changed_codons": changed, "dna": decode(ids),
        })  # fmt: skip
    for r in rows:
        r["seconds"] = round((time.perf_counter() - t0) / len(rows), 3)
    return rows


def design_records(model, prompt: list[int], records: list[tuple[str, str]], host: HostReference,
                   s: DesignSettings, out_dir: Path | None = None, source: str = "input", device="cpu"):
    """Design every (id, protein) record in order; with out_dir, designs.csv and designs.fasta are rewritten
    (atomically) after each protein, so a bad record later in the file keeps the earlier ones' designs.

    Returns the table (pandas). A record that is not a protein raises its one-line UserError when reached."""
    import pandas as pd

    from codonlm.io import write_csv, write_fasta
    from codonlm.log import log

    s.check(host)
    rows: list[dict] = []
    for name, raw in records:
        protein = clean_protein(name, raw, source)
        new = design_one(model, prompt, name, protein, host, s, device)
        rows += new
        for r in new:
            if r["unsatisfied"]:
                log(f"[design] {name} ({r['design']}): constraints not satisfied: {r['unsatisfied']}")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            table = pd.DataFrame(rows)[DESIGN_COLUMNS]
            write_csv(table, out_dir / "designs.csv")
            write_fasta(out_dir / "designs.fasta", [(f"{r['id']}|{r['design']}", r["dna"]) for r in rows],
                        [f"host={host.name} cai={r['cai']:.3f}" for r in rows])
    return pd.DataFrame(rows, columns=DESIGN_COLUMNS)
