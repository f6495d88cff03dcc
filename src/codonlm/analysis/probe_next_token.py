"""Step 2, probe_next_token: the model's next-codon distributions held against biology.

Over a seeded sample of held-out genes (each model sees the same contexts):

- codon usage: the model's expected usage (the sum of its next-codon probabilities over every
  position whose target is a codon) turned into RSCU per genome, against the genome's empirical
  RSCU (its training-split genes); Pearson r over the codons of multi-codon amino acids
  (stops, Met and Trp excluded). A cross table shows whether genome A's contexts give genome A's
  usage rather than another's. E. coli (a dataset named *coli*) also against the Kazusa table
  shipped in python-codon-tables (`e_coli_316407`).
- the loss split at codon targets: -log p(codon) = -log p(amino acid) - log p(codon | amino acid)
  (the stops are one "amino acid"); beside it the same split for a per-genome codon-usage model.
- <EOS_CDS>: its probability right after the in-frame stop codon vs at every other codon (not
  applicable, and said so, when no sampled gene ends inside the window the model sees).
- P(next codon = the current one): a random-init model with tied embeddings puts extra mass on
  repeating its input, so its expected usage echoes the genome's (its RSCU r is not 0).
- start codons: the first-codon distribution after <BOS_CDS> (and the host token, per genome weighted by its
  training genes, on a host-conditioned run) vs the genomes' first codons.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import torch

from codonlm.analysis.context import AnalysisContext
from codonlm.data.codons import (
    CODON_OFFSET,
    CODONS,
    EOS,
    HOST_OFFSET,
    PAD,
    VOCAB_SIZE,
    dataset_hosts,
    gene_start,
    genetic_code,
)
from codonlm.io import save_figure, write_csv

NAME = "probe_next_token"
GENES_PER_GENOME = 30
BATCH = 16
KAZUSA_TABLE = "e_coli_316407"
STARTS = ("ATG", "GTG", "TTG")


def settings(ctx: AnalysisContext) -> dict:
    return {"genes_per_genome": GENES_PER_GENOME, "kazusa": KAZUSA_TABLE}


# --------------------------------------------------------------------------- codon usage -> RSCU


def rscu(counts: np.ndarray, table_id: int) -> np.ndarray:
    """RSCU of 64 codon counts (CODONS order): count / mean count of its synonymous family.

    NaN for stops, single-codon amino acids and families with no counts."""
    code = genetic_code(table_id)
    aa = code.aa[CODON_OFFSET:]
    out = np.full(64, np.nan)
    for letter in set(aa.tolist()) - {ord("*")}:
        family = np.flatnonzero(aa == letter)
        total = counts[family].sum()
        if family.size > 1 and total > 0:
            out[family] = counts[family] * family.size / total
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.std(a[keep]) == 0 or np.std(b[keep]) == 0:
        return float("nan")
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def kazusa_rscu(table_name: str = KAZUSA_TABLE) -> np.ndarray:
    """RSCU from a python-codon-tables table (per-amino-acid codon fractions)."""
    import python_codon_tables as pct

    table = pct.get_codons_table(table_name)
    frac = np.full(64, np.nan)
    for letter, family in table.items():
        if letter == "*" or len(family) < 2:
            continue
        for codon, f in family.items():
            frac[CODONS.index(codon.replace("U", "T"))] = f * len(family) / sum(family.values())
    return frac


# --------------------------------------------------------------------------- accumulate over genes


class _Tally:
    """Per-genome sums over the positions of the sample, for one model."""

    def __init__(self, n_genomes: int):
        self.expected = np.zeros((n_genomes, 64))  # sum of p(codon) where the target is a codon
        self.observed = np.zeros((n_genomes, 64))  # the targets themselves
        self.loss = np.zeros((n_genomes, 3))  # sums of total, amino-acid and synonymous loss at codon targets
        self.targets = np.zeros(n_genomes)
        self.eos_after_stop: list[np.ndarray] = []
        self.eos_elsewhere: list[np.ndarray] = []
        self.eos_top_after_stop = 0
        self.repeat = np.zeros(2)  # sum of P(next = the current codon) at codon inputs, and their count

    def add(self, probs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, genome: np.ndarray,
            classes: torch.Tensor, is_stop: torch.Tensor) -> None:
        """probs [B,T,V], targets/inputs [B,T], genome [B]; classes: token -> amino-acid class (-1: none)."""
        n_cls = int(classes.max()) + 1
        onehot = torch.zeros(VOCAB_SIZE, n_cls, dtype=probs.dtype)
        tokens = torch.nonzero(classes >= 0).squeeze(1)
        onehot[tokens, classes[tokens]] = 1.0
        p_true = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).clamp_min(1e-30)
        p_aa = (probs @ onehot).gather(-1, classes[targets].clamp_min(0).unsqueeze(-1)).squeeze(-1).clamp_min(1e-30)
        total, aa_part = -p_true.log(), -p_aa.log()
        codon_target = targets >= CODON_OFFSET
        after_stop = is_stop[inputs] & (targets == EOS)
        w = codon_target.to(probs.dtype)
        per_gene = {
            "expected": (probs[..., CODON_OFFSET:] * w[..., None]).sum(1),
            "observed": torch.zeros(probs.shape[0], VOCAB_SIZE).scatter_add_(1, targets, w)[:, CODON_OFFSET:],
            "loss": torch.stack([(total * w).sum(1), (aa_part * w).sum(1), ((total - aa_part) * w).sum(1)], 1),
        }
        for name, values in per_gene.items():
            np.add.at(getattr(self, name), genome, values.double().numpy())
        np.add.at(self.targets, genome, w.sum(1).double().numpy())
        at_codon = inputs >= CODON_OFFSET
        self.repeat += [float(probs.gather(-1, inputs.unsqueeze(-1)).squeeze(-1)[at_codon].sum()), int(at_codon.sum())]
        self.eos_after_stop.append(probs[..., EOS][after_stop].numpy())
        self.eos_top_after_stop += int((probs.argmax(-1) == EOS)[after_stop].sum())
        self.eos_elsewhere.append(probs[..., EOS][codon_target].numpy())


def _tally(ctx: AnalysisContext, model, genes: list[np.ndarray], genome: np.ndarray, n_genomes: int,
           tables: np.ndarray, label: str) -> _Tally:
    tally = _Tally(n_genomes)
    for table_id in sorted(set(tables.tolist())):
        classes = torch.from_numpy(_aa_classes(table_id))
        is_stop = torch.from_numpy(genetic_code(table_id).is_stop)
        members = np.flatnonzero(tables == table_id)
        batches = ctx.gene_batches([genes[i] for i in members], BATCH, desc=f"{NAME} ({label})")
        with torch.no_grad():
            for chunk, idx in batches:
                logits, _ = model(idx[:, :-1])
                probs = torch.softmax(logits.float()[..., :VOCAB_SIZE], dim=-1).cpu()  # host tokens never come next
                idx = idx.cpu()
                idx = idx.masked_fill(idx >= HOST_OFFSET, PAD)  # a host token is context: no codon, no target
                tally.add(probs, idx[:, 1:], idx[:, :-1], genome[members[chunk]], classes, is_stop)
    return tally


def _aa_classes(table_id: int) -> np.ndarray:
    """Token -> dense amino-acid class index (<EOS_CDS> its own class, -1 for PAD/BOS/SEP)."""
    letters = genetic_code(table_id).aa_classes()
    uniq = sorted(set(letters[letters >= 0].tolist()))
    return np.array([uniq.index(v) if v >= 0 else -1 for v in letters], dtype=np.int64)


@torch.no_grad()
def first_codon_probs(model, device, prompts: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The model's distribution over the token after a gene's start (`gene_start`: a lone <BOS_CDS>, or
    <BOS_CDS> and a genome's host token on a host-conditioned run), averaged over `prompts` with `weights`."""
    probs = []
    for prompt in prompts:
        logits, _ = model(torch.as_tensor(prompt.astype(np.int64)[None], device=device))
        probs.append(torch.softmax(logits[0, -1, :VOCAB_SIZE].float(), -1).cpu().numpy())
    return np.average(probs, axis=0, weights=weights).astype(np.float32)  # the dtype a lone prompt gives


