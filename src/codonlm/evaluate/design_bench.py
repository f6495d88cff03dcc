"""Design benchmark (`codonlm design-bench`, the `design` stage): redesign held-out proteins, compare with nature.

For each host (genome of the run), up to `per_host` test-split genes of at most `max_codons` codons
(seeded draw; defaults 30 and
300: the stage's time on 2 cores) are designed from their protein by
every method, and each design is compared with the natural gene it came from:

- codon identity: share of positions where the design has the natural gene's codon (start and stop
  included; same length by construction);
- %MinMax DTW: DTW distance between the design's and the natural gene's %MinMax profiles (lower:
  closer pattern of fast and slow stretches);
- CSI and GC3 differences (design - natural gene);
- KN-3 log-likelihood per codon: under a per-host Kneser-Ney 3-gram fitted on the host's training
  genes (how host-like the codon sequence is, judged by a model other than ours).

Methods: the model greedy and sampling (T = 1); most frequent codon per amino acid in the host's
training genes; sampling from the host's codon usage; uniform synonymous choice; DnaChisel's own
`CodonOptimize` with the host's codon usage (`use_best_codon`, `match_codon_usage`: about a second per
gene, so on the first `dnachisel_genes` (5) proteins of each host only, n in the summary; its third method,
`harmonize_rca`, maps an original host's usage onto a target's and needs the natural gene as input, so it
does not apply to designing from a protein). All methods use the same synonym masks (start codon among
the host's starts, then the protein, then a stop), and every design is translated back and checked.

Writes runs/<RUN_ID>/design/: designs.csv (one row per protein and method), summary.csv (mean and
bootstrap 95% CI per host and method), design_bench.png, summary.json (last: the folder is complete),
with the goal check: model greedy closer to the natural genes than most-frequent, and model sampling
than usage sampling, on codon identity and %MinMax DTW, per host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codonlm.data.codons import BOS, CODON_OFFSET, CODONS, EOS, STOI, VOCAB_SIZE, decode, translate
from codonlm.errors import UserError
from codonlm.evaluate.constraints import seeded_dnachisel
from codonlm.evaluate.design import (
    HostReference,
    build_host,
    check_translation,
    clean_protein,
    decode_batch,
    host_spec,
    synonym_masks,
)
from codonlm.evaluate.designmetrics import bootstrap_mean_ci, minmax_dtw, minmax_profile
from codonlm.evaluate.ngram import KneserNeyLM
from codonlm.evaluate.seqmetrics import codon_usage, gc3

METHODS = ("model_greedy", "model_sampling", "most_frequent", "usage_sampling", "uniform",
           "dnachisel_use_best_codon", "dnachisel_match_codon_usage")
METRICS = ("codon_identity", "minmax_dtw", "csi_diff", "gc3_diff", "kn3_loglik_per_codon")
GOALS = (("model_greedy", "most_frequent"), ("model_sampling", "usage_sampling"))


def _usage_weights(host: HostReference) -> tuple[np.ndarray, np.ndarray]:
    """Codon counts of the host's training genes over token ids, and of their first codons (start choice)."""
    counts = np.zeros(VOCAB_SIZE)
    counts[CODON_OFFSET:] = codon_usage(host.genes) + 0.5
    first = np.zeros(VOCAB_SIZE)
    for g in host.genes:
        first[int(g[0])] += 1
    return counts, first + 0.5


def baseline_design(mask: np.ndarray, counts: np.ndarray, first: np.ndarray, method: str,
                    rng: np.random.Generator) -> np.ndarray:
    """Codon ids of a codon-usage baseline under the same synonym masks as the model."""
    out = np.empty(mask.shape[0], dtype=np.uint8)
    for t, allowed in enumerate(mask):
        w = np.where(allowed, first if t == 0 else counts, 0.0)
        if method == "most_frequent":
            out[t] = int(np.argmax(w))
        elif method == "usage_sampling":
            out[t] = int(rng.choice(VOCAB_SIZE, p=w / w.sum()))
        else:  # uniform
            options = np.flatnonzero(allowed)
            out[t] = int(options[rng.integers(options.size)])
    return out


