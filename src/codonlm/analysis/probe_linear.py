"""Step 3, probe_linear: what a linear read-out finds in the residual stream, layer by layer.

Logistic-regression probes (scikit-learn, standardised features) on `hook_embed` and every
`blocks.{i}.hook_resid_post`, at seeded codon positions of seeded held-out genes, split by gene
(probe-train and probe-test genes never share a position). Five tasks: the current codon's amino
acid, the next codon's amino acid (<EOS_CDS> its own class), the genome of origin, the relative
position in the gene (binned) and the gene's GC3 (binned at the sample's quantiles).

Two controls. The random-init model (same shape) shows what the architecture gives for free (a
random embedding already identifies the codon, hence its amino acid). The control task fits the
same probe on the trained model's features with the probe-train labels shuffled (seeded), and
scores it against the true held-out labels: what a probe reaches when the labels carry no
information (class frequencies, probe bias). Selectivity = accuracy - control accuracy.

A task whose accuracy would mean nothing on this sample is not fitted but reported as not
applicable, with the reason (`not_applicable` in summary.json): one class only (the genome of
origin of a one-genome run), a probe split holding one class, or a label of the whole gene
(genome, GC3) with a class that has no probe-train or no probe-test gene (too few genes: the
probe-train majority class may then be absent from the held-out genes, a "majority class" of 0.00).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd

from codonlm.analysis.context import AnalysisContext
from codonlm.data.codons import CODON_OFFSET, CODONS, EOS, VOCAB_SIZE, genetic_code
from codonlm.io import save_figure, write_csv

NAME = "probe_linear"
GENES_PER_GENOME = 24
POSITIONS_PER_GENE = 24
TEST_FRACTION = 0.3
POSITION_BINS = 5
GC3_BINS = 3
BATCH = 16
MAX_ITER = 200
TOL = 1e-3
L2 = 1 / 30  # weight penalty per sample (C = 1 / (L2 * n_train)), on standardised features. Strong: with
# C = 1 (L2 ~ 1/3000 on the default run's 3,000 probe-train positions) the weakly decodable next amino
# acid overfits below the majority class; simple probes are the point
GENE_LEVEL_TASKS = ("genome", "gc3")  # one label per gene: the genes, not the positions, are the samples
TASKS = {
    "current_aa": "amino acid of the current codon",
    "next_aa": "amino acid of the next codon",
    "genome": "genome of origin",
    "relative_position": f"relative position in the gene ({POSITION_BINS} bins)",
    "gc3": f"gene GC3 ({GC3_BINS} quantile bins)",
}


def settings(ctx: AnalysisContext) -> dict:
    return {"genes_per_genome": GENES_PER_GENOME, "positions_per_gene": POSITIONS_PER_GENE,
            "test_fraction": TEST_FRACTION, "l2_per_sample": L2, "max_iter": MAX_ITER, "tol": TOL}


def layer_names(n_layer: int) -> list[str]:
    return ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layer)]


@dataclass
class ProbeSet:
    """Sampled positions: gene (index into the sample), position in the framed gene, labels, split."""

    gene: np.ndarray
    position: np.ndarray
    labels: dict[str, np.ndarray]  # task -> integer class
    is_test: np.ndarray
    next_letter: np.ndarray  # amino-acid letter (ord) of the next token, '$' for <EOS_CDS>
    letters: list[np.ndarray]  # per position: token id -> amino-acid letter in its genome's code

    def letter_of(self, tokens: np.ndarray) -> np.ndarray:
        """Amino-acid letters (ord) of one token per position, '$' for <EOS_CDS>."""
        return np.array([ord("$") if t == EOS else table[t] for t, table in zip(tokens, self.letters, strict=True)])


def gc3(codons: np.ndarray) -> float:
    third = np.array([c[2] in "GC" for c in CODONS])
    return float(third[codons.astype(np.int64) - CODON_OFFSET].mean()) if codons.size else 0.0


def sample_positions(ctx: AnalysisContext, genes: list[np.ndarray], genome: np.ndarray) -> ProbeSet:
    """Seeded positions per gene (codons the model sees within its window) and every task's label."""
    rng = np.random.default_rng([ctx.seed, 3])
    window = ctx.cfg.model.block_size - ctx.host_shift  # the input is the first block_size tokens
    gene_idx, pos = [], []
    for i, g in enumerate(genes):
        visible = np.arange(1, min(len(g) - 2, window - 1) + 1)
        take = rng.choice(visible, size=min(POSITIONS_PER_GENE, visible.size), replace=False)
        gene_idx += [i] * take.size
        pos += sorted(take.tolist())
    gene_idx, pos = np.array(gene_idx), np.array(pos)

    test_genes = np.zeros(len(genes), dtype=bool)
    for d in np.unique(genome):
        members = rng.permutation(np.flatnonzero(genome == d))
        test_genes[members[: max(1, round(TEST_FRACTION * members.size))]] = True

    aa = {d: genetic_code(ctx.table_id(ctx.split("test").dataset_names[d])).aa for d in np.unique(genome)}
    cur = np.array([genes[i][t] for i, t in zip(gene_idx, pos, strict=True)])
    nxt = np.array([genes[i][t + 1] for i, t in zip(gene_idx, pos, strict=True)])
    lengths = np.array([len(g) - 2 for g in genes])
    gc = np.array([gc3(g[1:-1]) for g in genes])
    edges = np.quantile(gc, np.linspace(0, 1, GC3_BINS + 1)[1:-1])
    raw = {
        "current_aa": np.array([aa[genome[i]][c] for i, c in zip(gene_idx, cur, strict=True)]),
        "next_aa": np.array([ord("$") if c == EOS else aa[genome[i]][c] for i, c in zip(gene_idx, nxt, strict=True)]),
        "genome": genome[gene_idx],
        "relative_position": np.minimum((pos - 1) * POSITION_BINS // lengths[gene_idx], POSITION_BINS - 1),
        "gc3": np.digitize(gc, edges)[gene_idx],
    }
    labels = {task: np.unique(v, return_inverse=True)[1] for task, v in raw.items()}
    return ProbeSet(gene=gene_idx, position=pos, labels=labels, is_test=test_genes[gene_idx],
                    next_letter=raw["next_aa"], letters=[aa[genome[i]] for i in gene_idx])


def residual_features(ctx: AnalysisContext, model, genes: list[np.ndarray], probes: ProbeSet,
                      label: str) -> tuple[np.ndarray, np.ndarray]:
    """The residual stream at every sampled position, [layers, positions, d_model] float32, and the
    model's own top-1 next token there (its lm_head is a linear read-out too: the reference for next_aa).
    `genes` as the model reads them (`ctx.model_genes`): codon k at token k + ctx.host_shift."""
    names = layer_names(ctx.cfg.model.n_layer)
    feats = np.zeros((len(names), probes.gene.size, ctx.cfg.model.n_embd), dtype=np.float32)
    predicted = np.zeros(probes.gene.size, dtype=np.int64)
    rows_of = {i: np.flatnonzero(probes.gene == i) for i in range(len(genes))}
    for chunk, idx in ctx.gene_batches(genes, BATCH, desc=f"{NAME} ({label})"):
        logits, cache = model.run_with_cache(idx[:, :-1], names_filter=names)
        stacked = np.stack([cache[n].float().cpu().numpy() for n in names])  # [L, B, T, d]
        top = logits[..., :VOCAB_SIZE].argmax(-1).cpu().numpy()  # host tokens never come next
        for row, g in enumerate(chunk):
            rows = rows_of[g]
            at = probes.position[rows] + ctx.host_shift
            feats[:, rows] = stacked[:, row, at]
            predicted[rows] = top[row, at]
    return feats, predicted


def shuffled_labels(probes: ProbeSet, task: str, seed: int) -> np.ndarray:
    """The control task's labels: probe-train labels permuted (seeded), held-out labels kept true."""
    rng = np.random.default_rng([seed, 4, list(TASKS).index(task)])
    y = probes.labels[task].copy()
    train = np.flatnonzero(~probes.is_test)
    y[train] = rng.permutation(y[train])
    return y


def probe_accuracy(x: np.ndarray, y: np.ndarray, is_test: np.ndarray, seed: int) -> float:
    """Accuracy on probe-test genes of a logistic regression fitted on the probe-train genes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    train = ~is_test
    C = 1.0 / (L2 * int(train.sum()))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER, tol=TOL, random_state=seed))
    # one BLAS thread: these small fits run ~10x slower when threads fight over a busy machine's cores
    with threadpool_limits(1):
        probe.fit(x[train], y[train])
        return float(probe.score(x[is_test], y[is_test]))


def not_applicable(probes: ProbeSet, task: str) -> str | None:
    """Why the task's probe accuracy would mean nothing on this sample, or None when it is applicable."""
    y = probes.labels[task]
    classes = np.unique(y)
    if classes.size < 2:
        return "only one genome in the run" if task == "genome" else "every sampled position has the same class"
    for split, members in (("probe-train", ~probes.is_test), ("probe-test", probes.is_test)):
        if np.unique(y[members]).size < 2:
            return f"the {split} genes hold one class only"
        if task in GENE_LEVEL_TASKS:
            missing = sum(not (members & (y == c)).any() for c in classes)
            if missing:
                verb = "has" if missing == 1 else "have"
                return (f"too few genes: {missing} of the {classes.size} classes {verb} no {split} gene "
                        f"({np.unique(probes.gene[members]).size} {split} genes in all)")
    return None


def majority(y: np.ndarray, is_test: np.ndarray) -> float:
    top = np.bincount(y[~is_test]).argmax()
    return float((y[is_test] == top).mean())


def _plot(table: pd.DataFrame, path, own_next_aa: float, skipped: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(3.3 * len(TASKS), 3.6), sharey=True)
    styles = {"trained": ("tab:blue", "-", "o"), "control_task": ("tab:purple", ":", "s"),
              "random_init": ("tab:grey", "--", "x")}
    for ax, task in zip(axes, TASKS, strict=True):
        ax.set_title(TASKS[task], fontsize=9)
        ax.set_xlabel("layer (0 = embedding)")
        ax.set_ylim(0, 1.02)
        if task in skipped:
            ax.text(0.5, 0.5, "not applicable:\n" + textwrap.fill(skipped[task], 28), ha="center", va="center",
                    fontsize=8, transform=ax.transAxes)
            ax.set_xticks([])
            continue
        part = table[table.task == task]
        for model, (color, ls, marker) in styles.items():
            rows = part[part.model == model]
            label = {"control_task": "control task (shuffled labels)"}.get(model, model.replace("_", " "))
            ax.plot(rows.layer, rows.accuracy, color=color, ls=ls, marker=marker, label=label)
        ax.axhline(part.majority.iloc[0], color="k", lw=0.8, ls="-.", label="majority class")
        if task == "next_aa":
            ax.axhline(own_next_aa, color="tab:green", lw=1.0, ls="--", label="trained model's own prediction")
        ax.set_xticks(sorted(part.layer.unique()))
    axes[0].set_ylabel("probe accuracy on held-out genes")
    handles, labels = axes[list(TASKS).index("next_aa")].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle("Linear probes on the residual stream: what each layer makes linearly readable")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, path)


