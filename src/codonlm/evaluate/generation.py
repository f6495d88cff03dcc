"""Prefix generation evaluation: does the model finish real genes the way the genome would?

The model gets the first `prompt_codons` codons of held-out genes (per genome) and writes the rest;
every generated gene is then judged like a real CDS (`codonlm.evaluate.seqmetrics`) against its own
genome's TRAINING genes, beside the same numbers for the real held-out genes (temperature "real"):

- reading frame: ends with a stop codon, in-frame internal stops, valid ORF (start codon, stop,
  no internal stop, at least the dataset's `min_len` sense codons, as prepare requires of real
  genes), length relative to the real gene, how it ended (eos / stop / cap);
- composition and codon choice: GC, GC3, CAI against the genome's training genes, ENC
  (Sun et al. 2013), codon-usage KL and JS (sense codons) of the pooled genes against the genome's
  training genes, with the real-vs-real split-half JS floor for the same number of genes beside it;
  amino-acid composition JS (and its floor);
  The floor compares n real genes with n others, so it holds the sampling noise of both sides:
  about twice what n genes against a whole genome show. The "real" row (the n held-out genes
  against the genome) is the matched reference; a generated set between the two is as close to
  the genome's codon usage as n real genes are.
- memorisation: identity of each protein to the nearest training protein of its genome (global
  alignment of the few k-mer-nearest candidates).

Defaults (why): 10 prompt codons (enough to fix the frame and start, little of the gene);
50 held-out genes per genome (seeded draw); temperatures 0.7, 1.0, 1.3 (below, at and above the
model's own distribution, to show the validity-versus-diversity trade-off); no top-k / top-p (plain
sampling is what the temperature sweep is about); a length cap of 2x the real gene, at most 1500
codons (a model that never ends cannot run away). Generation ends at `<EOS_CDS>` by default, not
at the first stop codon, so in-frame stops the model writes and then runs past are counted
(`end_at_stop=True` ends at the first stop instead, as `codonlm query` does).

Generation is `codonlm.evaluate.sampling.generate`, which keeps a key/value cache (`TinyGPT.extend`):
linear rather than quadratic in gene length, which is what lets the default sweep (7 genomes x 50
genes x 3 temperatures) run in minutes on a laptop CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from codonlm.data.codons import (
    CODON_OFFSET,
    EOS,
    HOST_OFFSET,
    decode,
    gene_start,
    genetic_code,
    host_token,
    translate,
)
from codonlm.errors import UserError
from codonlm.evaluate.sampling import generate
from codonlm.evaluate.seqmetrics import (
    CAIReference,
    ProteinIndex,
    aa_composition,
    codon_usage,
    enc,
    gc,
    gc3,
    js_divergence,
    kl_divergence,
    orf_report,
    split_half_floor,
)
from codonlm.io import SplitGenes, atomic_path, read_split_genes, save_figure, write_json
from codonlm.log import log, progress

DEFAULT_TEMPERATURES = (0.7, 1.0, 1.3)
FLOOR_REPEATS = 5
"""Random split-halves averaged per floor value."""

SAMPLE_COLUMNS = [
    "genome", "gene", "sample", "temperature", "prompt_codons", "gen_codons", "real_codons",
    "length_ratio", "ended_by", "ends_with_stop", "internal_stops", "valid_orf", "gc", "gc3", "cai",
    "enc", "nearest_identity", "nearest_gene", "dna",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "genome", "temperature", "n", "gen_codons_mean", "length_ratio_mean", "length_ratio_median",
    "frac_ends_with_stop", "frac_internal_stop", "internal_stops_mean", "frac_valid_orf", "frac_hit_cap",
    "gc_mean", "gc3_mean", "cai_mean", "enc_mean", "nearest_identity_mean", "nearest_identity_max",
    "frac_identity_ge_0.9", "codon_kl", "codon_js", "codon_js_floor", "aa_js", "aa_js_floor",
]  # fmt: skip


# --------------------------------------------------------------------------- references per genome


@dataclass
class GenomeReference:
    """What a genome's generated genes are judged against: its training genes."""

    name: str
    table_id: int
    min_len: int
    genes: list[np.ndarray]  # codon ids of the training genes
    gene_names: list[str]
    usage: np.ndarray  # 64 codon counts
    aa: np.ndarray  # 20 amino-acid counts
    cai: CAIReference
    proteins: ProteinIndex


def _codons(tokens: np.ndarray) -> np.ndarray:
    return tokens[(tokens >= CODON_OFFSET) & (tokens < HOST_OFFSET)]