def dnachisel_design(start: np.ndarray, host: HostReference, method: str) -> np.ndarray:
    """DnaChisel CodonOptimize (`method`) with the host's codon usage, from a valid design, start codon kept."""
    import dnachisel as dc
    from Bio.Data.CodonTable import unambiguous_dna_by_id

    counts = codon_usage(host.genes) + 0.5
    table: dict[str, dict[str, float]] = {}
    for i, codon in enumerate(CODONS):
        aa = translate(np.array([i + CODON_OFFSET]), host.table_id, keep_stop=True)[-1:] or "*"
        table.setdefault(aa, {})[codon] = float(counts[i])
    for aa, row in table.items():
        total = sum(row.values())
        table[aa] = {c: v / total for c, v in row.items()}
    name = unambiguous_dna_by_id[host.table_id].names[0]
    problem = dc.DnaOptimizationProblem(
        decode(start), logger=None,
        constraints=[dc.EnforceTranslation(genetic_table=name, start_codon="keep")],
        objectives=[dc.CodonOptimize(codon_usage_table=table, method=method.removeprefix("dnachisel_"))],
    )  # fmt: skip
    with seeded_dnachisel():
        problem.optimize()
    seq = problem.sequence
    return np.array([STOI[seq[i : i + 3]] for i in range(0, len(seq), 3)], dtype=np.uint8)


def compare(ids: np.ndarray, natural: np.ndarray, host: HostReference, kn: KneserNeyLM) -> dict:
    """A design against the natural gene of its protein (both codon ids, stop included)."""
    freq = host.frequencies
    gene = np.concatenate([[BOS], ids, [EOS]]).astype(np.int64)
    return {
        "codon_identity": float((ids == natural).mean()),
        "minmax_dtw": minmax_dtw(minmax_profile(ids, freq, host.table_id), minmax_profile(natural, freq, host.table_id)),
        "csi_diff": host.csi.cai(ids) - host.csi.cai(natural),
        "gc3_diff": gc3(ids) - gc3(natural),
        "kn3_loglik_per_codon": float(kn.log_probs(gene).mean()),
    }


def design_host(model, prompt: list[int], host: HostReference, naturals: list[np.ndarray], seed: int,
                methods: tuple[str, ...] = METHODS, dnachisel_genes: int = 5,
                device="cpu") -> tuple[list[dict], dict[str, float]]:
    """Every method's design of every natural gene's protein, compared with it; and seconds per method."""
    proteins = [translate(n, host.table_id) for n in naturals]
    masks = [synonym_masks(p, host.table_id, host.starts) for p in proteins]
    counts, first = _usage_weights(host)
    kn = KneserNeyLM(order=3).fit([np.concatenate([[BOS], g, [EOS]]) for g in host.genes])
    rng = np.random.default_rng(seed)
    designs: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        t0 = time.perf_counter()
        if method.startswith("model_"):
            temperature = None if method == "model_greedy" else 1.0
            designs[method] = [ids for ids, _ in decode_batch(model, prompt, masks, temperature, seed, device)]
        elif method.startswith("dnachisel_"):  # seconds per gene: on the first `dnachisel_genes` only
            designs[method] = [dnachisel_design(u, host, method) for u in designs["uniform"][:dnachisel_genes]]
        else:
            designs[method] = [baseline_design(m, counts, first, method, rng) for m in masks]
        seconds[method] = round(time.perf_counter() - t0, 2)
    rows = []
    for method, found in designs.items():
        for i, ids in enumerate(found):
            check_translation(ids, proteins[i], host.table_id)
            rows.append({"host": host.name, "method": method, "protein": i, "length": len(proteins[i]),
                         **compare(ids, naturals[i], host, kn)})
    return rows, seconds


def _naturals(held, d: int, table_id: int, per_host: int, max_codons: int, rng: np.random.Generator):
    """A seeded draw of the host's held-out genes that are clean ORFs (stop last, none inside) within the cap;
    when fewer than `per_host` are, the shortest longer ones fill up (a small genome still gets designs)."""
    from codonlm.data.codons import genetic_code

    code = genetic_code(table_id)
    clean = [g for g in held.of_dataset(d) if len(held.codons(g)) > 2 and code.is_stop[held.codons(g)[-1]]
             and not code.is_stop[held.codons(g)[:-1]].any()]
    within = [g for g in clean if len(held.codons(g)) <= max_codons]
    pick = list(rng.choice(within, size=min(per_host, len(within)), replace=False)) if within else []
    longer = sorted((g for g in clean if len(held.codons(g)) > max_codons), key=lambda g: len(held.codons(g)))
    pick += longer[: per_host - len(pick)]
    return [held.codons(int(g)).astype(np.uint8) for g in sorted(pick)]