def run(ctx: AnalysisContext) -> dict:
    out = ctx.out_dir(NAME)
    test = ctx.split("test")
    picked = ctx.sample_genes("test", GENES_PER_GENOME, salt=3)
    genes = [test.genes[g] for g in picked]
    genome = test.groups[picked].astype(np.int64)
    probes = sample_positions(ctx, genes, genome)
    from codonlm.analysis.runner import StepNotRun

    if probes.is_test.all() or not probes.is_test.any():
        raise StepNotRun(f"too few held-out genes ({len(genes)}) to split into probe-train and probe-test genes")
    skipped = {task: why for task in TASKS if (why := not_applicable(probes, task)) is not None}
    if len(skipped) == len(TASKS):
        raise StepNotRun("no probe task applies to this sample: " + "; ".join(f"{t}: {w}" for t, w in skipped.items()))
    features, own_next_aa = {}, {}
    model_genes = ctx.model_genes("test", picked)
    for label, m in ctx.models().items():
        features[label], predicted = residual_features(ctx, m, model_genes, probes, label)
        hit = probes.letter_of(predicted) == probes.next_letter
        own_next_aa[label] = float(hit[probes.is_test].mean())
    names = layer_names(ctx.cfg.model.n_layer)
    rows = []
    fits = [(task, layer) for task in TASKS if task not in skipped for layer in range(len(names))]
    for task, layer in ctx.progress(fits, desc=f"{NAME} (probes)", unit="layer"):
        y = probes.labels[task]
        base = majority(y, probes.is_test)
        runs = [("trained", features["trained"], y), ("random_init", features["random_init"], y),
                ("control_task", features["trained"], shuffled_labels(probes, task, ctx.seed))]
        for model, feats, labels in runs:
            rows.append({"task": task, "layer": layer, "hook": names[layer], "model": model,
                         "accuracy": probe_accuracy(feats[layer], labels, probes.is_test, ctx.seed),
                         "majority": base, "classes": int(np.unique(y).size)})
    table = pd.DataFrame(rows)
    write_csv(table, out / "accuracy_by_layer.csv")
    _plot(table, out / "accuracy_by_layer.png", own_next_aa["trained"], skipped)
    return _headline(table, probes, len(genes), own_next_aa, skipped)