def build_reference(
    name: str, genes: list[np.ndarray], names: list[str], table_id: int, min_len: int
) -> GenomeReference:
    return GenomeReference(
        name=name, table_id=table_id, min_len=min_len, genes=genes, gene_names=names,
        usage=codon_usage(genes), aa=aa_composition(genes, table_id),
        cai=CAIReference().fit(genes, table_id),
        proteins=ProteinIndex([translate(g, table_id) for g in genes]),
    )  # fmt: skip


# --------------------------------------------------------------------------- per-gene metrics


def gene_metrics(ids: np.ndarray, ref: GenomeReference, n_align: int) -> dict:
    """Frame, composition, adaptation and nearest-training-protein identity of one gene (codon ids)."""
    orf = orf_report(ids, ref.table_id)
    n = int(orf["n_codons"])
    ident, nearest = ref.proteins.nearest(translate(ids, ref.table_id), n_align=n_align)
    return {
        "gen_codons": n,
        "ends_with_stop": bool(orf["ends_with_stop"]),
        "internal_stops": int(orf["internal_stops"]),
        "valid_orf": bool(orf["valid_orf"]) and n - 1 >= ref.min_len,
        "gc": gc(ids),
        "gc3": gc3(ids),
        "cai": ref.cai.cai(ids),
        "enc": enc(ids, ref.table_id),
        "nearest_identity": float(ident),
        "nearest_gene": ref.gene_names[nearest] if nearest >= 0 else "",
    }


def _floor(ref: GenomeReference, n: int, kind: str, rng: np.random.Generator) -> float:
    """Split-half JS of two sets of n real training genes (mean of FLOOR_REPEATS draws)."""
    pool = ref.genes
    size = min(len(pool), 2 * n)
    if size < 2:
        return float("nan")
    vals = []
    for _ in range(FLOOR_REPEATS):
        pick = rng.choice(len(pool), size=size, replace=False)
        vals.append(split_half_floor([pool[i] for i in pick], rng, kind=kind, table_id=ref.table_id))
    return float(np.mean(vals))


def _group_summary(rows, genes: list[np.ndarray], ref: GenomeReference | None) -> dict:
    """Means and fractions of per-gene metrics; pooled divergences when a genome reference is given."""
    import pandas as pd

    df = pd.DataFrame(rows)
    ident = df["nearest_identity"]
    out = {
        "n": len(df),
        "gen_codons_mean": df["gen_codons"].mean(),
        "length_ratio_mean": df["length_ratio"].mean(),
        "length_ratio_median": df["length_ratio"].median(),
        "frac_ends_with_stop": df["ends_with_stop"].mean(),
        "frac_internal_stop": (df["internal_stops"] > 0).mean(),
        "internal_stops_mean": df["internal_stops"].mean(),
        "frac_valid_orf": df["valid_orf"].mean(),
        "frac_hit_cap": (df["ended_by"] == "cap").mean(),
        "gc_mean": df["gc"].mean(),
        "gc3_mean": df["gc3"].mean(),
        "cai_mean": df["cai"].mean(),
        "enc_mean": df["enc"].mean(),
        "nearest_identity_mean": ident.mean(),
        "nearest_identity_max": ident.max(),
        "frac_identity_ge_0.9": (ident >= 0.9).mean(),
    }
    if ref is not None:
        usage = codon_usage(genes)
        aa = aa_composition(genes, ref.table_id)
        out["codon_kl"] = kl_divergence(usage, ref.usage, table_id=ref.table_id) if usage.sum() else math.nan
        out["codon_js"] = js_divergence(usage, ref.usage, table_id=ref.table_id) if usage.sum() else math.nan
        out["aa_js"] = js_divergence(aa, ref.aa) if aa.sum() else math.nan
    return {k: (float(v) if k != "n" else int(v)) for k, v in out.items()}


# --------------------------------------------------------------------------- output helpers