def summarise(rows, n_boot: int = 1000, seed: int = 0):
    """Mean and bootstrap 95% CI of every metric per host and method (pandas)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    out = []
    for (host, method), sub in df.groupby(["host", "method"], sort=False):
        row = {"host": host, "method": method, "n": len(sub)}
        for m in METRICS:
            row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = bootstrap_mean_ci(sub[m], n_boot, seed)
        out.append(row)
    return pd.DataFrame(out)


def goal_checks(summary) -> list[dict]:
    """Per host and goal pair: is the model closer to nature than the baseline on identity and DTW?"""
    checks = []
    for host, sub in summary.groupby("host", sort=False):
        by = sub.set_index("method")
        for model, baseline in GOALS:
            if model not in by.index or baseline not in by.index:
                continue
            checks.append({
                "host": host, "model": model, "baseline": baseline,
                "identity_higher": bool(by.loc[model, "codon_identity"] > by.loc[baseline, "codon_identity"]),
                "dtw_lower": bool(by.loc[model, "minmax_dtw"] < by.loc[baseline, "minmax_dtw"]),
            })  # fmt: skip
    return checks


PANELS = (
    ("codon_identity", "codon identity to the\nnatural gene (higher: closer)"),
    ("minmax_dtw", "%MinMax DTW to the natural\ngene (%MinMax points; lower: closer)"),
)
"""The figure's panels: metric and y-label (two short lines each, so the labels of the two panels never meet)."""

DTW_NOTE = ("DTW (dtaidistance): square root of the summed squared differences of the two %MinMax profiles "
            "(18-codon windows) along the best warping path, in %MinMax points; it grows with the square root "
            "of gene length")