def _headline(table: pd.DataFrame, probes: ProbeSet, n_genes: int, own_next_aa: dict[str, float],
              skipped: dict[str, str]) -> dict:
    wide = table.pivot_table(index=["task", "layer"], columns="model", values="accuracy")
    by_layer, best, selectivity, chance = {}, {}, {}, {}
    fitted = [task for task in TASKS if task not in skipped]
    for task in fitted:
        w = wide.loc[task]
        by_layer[task] = {m: [round(float(v), 4) for v in w[m]] for m in ("trained", "random_init", "control_task")}
        layer = int(w["trained"].idxmax())
        best[task] = {"trained": float(w["trained"].max()), "random_init": float(w["random_init"].max()),
                      "trained_layer": layer}
        selectivity[task] = {"trained": float(w.loc[layer, "trained"] - w.loc[layer, "control_task"])}
        chance[task] = float(table[table.task == task].majority.iloc[0])
    short = {"current_aa": "current aa", "next_aa": "next aa", "genome": "genome", "relative_position": "position",
             "gc3": "GC3"}
    reading = "best-layer probe accuracy, trained vs random init (majority class): " + "; ".join(
        f"{short[t]} {best[t]['trained']:.2f} vs {best[t]['random_init']:.2f} ({chance[t]:.2f})" if t in best
        else f"{short[t]} not applicable ({skipped[t]})" for t in TASKS)
    reading += f"; the trained model's own next-aa prediction {own_next_aa['trained']:.2f}"
    return {"reading": reading, "genes": n_genes, "positions": int(probes.gene.size),
            "probe_test_positions": int(probes.is_test.sum()), "best_layer_accuracy": best,
            "selectivity_at_best_layer": selectivity, "majority_class": chance, "accuracy_by_layer": by_layer,
            "model_own_next_aa_accuracy": own_next_aa, "not_applicable": skipped}