def tradeoff_figure(summary, temperatures: Sequence[float]):
    """Temperature trade-off: validity, cap hits and length against codon-usage fidelity and memorisation
    (the cap-hit panel shows why validity falls: a gene cut by the length cap is seldom a valid ORF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("frac_valid_orf", "valid ORF fraction"),
        ("frac_hit_cap", "share stopped by the length cap"),
        ("length_ratio_median", "median length / real length"),
        ("codon_js", "codon-usage JS vs genome (bits)"),
        ("nearest_identity_mean", "mean identity to nearest training protein"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.5))
    temps = [float(t) for t in temperatures]
    for ax, (col, label) in zip(axes.flat, panels, strict=False):
        for genome, sub in summary[summary["temperature"] != "real"].groupby("genome", sort=False):
            is_all = genome == "all"
            ys = [sub.loc[sub["temperature"] == t, col].iloc[0] for t in temps]
            ax.plot(temps, ys, marker="o", lw=2.5 if is_all else 0.8, alpha=1.0 if is_all else 0.5,
                    color="black" if is_all else None, label=genome)
        real = summary[(summary["genome"] == "all") & (summary["temperature"] == "real")]
        if len(real) and not np.isnan(real[col].iloc[0]):
            ax.axhline(real[col].iloc[0], color="tab:green", ls="--", label="real held-out genes")
        if col == "codon_js":
            floor = summary[(summary["genome"] == "all") & (summary["temperature"] != "real")]
            ax.plot(temps, [floor.loc[floor["temperature"] == t, "codon_js_floor"].iloc[0] for t in temps],
                    color="tab:red", ls=":", label="real-vs-real split-half floor")
        ax.set_xlabel("sampling temperature")
        ax.set_ylabel(label)
        ax.set_xticks(temps)
    legend_ax = axes.flat[len(panels)]
    legend_ax.axis("off")
    handles, labels = axes.flat[[c for c, _ in panels].index("codon_js")].get_legend_handles_labels()
    legend_ax.legend(handles, labels, loc="center", fontsize=9, frameon=False, title="genome (thick: all genomes)")
    fig.suptitle("Prefix generation: temperature trade-off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- settings


class PrefixSettings(BaseModel):
    """What a prefix-generation evaluation does (defaults and why: see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    split: Literal["val", "test"] = "test"
    prompt_codons: int = Field(10, ge=1)
    per_genome: int = Field(50, ge=1)
    temperatures: list[float] = Field(default_factory=lambda: list(DEFAULT_TEMPERATURES), min_length=1)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int = 0
    max_codons: int = Field(1500, ge=2)
    length_factor: float = Field(2.0, gt=0.0)
    end_at_stop: bool = False
    batch_size: int = Field(64, ge=1)
    n_align: int = Field(3, ge=1)

    @field_validator("temperatures")
    @classmethod
    def _positive_distinct(cls, temps: list[float]) -> list[float]:
        if any(not (t > 0 and math.isfinite(t)) for t in temps):
            raise ValueError(f"temperatures must be positive numbers (got {temps})")
        if len(set(temps)) != len(temps):
            raise ValueError(f"temperatures repeat (got {temps})")
        return [float(t) for t in temps]

    @model_validator(mode="after")
    def _cap_above_prompt(self) -> PrefixSettings:
        if self.max_codons <= self.prompt_codons:
            raise ValueError(f"max codons ({self.max_codons}) must exceed prompt codons ({self.prompt_codons})")
        return self

    @classmethod
    def parse(cls, **values) -> PrefixSettings:
        from codonlm.config import validate

        return validate(cls, values, "generate-prefix")


@dataclass
class Prompt:
    genome: str
    gene: str
    sample: int
    real: np.ndarray  # codon ids of the real held-out gene


# --------------------------------------------------------------------------- the stages


def _load_run(run_id: str, checkpoints_dir: str | None, processed_dir: str | None, s: PrefixSettings, device: str,
              runs_dir: str | None = None):
    """The model and the run's train / held-out genes."""
    from codonlm.data.layout import run_split_path
    from codonlm.model.load import checkpoint_path, load_model

    ckpt = checkpoint_path(run_id, checkpoints_dir, runs_dir)
    model, cfg, state = load_model(str(ckpt), device=device)
    if s.prompt_codons + 2 > cfg.model.block_size:
        raise UserError(f"prompt codons ({s.prompt_codons}) must be below block_size - 1 ({cfg.model.block_size - 1})")
    processed = Path(processed_dir or cfg.data.processed_dir)
    run_name = str(state.get("run_id") or Path(run_id).stem)
    train = read_split_genes(run_split_path(cfg, run_name, "train", processed_dir=processed))
    held = read_split_genes(run_split_path(cfg, run_name, s.split, processed_dir=processed))
    if train.dataset_names != held.dataset_names:
        raise UserError(f"{processed}: train and {s.split} list different datasets; re-run 'codonlm prepare --force'")
    return model, cfg, run_name, ckpt, processed, train, held


def _pick_prompts(cfg, train: SplitGenes, held: SplitGenes, s: PrefixSettings, rng: np.random.Generator):
    """Per genome: its reference (training genes) and a seeded draw of held-out genes to prompt with."""
    specs = {d.name: d for d in cfg.data.datasets}
    refs: dict[str, GenomeReference] = {}
    prompts: list[Prompt] = []
    for d, name in enumerate(held.dataset_names):
        spec = specs.get(name)
        table_id, min_len = (spec.transl_table, spec.min_len) if spec else (11, 1)
        train_idx = train.of_dataset(d)
        eligible = [g for g in held.of_dataset(d) if len(held.codons(g)) > s.prompt_codons + 1]
        if len(train_idx) < 2 or not eligible:
            log(f"[gen-prefix] {name}: skipped ({len(train_idx)} training genes, {len(eligible)} held-out "
                f"genes longer than {s.prompt_codons + 1} codons)")
            continue
        refs[name] = build_reference(name, [train.codons(g) for g in train_idx], [train.names[g] for g in train_idx],
                                     table_id, min_len)
        pick = sorted(rng.choice(eligible, size=min(s.per_genome, len(eligible)), replace=False))
        prompts += [Prompt(name, held.names[g], i, held.codons(g)) for i, g in enumerate(pick)]
    return refs, prompts


def _generate_all(model, prompts: list[Prompt], refs: dict[str, GenomeReference], s: PrefixSettings,
                  device: str, show_progress: bool) -> dict[tuple[float, int], np.ndarray]:
    """Generated tokens per (temperature, prompt): similar caps batched, one seed per (temperature, batch)."""
    caps = [max(s.prompt_codons + 1, min(s.max_codons, math.ceil(s.length_factor * len(p.real)))) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (caps[i], i))
    batches = [order[i : i + s.batch_size] for i in range(0, len(order), s.batch_size)]
    stop_mask = {n: genetic_code(r.table_id).is_stop for n, r in refs.items()}
    starts = {n: gene_start(host_token(model.cfg, n) if model.cfg.hosts else None) for n in refs}
    generated: dict[tuple[float, int], np.ndarray] = {}
    bar = progress(total=len(s.temperatures) * len(prompts), desc="generate", unit="gene", disable=not show_progress)
    for ti, temp in enumerate(s.temperatures):
        for bi, batch in enumerate(batches):
            # rows of one batch share a stop mask only when ending at stops; group by genome then
            groups = [batch] if not s.end_at_stop else [[i for i in batch if prompts[i].genome == n] for n in refs]
            for gi, rows in enumerate(g for g in groups if g):
                seed_i = int(np.random.SeedSequence([s.seed, ti, bi, gi]).generate_state(1)[0])
                toks = generate(
                    model, [np.concatenate([starts[prompts[i].genome], prompts[i].real[: s.prompt_codons]]).astype(np.uint8)
                            for i in rows],
                    [caps[i] - s.prompt_codons for i in rows], temp, s.top_k, s.top_p, seed_i,
                    stop_mask[prompts[rows[0]].genome] if s.end_at_stop else None, device,
                )  # fmt: skip
                for i, t in zip(rows, toks, strict=True):
                    generated[(temp, i)] = t
                bar.update(len(rows))
    bar.close()
    return generated


def _ended_by(toks: np.ndarray, stop_mask: np.ndarray, end_at_stop: bool) -> str:
    if toks[-1] == EOS:
        return "eos"
    return "stop" if end_at_stop and stop_mask[toks[-1]] else "cap"


def _score(prompts: list[Prompt], refs: dict[str, GenomeReference], generated, s: PrefixSettings):
    """One row of gene metrics per (temperature, prompt), "real" rows for the held-out genes themselves."""
    import pandas as pd

    stop_mask = {n: genetic_code(r.table_id).is_stop for n, r in refs.items()}
    rows: list[dict] = []
    pooled: dict[tuple[str, str], list[np.ndarray]] = {}
    for temp in ["real", *s.temperatures]:
        for i, p in enumerate(prompts):
            if temp == "real":
                ids, ended = p.real, "real"
            else:
                toks = generated[(temp, i)]
                ids, ended = _codons(toks), _ended_by(toks, stop_mask[p.genome], s.end_at_stop)
            m = gene_metrics(ids, refs[p.genome], s.n_align)
            rows.append({
                "genome": p.genome, "gene": p.gene, "sample": p.sample, "temperature": temp,
                "prompt_codons": s.prompt_codons, "real_codons": len(p.real),
                "length_ratio": m["gen_codons"] / len(p.real), "ended_by": ended, **m, "dna": decode(ids),
            })  # fmt: skip
            pooled.setdefault((p.genome, str(temp)), []).append(ids)
    return pd.DataFrame(rows)[SAMPLE_COLUMNS], pooled


def _summarise(samples, pooled, refs: dict[str, GenomeReference], prompts: list[Prompt], s: PrefixSettings,
               rng: np.random.Generator):
    """Per genome and temperature, then "all" (divergences: mean over genomes), with the real-vs-real floors."""
    import pandas as pd

    floors = {}
    for name, ref in refs.items():
        n = sum(p.genome == name for p in prompts)
        floors[name] = (_floor(ref, n, "codon", rng), _floor(ref, n, "aa", rng))
    rows: list[dict] = []
    for genome in [*refs, "all"]:
        for temp in ["real", *s.temperatures]:
            sel = samples[(samples["temperature"].astype(str) == str(temp))]
            if genome != "all":
                sel = sel[sel["genome"] == genome]
                row = _group_summary(sel.to_dict("records"), pooled[(genome, str(temp))], refs[genome])
                row["codon_js_floor"], row["aa_js_floor"] = floors[genome]
            else:
                row = _group_summary(sel.to_dict("records"), [], None)
                per = [r for r in rows if r["temperature"] == temp]
                for col in ("codon_kl", "codon_js", "codon_js_floor", "aa_js", "aa_js_floor"):
                    row[col] = float(np.mean([r[col] for r in per]))
            rows.append({"genome": genome, "temperature": temp, **row})
    return pd.DataFrame(rows)[SUMMARY_COLUMNS]


def _write(out: Path, samples, summary, result: dict) -> dict:
    for name, df in (("samples.csv", samples), ("summary.csv", summary)):
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    save_figure(tradeoff_figure(summary, result["settings"]["temperatures"]), out / "temperature_tradeoff.png", dpi=110)
    result["files"] = {k: str(out / k) for k in ("samples.csv", "summary.csv", "summary.json", "temperature_tradeoff.png")}
    result["summary"] = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                         for r in summary.to_dict("records")]
    write_json(out / "summary.json", result)  # last: its presence means the folder is complete
    return result