def bench_figure(summary):
    """Codon identity and %MinMax DTW per host and method, with their bootstrap 95% CIs (constrained layout:
    labels, legend and the DTW note are placed without overlapping)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hosts = list(dict.fromkeys(summary["host"]))
    methods = list(dict.fromkeys(summary["method"]))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(hosts) + 3), 8), sharex=True, layout="constrained")
    width = 0.8 / len(methods)
    for ax, (metric, label) in zip(axes, PANELS, strict=True):
        for j, method in enumerate(methods):
            sub = summary[summary["method"] == method].set_index("host").reindex(hosts)
            x = np.arange(len(hosts)) + (j - (len(methods) - 1) / 2) * width
            err = np.vstack([sub[metric] - sub[f"{metric}_ci_low"], sub[f"{metric}_ci_high"] - sub[metric]])
            ax.bar(x, sub[metric], width, yerr=err, capsize=2, label=method,
                   color=plt.get_cmap("tab10")(j), edgecolor="black" if method.startswith("model") else "none")
        ax.set_ylabel(label, fontsize=9)
    axes[1].set_xticks(np.arange(len(hosts)))
    axes[1].set_xticklabels(hosts, rotation=25, ha="right", fontsize=8)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, ncol=4, loc="outside upper center", frameon=False)
    axes[0].set_title("Design from held-out proteins: how close to the natural gene (mean, 95% bootstrap CI)")
    fig.supxlabel(DTW_NOTE, fontsize=7, wrap=True)
    return fig


@dataclass
class HeldoutDesigns:
    """Greedy designs of every held-out protein of one host (`design_every_heldout`)."""

    host: str
    table_id: int
    designs: list[tuple[str, str, np.ndarray]]  # (gene name, protein, codon ids with the stop)
    refused: list[tuple[str, str]]  # (gene name, why design refuses its protein: an internal stop, ...)
    failures: list[tuple[str, str]]  # (gene name, check_translation's message): must stay empty
    seconds: float


def _greedy_in_batches(model, prompt: list[int], named: list[tuple[str, str]], host: HostReference, batch: int,
                       device) -> tuple[list[tuple[str, str, np.ndarray]], list[tuple[str, str]]]:
    """Greedy designs of (name, protein) pairs, longest first in batches of `batch` (similar lengths waste few
    steps), each checked by `check_translation`; a mismatch is collected, not raised, so one pass counts all."""
    order = sorted(named, key=lambda item: -len(item[1]))
    designs, failures = [], []
    for i in range(0, len(order), batch):
        chunk = order[i : i + batch]
        masks = [synonym_masks(protein, host.table_id, host.starts) for _, protein in chunk]
        for (name, protein), (ids, _) in zip(chunk, decode_batch(model, prompt, masks, device=device), strict=True):
            try:
                check_translation(ids, protein, host.table_id)
            except RuntimeError as error:
                failures.append((name, str(error)))
            designs.append((name, protein, ids))
    return designs, failures


def design_every_heldout(model, prompt_for, cfg, run_id: str, runs_dir=None, processed_dir=None, batch: int = 32,
                         device="cpu") -> list[HeldoutDesigns]:
    """Greedy design of EVERY held-out (test-split) protein of every host of a run, through the decoder
    `codonlm design` uses (synonym masks of the host's start codons and genetic code, `decode_batch`), in
    batches: the check that design back-translates whatever a genome holds, not only a benchmark's draw.

    A protein design refuses (`clean_protein`: an internal stop, i.e. a selenocysteine or pyrrolysine codon
    read as stop) is listed in `refused` with its reason, as `codonlm design` would answer it."""
    from codonlm.data.layout import run_split_path
    from codonlm.io import read_split_genes

    train = read_split_genes(run_split_path(cfg, run_id, "train", runs_dir=runs_dir, processed_dir=processed_dir))
    held = read_split_genes(run_split_path(cfg, run_id, "test", runs_dir=runs_dir, processed_dir=processed_dir))
    out = []
    for d, name in enumerate(held.dataset_names):
        t0 = time.perf_counter()
        spec = host_spec(cfg, train.dataset_names, name)
        idx = train.of_dataset(train.dataset_names.index(name))
        host = build_host(spec, [train.codons(g) for g in idx], [train.names[g] for g in idx])
        named, refused = [], []
        for g in held.of_dataset(d):
            try:
                protein = clean_protein(held.names[g], translate(held.codons(g), host.table_id), "held-out genes")
                named.append((held.names[g], protein))
            except UserError as error:
                refused.append((held.names[g], str(error)))
        designs, failures = _greedy_in_batches(model, prompt_for(name), named, host, batch, device)
        out.append(HeldoutDesigns(name, host.table_id, designs, refused, failures,
                                  round(time.perf_counter() - t0, 2)))
    return out


def run_design_bench(model, prompt_for, cfg, run_id: str, out_dir: Path, runs_dir=None, processed_dir=None,
                     per_host: int = 30, max_codons: int = 300, seed: int = 0, device="cpu") -> dict:
    """The benchmark over every host of the run (see the module docstring); returns summary.json's content.

    prompt_for(host) gives the tokens a host's genes start from (CodonLM.tokens(""))."""
    import pandas as pd

    from codonlm.data.layout import run_split_path
    from codonlm.io import read_split_genes, save_figure, write_csv, write_json
    from codonlm.log import log

    t0 = time.perf_counter()
    train = read_split_genes(run_split_path(cfg, run_id, "train", runs_dir=runs_dir, processed_dir=processed_dir))
    held = read_split_genes(run_split_path(cfg, run_id, "test", runs_dir=runs_dir, processed_dir=processed_dir))
    rng = np.random.default_rng(seed)
    rows, timings = [], {}
    for d, name in enumerate(held.dataset_names):
        spec = host_spec(cfg, train.dataset_names, name)
        naturals = _naturals(held, d, spec.transl_table, per_host, max_codons, rng)
        idx = train.of_dataset(train.dataset_names.index(name))
        if not naturals or len(idx) < 10:
            log(f"[design-bench] {name}: skipped ({len(naturals)} usable test genes, {len(idx)} training genes)")
            continue
        host = build_host(spec, [train.codons(g) for g in idx], [train.names[g] for g in idx])
        host_rows, timings[name] = design_host(model, prompt_for(name), host, naturals, seed, device=device)
        rows += host_rows
        log(f"[design-bench] {name}: {len(naturals)} proteins x {len(METHODS)} methods")
    if not rows:
        raise UserError(f"no host of run {run_id} has a held-out test gene that is a clean ORF to design from")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows, seed=seed)
    write_csv(pd.DataFrame(rows), out_dir / "designs.csv")
    write_csv(summary, out_dir / "summary.csv")
    save_figure(bench_figure(summary), out_dir / "design_bench.png", dpi=110)
    result = {"run_id": run_id, "settings": {"per_host": per_host, "max_codons": max_codons, "seed": seed},
              "summary": summary.to_dict("records"), "goals": goal_checks(summary), "seconds_per_method": timings,
              "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out_dir / "summary.json", result)
    return result
