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

Generation uses a key/value cache (`sample_with_cache`), the same sampling as
`codonlm.evaluate.sampling.generate` but linear rather than quadratic in gene length: that is what
lets the default sweep (7 genomes x 50 genes x 3 temperatures) run in minutes on a laptop CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codonlm.data.codons import BOS, CODON_OFFSET, EOS, decode, genetic_code, translate
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
from codonlm.io import atomic_path, read_split_genes, save_figure, write_json
from codonlm.log import progress

DEFAULT_TEMPERATURES = (0.7, 1.0, 1.3)
SPLITS = ("val", "test")
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
    return tokens[tokens >= CODON_OFFSET]


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


def _plot(summary, temperatures: Sequence[float], path: Path) -> None:
    """Temperature trade-off: validity and length against codon-usage fidelity and memorisation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("frac_valid_orf", "valid ORF fraction"),
        ("codon_js", "codon-usage JS vs genome (bits)"),
        ("length_ratio_median", "median length / real length"),
        ("nearest_identity_mean", "mean identity to nearest training protein"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5))
    temps = [float(t) for t in temperatures]
    for ax, (col, label) in zip(axes.flat, panels, strict=True):
        for genome, sub in summary[summary["temperature"] != "real"].groupby("genome", sort=False):
            is_all = genome == "all"
            ys = [sub.loc[sub["temperature"] == t, col].iloc[0] for t in temps]
            ax.plot(
                temps,
                ys,
                marker="o",
                lw=2.5 if is_all else 0.8,
                alpha=1.0 if is_all else 0.5,
                color="black" if is_all else None,
                label=genome,
            )
        real = summary[(summary["genome"] == "all") & (summary["temperature"] == "real")]
        if len(real) and not np.isnan(real[col].iloc[0]):
            ax.axhline(real[col].iloc[0], color="tab:green", ls="--", label="real held-out genes")
        if col == "codon_js":
            floor = summary[(summary["genome"] == "all") & (summary["temperature"] != "real")]
            ax.plot(
                temps,
                [floor.loc[floor["temperature"] == t, "codon_js_floor"].iloc[0] for t in temps],
                color="tab:red",
                ls=":",
                label="real-vs-real split-half floor",
            )
        ax.set_xlabel("sampling temperature")
        ax.set_ylabel(label)
        ax.set_xticks(temps)
    handles, labels = axes.flat[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Prefix generation: temperature trade-off (thick: all genomes)")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    save_figure(fig, path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the evaluation


def _check_args(
    prompt_codons: int,
    per_genome: int,
    temperatures: Sequence[float],
    top_k,
    top_p,
    split: str,
    batch_size: int,
    max_codons: int,
    length_factor: float,
    n_align: int,
) -> None:
    if split not in SPLITS:
        raise UserError(f"split '{split}' is not held out; use one of {', '.join(SPLITS)}")
    if prompt_codons < 1:
        raise UserError(f"prompt codons must be >= 1 (got {prompt_codons})")
    if per_genome < 1:
        raise UserError(f"per-genome must be >= 1 (got {per_genome})")
    if not temperatures or any(not (t > 0 and math.isfinite(t)) for t in temperatures):
        raise UserError(f"temperatures must be positive numbers (got {list(temperatures)})")
    if len(set(temperatures)) != len(temperatures):
        raise UserError(f"temperatures repeat (got {list(temperatures)})")
    if top_k is not None and top_k < 1:
        raise UserError(f"top-k must be >= 1 (got {top_k})")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top-p must be in (0, 1] (got {top_p})")
    if batch_size < 1 or n_align < 1:
        raise UserError("batch size and n_align must be >= 1")
    if max_codons <= prompt_codons or length_factor <= 0:
        raise UserError(
            f"max codons ({max_codons}) must exceed prompt codons ({prompt_codons}) "
            f"and length factor ({length_factor}) be positive"
        )


def run_prefix_generation(
    run_id: str,
    checkpoints_dir: str = "outputs/checkpoints",
    processed_dir: str | None = None,
    split: str = "test",
    prompt_codons: int = 10,
    per_genome: int = 50,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    out_dir: str | None = None,
    max_codons: int = 1500,
    length_factor: float = 2.0,
    end_at_stop: bool = False,
    batch_size: int = 64,
    n_align: int = 3,
    device: str = "cpu",
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Prompt a trained run with the first codons of held-out genes and score what it writes.

    run_id: a run under `checkpoints_dir` (best.pt, else last.pt) or a .pt path. processed_dir:
    default the run config's data.processed_dir. split: "test" (default) or "val". prompt_codons
    (10): codons of the real gene given as prompt (genes not longer than prompt + 1 are skipped).
    per_genome (50): held-out genes drawn per genome with `seed`. temperatures (0.7, 1.0, 1.3): the
    sweep; top_k / top_p: optional filters (off). A gene is capped at min(length_factor (2.0) x the
    real length, max_codons (1500)) codons. end_at_stop (False): end at <EOS_CDS> only, so internal
    stops can be seen. batch_size (64): genes generated together. n_align (3): candidates aligned
    per nearest-identity look-up. out_dir: default <outputs.scores_dir>/<RUN_ID>/gen_prefix.

    Writes samples.csv (one row per gene and temperature, "real" rows for the held-out genes
    themselves), summary.csv (per genome and "all", per temperature and "real"), summary.json
    (settings, timings, summary) and temperature_tradeoff.png; returns the summary.json content.
    Same arguments and seed give identical files.
    """
    import pandas as pd

    from codonlm.model.load import checkpoint_path, load_model

    temperatures = [float(t) for t in temperatures]
    _check_args(
        prompt_codons,
        per_genome,
        temperatures,
        top_k,
        top_p,
        split,
        batch_size,
        max_codons,
        length_factor,
        n_align,
    )
    t0 = time.perf_counter()
    ckpt = checkpoint_path(run_id, checkpoints_dir)
    model, cfg, state = load_model(str(ckpt), checkpoints_dir, device=device)
    run_name = str(state.get("run_id") or Path(run_id).stem)
    block = cfg.model.block_size
    if prompt_codons + 2 > block:
        raise UserError(f"prompt codons ({prompt_codons}) must be below block_size - 1 ({block - 1})")
    processed = Path(processed_dir or cfg.data.processed_dir)
    train = read_split_genes(processed / "all" / "train.npz")
    held = read_split_genes(processed / "all" / f"{split}.npz")
    names = held.dataset_names
    if train.dataset_names != names:
        raise UserError(
            f"{processed}: train and {split} list different datasets; re-run 'codonlm prepare --force'"
        )
    specs = {d.name: d for d in cfg.data.datasets}
    out = Path(out_dir) if out_dir else Path(cfg.outputs.scores_dir) / run_name / "gen_prefix"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # references and prompts, per genome
    refs: dict[str, GenomeReference] = {}
    prompts: list[dict] = []  # genome, gene, sample, real (codon ids)
    for d, name in enumerate(names):
        spec = specs.get(name)
        table_id, min_len = (spec.transl_table, spec.min_len) if spec else (11, 1)
        train_idx = train.of_dataset(d)
        eligible = [g for g in held.of_dataset(d) if len(held.codons(g)) > prompt_codons + 1]
        if len(train_idx) < 2 or not eligible:
            log(
                f"[gen-prefix] {name}: skipped ({len(train_idx)} training genes, {len(eligible)} held-out "
                f"genes longer than {prompt_codons + 1} codons)"
            )
            continue
        refs[name] = build_reference(
            name,
            [train.codons(g) for g in train_idx],
            [train.names[g] for g in train_idx],
            table_id,
            min_len,
        )
        pick = sorted(rng.choice(eligible, size=min(per_genome, len(eligible)), replace=False))
        prompts += [
            {"genome": name, "gene": held.names[g], "sample": s, "real": held.codons(g)}
            for s, g in enumerate(pick)
        ]
    if not prompts:
        raise UserError(f"no held-out {split} gene longer than {prompt_codons + 1} codons in {processed}")
    t_ref = time.perf_counter()

    # generation: similar caps batched together, one seed per (temperature, batch)
    caps = [
        max(prompt_codons + 1, min(max_codons, math.ceil(length_factor * len(p["real"])))) for p in prompts
    ]
    order = sorted(range(len(prompts)), key=lambda i: (caps[i], i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    stop_mask = {n: genetic_code(r.table_id).is_stop for n, r in refs.items()}
    generated: dict[tuple[float, int], np.ndarray] = {}
    bar = progress(
        total=len(temperatures) * len(prompts), desc="generate", unit="gene", disable=not show_progress
    )
    for ti, temp in enumerate(temperatures):
        for bi, batch in enumerate(batches):
            # rows of one batch share a stop mask only when ending at stops; group by genome then
            groups = (
                [batch]
                if not end_at_stop
                else [[i for i in batch if prompts[i]["genome"] == n] for n in refs]
            )
            for gi, rows in enumerate(g for g in groups if g):
                seed_i = int(np.random.SeedSequence([seed, ti, bi, gi]).generate_state(1)[0])
                toks = generate(
                    model,
                    [np.concatenate([[BOS], p["real"][:prompt_codons]]).astype(np.uint8)
                     for p in (prompts[i] for i in rows)],
                    [caps[i] - prompt_codons for i in rows], temp, top_k, top_p, seed_i,
                    stop_mask[prompts[rows[0]]["genome"]] if end_at_stop else None, device,
                )  # fmt: skip
                for i, t in zip(rows, toks, strict=True):
                    generated[(temp, i)] = t
                bar.update(len(rows))
    bar.close()
    t_gen = time.perf_counter()

    # per-gene metrics
    sample_rows: list[dict] = []
    pooled: dict[tuple[str, str], list[np.ndarray]] = {}
    for temp in ["real", *temperatures]:
        for i, p in enumerate(prompts):
            ref = refs[p["genome"]]
            if temp == "real":
                ids, ended = p["real"], "real"
            else:
                toks = generated[(temp, i)]
                ended = (
                    "eos"
                    if toks[-1] == EOS
                    else "stop"
                    if end_at_stop and stop_mask[p["genome"]][toks[-1]]
                    else "cap"
                )
                ids = _codons(toks)
            m = gene_metrics(ids, ref, n_align)
            sample_rows.append({
                "genome": p["genome"], "gene": p["gene"], "sample": p["sample"], "temperature": temp,
                "prompt_codons": prompt_codons, "real_codons": len(p["real"]),
                "length_ratio": m["gen_codons"] / len(p["real"]), "ended_by": ended, **m, "dna": decode(ids),
            })  # fmt: skip
            pooled.setdefault((p["genome"], str(temp)), []).append(ids)
    samples = pd.DataFrame(sample_rows)[SAMPLE_COLUMNS]
    t_metrics = time.perf_counter()

    # summary: per genome and temperature, then "all" (divergences: mean over genomes)
    floors = {}
    for name, ref in refs.items():
        n = sum(p["genome"] == name for p in prompts)
        floors[name] = (_floor(ref, n, "codon", rng), _floor(ref, n, "aa", rng))
    summary_rows = []
    for genome in [*refs, "all"]:
        for temp in ["real", *temperatures]:
            sel = samples[(samples["temperature"].astype(str) == str(temp))]
            if genome != "all":
                sel = sel[sel["genome"] == genome]
                row = _group_summary(sel.to_dict("records"), pooled[(genome, str(temp))], refs[genome])
                row["codon_js_floor"], row["aa_js_floor"] = floors[genome]
            else:
                row = _group_summary(sel.to_dict("records"), [], None)
                per = [r for r in summary_rows if r["temperature"] == temp]
                for col in ("codon_kl", "codon_js", "codon_js_floor", "aa_js", "aa_js_floor"):
                    row[col] = float(np.mean([r[col] for r in per]))
            summary_rows.append({"genome": genome, "temperature": temp, **row})
    summary = pd.DataFrame(summary_rows)[SUMMARY_COLUMNS]
    t_sum = time.perf_counter()

    for name, df in (("samples.csv", samples), ("summary.csv", summary)):
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    _plot(summary, temperatures, out / "temperature_tradeoff.png")
    result = {
        "run_id": run_name,
        "settings": {
            "checkpoint": str(ckpt), "processed_dir": str(processed), "split": split,
            "prompt_codons": prompt_codons, "per_genome": per_genome, "temperatures": temperatures,
            "top_k": top_k, "top_p": top_p, "seed": seed, "max_codons": max_codons,
            "length_factor": length_factor, "end_at_stop": end_at_stop, "batch_size": batch_size,
            "n_align": n_align, "device": device, "floor_repeats": FLOOR_REPEATS,
        },
        "n_prompts": len(prompts),
        "genomes": list(refs),
        "timings_s": {"references": round(t_ref - t0, 2), "generation": round(t_gen - t_ref, 2),
                      "metrics": round(t_metrics - t_gen, 2), "summary": round(t_sum - t_metrics, 2),
                      "total": round(time.perf_counter() - t0, 2)},
        "files": {k: str(out / k) for k in ("samples.csv", "summary.csv", "summary.json", "temperature_tradeoff.png")},
        "summary": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                    for r in summary.to_dict("records")],
    }  # fmt: skip

    write_json(out / "summary.json", result)
    return result


# --------------------------------------------------------------------------- command line