def gene_starts(ctx: AnalysisContext, first_counts: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """What genes start with, and the weight of each: one `<BOS_CDS>`, or per genome `<BOS_CDS> <host>`
    weighted by its training genes (so the mixture compares with the genomes' pooled first codons)."""
    names = ctx.split("train").dataset_names
    hosts = dataset_hosts(ctx.cfg.model.hosts, names, range(len(names)))
    if hosts is None:
        return [gene_start()], np.ones(1)
    return [gene_start(h) for h in hosts], first_counts.sum(1)


# --------------------------------------------------------------------------- the genomes' own usage


def genome_usage(ctx: AnalysisContext) -> tuple[np.ndarray, np.ndarray]:
    """Codon counts [genomes, 64] and first-codon counts [genomes, 64] of the training split."""
    train = ctx.split("train")
    n = len(train.dataset_names)
    usage, first = np.zeros((n, 64)), np.zeros((n, 64))
    for d in range(n):
        genes = [train.genes[g] for g in train.of_dataset(d)]
        if not genes:
            continue
        codons = np.concatenate([g[1:-1] for g in genes]).astype(np.int64) - CODON_OFFSET
        usage[d] = np.bincount(codons, minlength=64)
        first[d] = np.bincount([int(g[1]) - CODON_OFFSET for g in genes if g.size > 2], minlength=64)
    return usage, first


def baseline_loss_split(usage: np.ndarray, observed: np.ndarray, table_ids: list[int]) -> np.ndarray:
    """Per-genome [total, amino acid, synonymous] loss sums of a codon-usage model (add-one) on the
    sample's codon targets."""
    out = np.zeros((len(usage), 3))
    for d, (u, table_id) in enumerate(zip(usage, table_ids, strict=True)):
        p = (u + 1) / (u + 1).sum()
        aa = genetic_code(table_id).aa[CODON_OFFSET:]
        p_aa = np.array([p[aa == a].sum() for a in aa])
        out[d] = [-(observed[d] * np.log(p)).sum(), -(observed[d] * np.log(p_aa)).sum(),
                  -(observed[d] * np.log(p / p_aa)).sum()]
    return out


# --------------------------------------------------------------------------- plots


def _plot_rscu(table: pd.DataFrame, r_table: pd.DataFrame, names: list[str], kazusa_of: str | None, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, "empirical_rscu") for n in names] + ([(kazusa_of, "kazusa_rscu")] if kazusa_of else [])
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (genome, ref) in zip(axes.flat, panels, strict=False):
        part = table[table.genome == genome]
        r = r_table.set_index("genome").loc[genome]
        suffix = "_kazusa" if ref == "kazusa_rscu" else ""
        ax.scatter(part[ref], part["random_init_rscu"], s=9, c="tab:grey", marker="x", label="random init")
        ax.scatter(part[ref], part["trained_rscu"], s=12, c="tab:blue", label="trained")
        hi = np.nanmax(part[[ref, "trained_rscu", "random_init_rscu"]].to_numpy())
        ax.plot([0, hi], [0, hi], ls="--", c="k", lw=0.7)
        ax.set_title(f"{genome}{' vs Kazusa' if suffix else ''}\nr = {r['trained_r' + suffix]:.2f} "
                     f"(random init {r['random_init_r' + suffix]:.2f})", fontsize=8)
        ax.set_xlabel("Kazusa RSCU" if suffix else "genome RSCU (training genes)", fontsize=8)
        ax.set_ylabel("model RSCU (expected usage)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8)
    fig.suptitle("Codon usage implied by the model's next-codon probabilities vs the genome\n"
                 "(RSCU, one dot per codon of a multi-codon amino acid)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, path)


def _plot_cross(cross: np.ndarray, names: list[str], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(cross, cmap="viridis", vmin=min(0.0, np.nanmin(cross)), vmax=1.0)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{cross[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if cross[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("empirical RSCU of genome")
    ax.set_ylabel("trained model's RSCU on held-out genes of genome")
    fig.colorbar(im, ax=ax, label="Pearson r")
    ax.set_title("Does each genome's context give that genome's codon usage?\n(diagonal: own genome)", fontsize=10)
    save_figure(fig, path)


def _plot_loss_split(split: pd.DataFrame, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = split[split.genome == "all"].set_index("model")
    order = [m for m in ("trained", "random_init", "genome_codon_usage") if m in pooled.index]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    aa, syn = pooled.loc[order, "aa_choice_nats"], pooled.loc[order, "synonymous_choice_nats"]
    names = [{"trained": "trained model", "random_init": "random init",
              "genome_codon_usage": "genome codon usage\n(no context)"}[m] for m in order]
    ax.barh(names, aa, color="tab:blue", label="amino-acid choice")
    ax.barh(names, syn, left=aa, color="tab:orange", label="synonymous-codon choice")
    for i, m in enumerate(order):
        ax.text(aa[m] + syn[m], i, f" {aa[m]:.2f} + {syn[m]:.2f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, float((aa + syn).max()) * 1.3)
    ax.set_xlabel("loss per codon (nats) = -log p(amino acid) - log p(codon | amino acid)")
    ax.set_title("Where the loss goes: choosing the amino acid vs choosing among its codons")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    save_figure(fig, path)


def _plot_eos_start(eos: pd.DataFrame, starts: pd.DataFrame, path, no_stops: str | None,
                    after: str = "<BOS_CDS>") -> None:
    """P(<EOS_CDS>) after the stop vs elsewhere (or why there is no 'after the stop'), and the first codons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(eos))
    bars = eos[["p_eos_after_stop", "p_eos_elsewhere"]].astype(float)
    if no_stops is None:
        a.bar(x - 0.2, bars["p_eos_after_stop"], 0.4, label="after the in-frame stop codon", color="tab:red")
    else:
        a.text(0.5, 0.75, "after the stop codon: not applicable\n" + textwrap.fill(no_stops, 60), ha="center",
               va="center", fontsize=8, transform=a.transAxes)
    a.bar(x + 0.2, bars["p_eos_elsewhere"], 0.4, label="after any other codon", color="tab:grey")
    a.set_xticks(x, [m.replace("_", " ") for m in eos["model"]])
    a.set_yscale("log")
    a.set_ylim(min(bars.min().min() / 3, 1e-3), 1.5)
    a.set_ylabel("mean P(<EOS_CDS>) (log scale)")
    a.set_title("Does the model end the gene at the stop codon?")
    a.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    cats = list(starts["codon"])
    x = np.arange(len(cats))
    cols = [c for c in starts.columns if c != "codon"]
    w = 0.8 / len(cols)
    for k, c in enumerate(cols):
        b.bar(x + (k - (len(cols) - 1) / 2) * w, starts[c], w, label=c.replace("_", " "))
    b.set_xticks(x, cats)
    b.set_ylabel("probability of the first codon")
    b.set_title(f"First codon after {after}: model vs genomes")
    b.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------- the step


def _start_table(first_probs: dict[str, np.ndarray], first_counts: np.ndarray) -> pd.DataFrame:
    emp = first_counts.sum(0) / max(first_counts.sum(), 1)
    rows = []
    for label in (*STARTS, "other"):
        ids = [CODONS.index(c) for c in STARTS] if label == "other" else [CODONS.index(label)]
        row = {"codon": label}
        for name, p in first_probs.items():
            codon_p = p[CODON_OFFSET:]
            row[f"{name}_model"] = float(codon_p.sum() - codon_p[ids].sum()) if label == "other" else float(codon_p[ids].sum())
        row["genomes_observed"] = float(1 - emp[ids].sum()) if label == "other" else float(emp[ids].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def rscu_tables(tallies: dict[str, _Tally], usage: np.ndarray, names: list[str], table_ids: list[int],
                out) -> tuple[pd.DataFrame, str | None]:
    """rscu.csv, rscu_r.csv, rscu_cross.csv and their figures; returns the r table and the E. coli name."""
    kazusa = kazusa_rscu()
    coli = next((n for n in names if "coli" in n.lower()), None)
    present = [d for d in range(len(names)) if tallies["trained"].targets[d] > 0]
    model_rscu = {label: np.array([rscu(t.expected[d], table_ids[d]) for d in range(len(names))])
                  for label, t in tallies.items()}
    genome_rscu = np.array([rscu(usage[d], table_ids[d]) for d in range(len(names))])
    rows, r_rows = [], []
    for d in present:
        name, aa = names[d], genetic_code(table_ids[d]).aa[CODON_OFFSET:]
        for c, codon in enumerate(CODONS):
            rows.append({"genome": name, "codon": codon, "aa": chr(aa[c]), "empirical_rscu": genome_rscu[d, c],
                         "trained_rscu": model_rscu["trained"][d, c], "random_init_rscu": model_rscu["random_init"][d, c],
                         "kazusa_rscu": kazusa[c] if name == coli else np.nan,
                         "trained_expected_count": tallies["trained"].expected[d, c],
                         "observed_count_in_sample": tallies["trained"].observed[d, c]})
        r = {"genome": name, **{f"{label}_r": pearson(model_rscu[label][d], genome_rscu[d]) for label in tallies}}
        if name == coli:
            r.update({f"{label}_r_kazusa": pearson(model_rscu[label][d], kazusa) for label in tallies})
            r["empirical_r_kazusa"] = pearson(genome_rscu[d], kazusa)
        r_rows.append(r)
    table, r_table = pd.DataFrame(rows), pd.DataFrame(r_rows)
    write_csv(table, out / "rscu.csv")
    write_csv(r_table, out / "rscu_r.csv")
    cross = np.array([[pearson(model_rscu["trained"][i], genome_rscu[j]) for j in present] for i in present])
    write_csv(pd.DataFrame(cross, columns=[names[j] for j in present]).assign(model_genome=[names[i] for i in present]),
              out / "rscu_cross.csv")
    _plot_rscu(table, r_table, [names[d] for d in present], coli, out / "rscu.png")
    _plot_cross(cross, [names[d] for d in present], out / "rscu_cross.png")
    return r_table, coli


def loss_split_table(tallies: dict[str, _Tally], usage: np.ndarray, names: list[str],
                     table_ids: list[int]) -> pd.DataFrame:
    """Mean total / amino-acid / synonymous loss per model (and the codon-usage model), per genome and 'all'."""
    present = [d for d in range(len(names)) if tallies["trained"].targets[d] > 0]
    observed = tallies["trained"].observed
    rows = []
    for label, t in [*tallies.items(), ("genome_codon_usage", None)]:
        sums, counts = (t.loss, t.targets) if t is not None else \
            (baseline_loss_split(usage, observed, table_ids), observed.sum(1))
        for d in [*present, None]:
            s = sums.sum(0) if d is None else sums[d]
            n = counts.sum() if d is None else counts[d]
            rows.append({"model": label, "genome": "all" if d is None else names[d], "targets": int(n),
                         "total_nats": s[0] / n, "aa_choice_nats": s[1] / n, "synonymous_choice_nats": s[2] / n})
    return pd.DataFrame(rows)


def mean_or_none(values: np.ndarray, reduce=np.mean) -> float | None:
    """A mean (or `reduce`) that is None, not NaN with a warning, over no values."""
    return float(reduce(values)) if values.size else None


def eos_table(tallies: dict[str, _Tally]) -> pd.DataFrame:
    rows = []
    for label, t in tallies.items():
        after, elsewhere = np.concatenate(t.eos_after_stop), np.concatenate(t.eos_elsewhere)
        rows.append({"model": label, "stops": after.size, "p_eos_after_stop": mean_or_none(after),
                     "median_p_eos_after_stop": mean_or_none(after, np.median),
                     "eos_top1_after_stop": t.eos_top_after_stop / max(after.size, 1),
                     "p_eos_elsewhere": mean_or_none(elsewhere), "positions_elsewhere": elsewhere.size,
                     "p_repeat_current_codon": t.repeat[0] / max(t.repeat[1], 1)})
    return pd.DataFrame(rows)


def run(ctx: AnalysisContext) -> dict:
    out = ctx.out_dir(NAME)
    test = ctx.split("test")
    names = test.dataset_names
    picked = ctx.sample_genes("test", GENES_PER_GENOME, salt=2)
    genes = ctx.model_genes("test", picked)
    genome = test.groups[picked].astype(np.int64)
    table_ids = [ctx.table_id(n) for n in names]
    gene_tables = np.array([table_ids[d] for d in genome])
    tallies = {label: _tally(ctx, model, genes, genome, len(names), gene_tables, label)
               for label, model in ctx.models().items()}
    usage, first_counts = genome_usage(ctx)

    r_table, coli = rscu_tables(tallies, usage, names, table_ids, out)
    split = loss_split_table(tallies, usage, names, table_ids)
    write_csv(split, out / "loss_split.csv")
    _plot_loss_split(split, out / "loss_split.png")
    eos = eos_table(tallies)
    write_csv(eos, out / "eos.csv")
    prompts, weights = gene_starts(ctx, first_counts)
    starts = _start_table({label: first_codon_probs(m, ctx.device, prompts, weights)
                           for label, m in ctx.models().items()}, first_counts)
    write_csv(starts, out / "start_codons.csv")
    not_applicable = {}
    if (eos["stops"] == 0).all():
        not_applicable["p_eos_after_stop"] = (f"no sampled gene ends within the model's window of "
                                              f"{ctx.cfg.model.block_size} tokens, so no stop codon is followed by "
                                              "its <EOS_CDS> target")
    _plot_eos_start(eos, starts, out / "eos_start.png", not_applicable.get("p_eos_after_stop"),
                    "<BOS_CDS> <host>" if ctx.host_shift else "<BOS_CDS>")
    return {**_headline(r_table, split, eos, starts, coli, len(genes), not_applicable),
            "not_applicable": not_applicable}


def _eos_reading(result: dict, not_applicable: dict[str, str]) -> str:
    if "p_eos_after_stop" in not_applicable:
        return f"P(<EOS_CDS>) after the stop not applicable ({not_applicable['p_eos_after_stop']})"
    return (f"P(<EOS_CDS>) after the stop {result['p_eos_after_stop']['trained']:.2f} vs "
            f"{result['p_eos_elsewhere']['trained']:.1e} elsewhere "
            f"(random init {result['p_eos_after_stop']['random_init']:.3f})")


def _headline(r_table, split, eos, starts, coli, n_genes, not_applicable: dict[str, str]) -> dict:
    pooled = split[split.genome == "all"].set_index("model")
    e = eos.set_index("model")
    s = starts.set_index("codon")
    labels = ("trained", "random_init")
    result = {
        "genes": n_genes,
        "rscu_r_per_genome": {lab: dict(zip(r_table.genome, r_table[f"{lab}_r"].round(4), strict=True)) for lab in labels},
        "rscu_r_median": {lab: float(r_table[f"{lab}_r"].median()) for lab in labels},
        "loss_nats": {lab: float(pooled.loc[lab, "total_nats"]) for lab in labels},
        "aa_choice_nats": {lab: float(pooled.loc[lab, "aa_choice_nats"]) for lab in labels},
        "synonymous_choice_nats": {lab: float(pooled.loc[lab, "synonymous_choice_nats"]) for lab in labels},
        "synonymous_choice_nats_codon_usage_model": float(pooled.loc["genome_codon_usage", "synonymous_choice_nats"]),
        "p_eos_after_stop": {lab: None if "p_eos_after_stop" in not_applicable else float(e.loc[lab, "p_eos_after_stop"])
                             for lab in labels},
        "p_eos_elsewhere": {lab: float(e.loc[lab, "p_eos_elsewhere"]) for lab in labels},
        "p_repeat_current_codon": {lab: float(e.loc[lab, "p_repeat_current_codon"]) for lab in labels},
        "p_start_codon_after_bos": {lab: float(s.loc[list(STARTS), f"{lab}_model"].sum()) for lab in labels},
        "first_codon_atg": {lab: float(s.loc["ATG", f"{lab}_model"]) for lab in labels},
        "first_codon_atg_observed": float(s.loc["ATG", "genomes_observed"]),
    }
    if coli is not None:
        k = r_table.set_index("genome").loc[coli]
        result["rscu_r_kazusa_ecoli"] = {lab: float(k[f"{lab}_r_kazusa"]) for lab in labels}
        result["rscu_r_kazusa_ecoli"]["genome_itself"] = float(k["empirical_r_kazusa"])
    r_t, r_r = result["rscu_r_median"]["trained"], result["rscu_r_median"]["random_init"]
    echo = result["p_repeat_current_codon"]["random_init"]
    result["reading"] = (
        f"RSCU r per genome median {r_t:.2f} (random init {r_r:.2f}, which puts P {echo:.2f} on repeating the "
        "current codon and so echoes the genome's usage); loss "
        f"{result['loss_nats']['trained']:.2f} nats = {result['aa_choice_nats']['trained']:.2f} amino-acid choice + "
        f"{result['synonymous_choice_nats']['trained']:.2f} synonymous choice (codon-usage model "
        f"{result['synonymous_choice_nats_codon_usage_model']:.2f}); " + _eos_reading(result, not_applicable))
    return result