def run_prefix_generation(run_id: str, checkpoints_dir: str | None = None, processed_dir: str | None = None,
                          out_dir: str | None = None, device: str = "cpu", show_progress: bool = True,
                          runs_dir: str | None = None, **settings) -> dict:
    """Prompt a trained run with the first codons of held-out genes and score what it writes.

    run_id: a run's best.pt (model.load.checkpoint_path) or a .pt path. processed_dir:
    default the run config's data.processed_dir. `settings` are PrefixSettings fields (split,
    prompt_codons, per_genome, temperatures, top_k, top_p, seed, max_codons, length_factor,
    end_at_stop, batch_size, n_align). out_dir: default <outputs.scores_dir>/<RUN_ID>/gen_prefix.

    Writes samples.csv (one row per gene and temperature, "real" rows for the held-out genes
    themselves), summary.csv (per genome and "all", per temperature and "real"), summary.json
    (settings, timings, summary) and temperature_tradeoff.png; returns the summary.json content.
    Same arguments and seed give identical files.
    """
    s = PrefixSettings.parse(**settings)
    t0 = time.perf_counter()
    model, cfg, run_name, ckpt, processed, train, held = _load_run(run_id, checkpoints_dir, processed_dir, s,
                                                                   device, runs_dir)
    out = Path(out_dir) if out_dir else Path(cfg.outputs.scores_dir) / run_name / "gen_prefix"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(s.seed)
    refs, prompts = _pick_prompts(cfg, train, held, s, rng)
    if not prompts:
        raise UserError(f"no held-out {s.split} gene longer than {s.prompt_codons + 1} codons in {processed}")
    t_ref = time.perf_counter()
    generated = _generate_all(model, prompts, refs, s, device, show_progress)
    t_gen = time.perf_counter()
    samples, pooled = _score(prompts, refs, generated, s)
    t_metrics = time.perf_counter()
    summary = _summarise(samples, pooled, refs, prompts, s, rng)
    t_sum = time.perf_counter()
    result = {
        "run_id": run_name,
        "settings": {"checkpoint": str(ckpt), "processed_dir": str(processed), **s.model_dump(),
                     "device": device, "floor_repeats": FLOOR_REPEATS},
        "n_prompts": len(prompts),
        "genomes": list(refs),
        "timings_s": {"references": round(t_ref - t0, 2), "generation": round(t_gen - t_ref, 2),
                      "metrics": round(t_metrics - t_gen, 2), "summary": round(t_sum - t_metrics, 2),
                      "total": round(time.perf_counter() - t0, 2)},
    }
    return _write(out, samples, summary, result)
