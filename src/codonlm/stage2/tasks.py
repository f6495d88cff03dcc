"""The ready tasks' labelled genes, built from a run: only genes the language model never trained on.

The LM saw the training split; a probe scored on genes it memorised would flatter its embeddings. Every
real gene here therefore comes from the run's held-out splits (val and test, `codonlm.io.read_split_genes`),
and the generated genes from prefix generation (`gen_prefix/samples.csv`), prompted with held-out genes.

Files written to `data_dir` (a folder of the run's stage-2 reports):

    heldout.csv   id, seq, genome, domain, gravy, isoelectric_point, hydropathy, protein_group, split: the val
                  and test genes
                  (all, or a seeded draw of at most `heldout_per_genome` per genome and split that keeps
                  every prompt gene)
                  - genome: the dataset the gene came from (7 genomes in the default corpus)
                  - domain: Bacteria or Archaea, read from the GenBank lineage (ORGANISM) of the genome
                  - hydropathy: Kyte-Doolittle GRAVY of the encoded protein in tertiles over these genes
                    (hydrophilic < q1 <= intermediate < q2 <= hydrophobic); the hydrophobic third holds most
                    membrane proteins. A property of the protein, not of codon choice.
                  - protein_group: the protein's group, which the ready configs split (and fold) by: identical
                    proteins, or when the run's data was split by cluster (data.split_by: cluster) the
                    MMseqs2 cluster of similar proteins (tasks.json group_columns says which), so identical
                    (paralogous copies) never sit on both sides of a train/test split
    heldout.npz   their embeddings, every layer (pooling from the config); each config reads its `layer`
    heldout_scores.csv  id, cai, mean_loglik: the regression tasks' zero-shot scores. CAI is against the
                  host's ribosomal-protein genes (/product "ribosomal protein" in the GenBank file) of the
                  training split, else all its training genes (tasks.json says which); mean_loglik is the
                  model's mean log-likelihood per token of the whole gene
    generated.csv id, seq, genome, domain, label=generated, prompt_gene: generated genes at one temperature
    generated.npz their embeddings
    real_vs_generated.csv  the real genes that served as prompts (label real) beside their generated genes;
                  `pair` (the prompt gene) keeps a real gene and its continuation on one side of the split
    real_train.csv  held-out genes of the split that gave no prompts (TRTR / TRTS training set)
    real_test.csv   genes of the prompt split that were not prompts (TRTR / TSTR test set: no gene here
                    shares a prompt with a generated gene)
    tasks.json    thresholds, domains, counts, sources
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from codonlm.data.codons import decode, translate
from codonlm.data.layout import run_split_path
from codonlm.data.records import read_table
from codonlm.errors import UserError
from codonlm.io import read_json, read_split_genes, sha256_file, write_csv, write_json
from codonlm.log import log
from codonlm.stage2.config import ClassifierConfig
from codonlm.stage2.embeddings import EmbeddingFile, extract_embeddings, load_embeddings
from codonlm.stage2.regression import group_proteins

STANDARD_AA = frozenset("ACDEFGHIKLMNPQRSTVWY")
# "50S ribosomal protein L2", "30S ribosomal subunit protein S7, initiates assembly", "LSU ribosomal protein
# L37AE", "Ribosomal LX protein"; not "ribosomal protein L11 methyltransferase" or "... S6 modification protein"
RIBOSOMAL_PRODUCT = re.compile(r"(?:\d+S |LSU |SSU )?ribosomal (?:subunit )?(?:protein )?[LS]\d*[A-Za-z]*\d*[a-z]*"
                               r"(?:/[LS]\d+[A-Za-z]*)*(?: protein)?(?: \([^)]*\))?(?:[,;] .*)?", re.IGNORECASE)
MIN_RIBOSOMAL = 10
HYDROPATHY_CLASSES = ("hydrophilic", "intermediate", "hydrophobic")


def protein_properties(protein: str) -> tuple[float, float]:
    """(Kyte-Doolittle GRAVY, isoelectric point) of a protein (Biopython's ProtParam), standard residues only."""
    from Bio.SeqUtils.ProtParam import ProteinAnalysis

    protein = "".join(a for a in protein if a in STANDARD_AA)
    if not protein:
        return float("nan"), float("nan")
    analysis = ProteinAnalysis(protein)
    return float(analysis.gravy()), float(analysis.isoelectric_point())


def gravy(protein: str) -> float:
    """Kyte-Doolittle grand average of hydropathy (Biopython), standard residues only."""
    return protein_properties(protein)[0]


def _gene_row(genes, g: int, genome: str, domain: str, table_id: int, split: str) -> dict:
    """One held-out gene's row; its protein, for the groups, in a column heldout.csv leaves out."""
    protein = translate(genes.codons(g), table_id)
    hydropathy, pi = protein_properties(protein)
    return {"id": genes.names[g], "seq": decode(genes.codons(g)), "genome": genome, "domain": domain,
            "gravy": hydropathy, "isoelectric_point": pi,
            "protein": protein, "split": split}


@cache
def genome_domain(path: str) -> str:
    """'Bacteria', 'Archaea', ... : the first word of the lineage in the first record's ORGANISM block
    (cached: every ready config of a `codonlm stage2` run asks for the same genomes)."""
    from codonlm.data.genbank import iter_records

    record = next(iter(iter_records(path)), None)
    organism = (record.source.organism or "") if record is not None and record.source else ""
    lines = organism.splitlines()
    first = lines[1].split(";")[0].strip().rstrip(".") if len(lines) > 1 else ""
    return first or "unknown"


@cache
def ribosomal_protein_tags(path: str) -> frozenset[str]:
    """locus_tags of the CDS of a GenBank file whose /product is a ribosomal protein (the CAI reference)."""
    from codonlm.data.genbank import iter_records

    tags = set()
    for record in iter_records(path):
        for feature in record.features:
            if feature.kind != "CDS":
                continue
            quals = {q.key: q.value for q in feature.qualifiers if q.key in ("product", "locus_tag")}
            product = " ".join((quals.get("product") or "").split())  # multi-line values in the file
            if quals.get("locus_tag") and RIBOSOMAL_PRODUCT.fullmatch(product):
                tags.add(quals["locus_tag"])
    return frozenset(tags)


def annotated_genbank_files(spec) -> list[str]:
    """The GenBank files of a dataset entry (None: not in the config), whose /product names its ribosomal
    proteins; a bare FASTA or GFF3 entry has none, and its genome's CAI falls back to all its training genes."""
    return spec.files if spec is not None and spec.kind == "gbff" else []


def cai_references(run_cfg, run_id: str, processed: Path) -> tuple[dict, dict]:
    """Per genome a CAIReference fitted on its ribosomal-protein genes of the training split (at least
    MIN_RIBOSOMAL of them), else on all its training genes; and which reference each genome got."""
    from codonlm.evaluate.seqmetrics import CAIReference

    specs = {d.name: d for d in run_cfg.data.datasets}
    genes = read_split_genes(run_split_path(run_cfg, run_id, "train", processed_dir=processed))
    refs, info = {}, {}
    for d, genome in enumerate(genes.dataset_names):
        members, spec = genes.of_dataset(d), specs.get(genome)
        tags: set[str] = set()
        for path in annotated_genbank_files(spec):
            try:
                tags |= ribosomal_protein_tags(path)
            except UserError as exc:
                log(f"[stage2] ribosomal proteins of {genome} unknown ({exc})")
        ribosomal = [g for g in members if genes.names[g].rsplit("|", 1)[-1] in tags]  # names: record|locus_tag
        chosen = ribosomal if len(ribosomal) >= MIN_RIBOSOMAL else members
        refs[genome] = CAIReference().fit([genes.codons(g) for g in chosen], spec.transl_table if spec else 11)
        info[genome] = {"reference": "ribosomal proteins" if chosen is ribosomal else "all training genes",
                        "n_genes": len(chosen)}
    return refs, info


def zero_shot_table(heldout: pd.DataFrame, embedded: EmbeddingFile, ckpt: Path, run_cfg, run_id: str,
                    processed: Path) -> tuple[pd.DataFrame, dict]:
    """heldout_scores.csv: id, cai (against the gene's own host), mean_loglik (the run's model: from the pass
    that gave the held-out genes' embeddings, no second pass)."""
    refs, info = cai_references(run_cfg, run_id, processed)
    cai = [refs[g].cai(s) if g in refs else float("nan") for g, s in zip(heldout["genome"], heldout["seq"], strict=True)]
    loglik = embedded.mean_loglik
    table = pd.DataFrame({"id": heldout["id"], "cai": np.round(cai, 5), "mean_loglik": np.round(loglik, 5)})
    return table, {"cai_reference": info, "checkpoint_sha256": sha256_file(ckpt)}


def run_context(cfg: ClassifierConfig):
    """The run's checkpoint path, its config, its run id and the prepared-data folder."""
    from codonlm.config import parse_config
    from codonlm.model.checkpoint import load_checkpoint
    from codonlm.model.load import checkpoint_path

    ckpt = checkpoint_path(cfg.run_id, cfg.checkpoints_dir, cfg.runs_dir)  # None: where the run's config says
    state = load_checkpoint(ckpt)
    run_cfg = parse_config(state["config"], source=str(ckpt))
    return ckpt, run_cfg, str(state.get("run_id") or cfg.run_id), Path(cfg.processed_dir or run_cfg.data.processed_dir)


def heldout_table(run_cfg, run_id: str, processed: Path, per_genome: int | None = None, keep: frozenset[str] = frozenset(),
                  seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Val and test genes with their genome, domain and hydropathy class: all of them, or a seeded draw of at
    most `per_genome` per genome and split that always holds the genes in `keep` (the generation prompts)."""
    specs = {d.name: d for d in run_cfg.data.datasets}
    domains: dict[str, str] = {}
    for name, spec in specs.items():
        try:
            # the config's word, else the GenBank lineage (FASTA and GFF3 name none)
            domains[name] = spec.domain or (genome_domain(spec.files[0]) if spec.kind == "gbff" else "unknown")
        except UserError as exc:
            log(f"[stage2] domain of {name} unknown ({exc})")
            domains[name] = "unknown"
    rng = np.random.default_rng(seed)
    rows, total = [], 0
    for split in ("val", "test"):
        genes = read_split_genes(run_split_path(run_cfg, run_id, split, processed_dir=processed))
        total += len(genes.genes)
        for d, genome in enumerate(genes.dataset_names):
            members = genes.of_dataset(d)
            if per_genome is not None and len(members) > per_genome:
                kept = [g for g in members if genes.names[g] in keep]
                rest = [g for g in members if genes.names[g] not in keep]
                extra = rng.choice(rest, size=max(0, per_genome - len(kept)), replace=False).tolist()
                members = sorted(kept + extra)
            table = specs[genome].transl_table if genome in specs else 11
            rows += [_gene_row(genes, g, genome, domains.get(genome, "unknown"), table, split) for g in members]
    table = pd.DataFrame(rows)
    if table["id"].duplicated().any():
        table["id"] = table["id"] + "#" + table.groupby("id").cumcount().astype(str)
    q1, q2 = np.nanquantile(table["gravy"], [1 / 3, 2 / 3])
    table["hydropathy"] = np.where(table["gravy"] < q1, HYDROPATHY_CLASSES[0],
                                   np.where(table["gravy"] < q2, HYDROPATHY_CLASSES[1], HYDROPATHY_CLASSES[2]))
    table[["gravy", "isoelectric_point"]] = table[["gravy", "isoelectric_point"]].round(4)
    if per_genome is not None:
        log(f"[stage2] held-out genes: seeded draw (seed {seed}) of at most {per_genome} per genome and split, "
            f"prompt genes kept: {len(table)} of {total}")
    groups, grouping = group_proteins(table["protein"].tolist(), run_cfg.data)
    table["protein_group"] = groups
    info = {"hydropathy_thresholds": [round(float(q1), 4), round(float(q2), 4)], "domains": domains,
            "heldout_per_genome": per_genome, "heldout_total": total, "group_columns": {"protein_group": grouping}}
    columns = ["id", "seq", "genome", "domain", "gravy", "isoelectric_point", "hydropathy", "protein_group", "split"]
    return table[columns], info


def prompt_genes(cfg: ClassifierConfig) -> frozenset[str]:
    """Held-out genes that prompted prefix generation (empty when there are no samples yet)."""
    path = Path(cfg.samples)
    if not path.is_file():
        return frozenset()
    samples = read_table(path, "generated samples")
    return frozenset(samples["gene"]) if "gene" in samples.columns else frozenset()


def generated_tables(cfg: ClassifierConfig, heldout: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], dict]:
    """generated.csv, real_vs_generated.csv, real_train.csv, real_test.csv from gen_prefix samples."""
    path = Path(cfg.samples)
    if not path.is_file():
        raise UserError(f"generated genes not found: {path}; run 'codonlm generate-prefix {cfg.run_id}' first")
    samples = read_table(path, "generated samples")
    missing = [c for c in ("genome", "gene", "temperature", "dna") if c not in samples.columns]
    if missing:
        raise UserError(f"{path}: no '{missing[0]}' column; expected prefix-generation samples.csv")
    temps = pd.to_numeric(samples["temperature"], errors="coerce")
    gen = samples[np.isclose(temps, cfg.temperature)]
    if gen.empty:
        have = sorted(set(temps.dropna()))
        raise UserError(f"{path}: no genes at temperature {cfg.temperature} (have {have}); set 'temperature'")
    settings = (read_json(path.parent / "summary.json", {}) or {}).get("settings", {})
    prompt_split = settings.get("split", "test")
    domain = dict(zip(heldout["genome"], heldout["domain"], strict=False))
    generated = pd.DataFrame({
        "id": [f"generated_T{cfg.temperature:g}|{g}" for g in gen["gene"]], "seq": gen["dna"].tolist(),
        "genome": gen["genome"].tolist(), "domain": [domain.get(g, "unknown") for g in gen["genome"]],
        "label": "generated", "prompt_gene": gen["gene"].tolist(),
    })  # fmt: skip
    prompts = set(gen["gene"])
    real_prompts = heldout[heldout["id"].isin(prompts)].assign(label="real", pair=lambda t: t["id"])
    generated["pair"] = generated["prompt_gene"]
    if len(real_prompts) < len(prompts):
        raise UserError(f"{path}: {len(prompts) - len(real_prompts)} prompt genes are not held-out genes of this "
                        "run's prepared data; re-run 'codonlm generate-prefix' for this run")
    cols = ["id", "seq", "genome", "domain", "label", "pair"]
    tables = {
        "generated": generated,
        "real_vs_generated": pd.concat([real_prompts[cols], generated[cols]], ignore_index=True),
        "real_train": heldout[heldout["split"] != prompt_split][["id", "seq", "genome", "domain"]],
        "real_test": heldout[(heldout["split"] == prompt_split) & ~heldout["id"].isin(prompts)][
            ["id", "seq", "genome", "domain"]],
    }  # fmt: skip
    return tables, {"samples": str(path), "temperature": cfg.temperature, "prompt_split": prompt_split,
                    "n_generated": len(generated)}


def ensure_embeddings(cfg: ClassifierConfig, table: pd.DataFrame, out: Path, ckpt: Path,
                      show_progress: bool, layer: str | None = None) -> EmbeddingFile:
    """Embeddings of the table's genes at `out` (the config's layer, or `layer`), reused when ids, run,
    checkpoint, layer and pooling match."""
    sha = sha256_file(ckpt)
    layer = layer or cfg.layer
    if out.is_file():
        old = load_embeddings(out)
        if (old.ids == table["id"].tolist() and old.meta.get("checkpoint_sha256") == sha
                and (old.layer, old.pool) == (layer, cfg.pool) and old.mean_loglik is not None):
            log(f"[stage2] reusing {out} ({len(old.ids)} genes, layer {old.layer}, pool {old.pool})")
            return old
    genomes = table["genome"].tolist() if "genome" in table.columns else None
    return extract_embeddings(str(ckpt), out, table["id"].tolist(), table["seq"].tolist(), layer=layer,
                              pool=cfg.pool, checkpoints_dir=cfg.checkpoints_dir, show_progress=show_progress,
                              host=genomes, host_optional=True)


def _ensure_scores(cfg, heldout: pd.DataFrame, embedded: EmbeddingFile, old: dict | None, context: tuple) -> dict:
    """heldout_scores.csv in data_dir, reused when its ids and checkpoint match."""
    ckpt, run_cfg, run_id, processed = context
    path = Path(cfg.data_dir) / "heldout_scores.csv"
    if old and path.is_file() and old.get("checkpoint_sha256") == sha256_file(ckpt):
        if read_table(path, "zero-shot scores")["id"].tolist() == heldout["id"].tolist():
            return old
    table, info = zero_shot_table(heldout, embedded, ckpt, run_cfg, run_id, processed)
    write_csv(table, path)
    return info


def build_run_data(cfg: ClassifierConfig, show_progress: bool = True) -> dict:
    """Write the ready tasks' CSVs and embeddings into cfg.data_dir (paths resolved); returns tasks.json."""
    folder = Path(cfg.data_dir)
    ckpt, run_cfg, run_id, processed = run_context(cfg)
    heldout, info = heldout_table(run_cfg, run_id, processed, cfg.heldout_per_genome, prompt_genes(cfg), cfg.seed)
    tables = {"heldout": heldout}
    if "generated" in cfg.build_from_run:
        generated, gen_info = generated_tables(cfg, heldout)
        tables.update(generated)
        info.update(gen_info)
    for name, table in tables.items():
        write_csv(table, folder / f"{name}.csv")
    # every layer in one forward pass: each ready config reads its layer from the same file
    embeddings = {name: ensure_embeddings(cfg, tables[name], folder / f"{name}.npz", ckpt, show_progress, "all")
                  for name in ("heldout", "generated") if name in tables}
    old = read_json(folder / "tasks.json", {}) or {}
    if cfg.task == "regression":
        info["scores"] = _ensure_scores(cfg, heldout, embeddings["heldout"], old.get("scores"),
                                        (ckpt, run_cfg, run_id, processed))
    info.update({
        "run_id": cfg.run_id, "checkpoint": str(ckpt), "processed_dir": str(processed),
        "counts": {**old.get("counts", {}), **{name: len(t) for name, t in tables.items()}},
        "embedding": {name: {"layer": e.layer, "pool": e.pool, **e.meta} for name, e in embeddings.items()},
    })  # fmt: skip
    write_json(folder / "tasks.json", {**old, **info})
    log(f"[stage2] task data for {cfg.run_id} in {folder}: " + ", ".join(f"{k} {len(t)}" for k, t in tables.items()))
    return info
