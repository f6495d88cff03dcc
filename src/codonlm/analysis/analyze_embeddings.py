"""Step 4: codon embedding geometry. Do synonymous codons sit together in the model's codon vectors?

The 64 codon rows of `wte` (tied with lm_head, so input and output embeddings are the same
vectors) of the trained model against the random-init twin and against shuffled amino-acid labels:
1-NN and 5-NN synonymous purity (cosine), silhouette by amino acid, mean cosine of synonymous vs
non-synonymous pairs; PCA (UMAP too when umap-learn is installed) coloured by amino acid; a 64x64
cosine-similarity heatmap ordered by the genetic code.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from codonlm.analysis.context import AnalysisContext
from codonlm.data.codons import CODON_OFFSET, CODONS, VOCAB_SIZE, genetic_code
from codonlm.io import save_figure, write_csv
from codonlm.log import log

NAME = "analyze_embeddings"
N_SHUFFLES = 200
# Amino acids by side-chain class, then stop: the order of the heatmap's blocks.
AA_ORDER = "GAVLIPFMW" + "STCYNQ" + "DEKRH" + "*"


def run(ctx: AnalysisContext) -> dict:
    out = ctx.out_dir(NAME)
    table = run_table(ctx)
    aa = codon_amino_acids(table)
    vectors = {label: model.wte.weight.detach()[CODON_OFFSET:VOCAB_SIZE].float().cpu().numpy()  # not host rows
               for label, model in ctx.models().items()}
    rng = np.random.default_rng([ctx.seed, 4])
    result: dict = {"genetic_code": table, "n_codons": len(CODONS)}
    for label, emb in vectors.items():
        result[label] = geometry(emb, aa)
    result["shuffled_labels"] = shuffled_control(vectors["trained"], aa, rng)
    result["chance_1nn_purity"] = chance_purity(aa)
    result["umap"] = "drawn" if draw_umap(vectors, aa, out) else "skipped (umap-learn not installed)"

    write_csv(codon_table(vectors, aa), out / "codon_embeddings.csv")
    order = genetic_code_order(aa)
    sim = cosine_matrix(vectors["trained"])[np.ix_(order, order)]
    labels = [f"{CODONS[i]} {aa[i]}" for i in order]
    write_csv(pd.DataFrame(sim, columns=labels).assign(codon=labels)[["codon", *labels]], out / "cosine_similarity.csv")
    draw_pca(vectors, aa, out)
    draw_heatmap({k: cosine_matrix(v)[np.ix_(order, order)] for k, v in vectors.items()}, aa[order], labels, out)

    t, r = result["trained"], result["random_init"]
    result["reading"] = (
        f"1-NN synonymous purity {t['nn1_purity']:.2f} (random init {r['nn1_purity']:.2f}, shuffled labels "
        f"{result['shuffled_labels']['nn1_purity_mean']:.2f}); silhouette by amino acid {t['silhouette']:.2f} "
        f"(random init {r['silhouette']:.2f})")
    log(f"[{NAME}] {result['reading']}")
    return result


def run_table(ctx: AnalysisContext) -> int:
    """The genetic code most of the run's datasets use (the embedding is shared by all of them)."""
    tables = Counter(ctx.table_id(d.name) for d in ctx.cfg.data.datasets)
    return tables.most_common(1)[0][0]


def codon_amino_acids(table_id: int) -> np.ndarray:
    """One-letter amino acid ('*' for stop) of each of the 64 codons, in token order."""
    code = genetic_code(table_id)
    return np.array([chr(code.aa[CODON_OFFSET + i]) for i in range(len(CODONS))])


def cosine_matrix(emb: np.ndarray) -> np.ndarray:
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    return unit @ unit.T


def knn_purity(sim: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean share of each codon's k nearest other codons (cosine) that code the same amino acid."""
    s = sim.copy()
    np.fill_diagonal(s, -np.inf)
    nearest = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def geometry(emb: np.ndarray, aa: np.ndarray) -> dict:
    from sklearn.metrics import silhouette_score

    sim = cosine_matrix(emb)
    same = aa[:, None] == aa[None, :]
    off_diag = ~np.eye(len(aa), dtype=bool)
    return {
        "nn1_purity": knn_purity(sim, aa, 1),
        "nn5_purity": knn_purity(sim, aa, 5),
        "silhouette": float(silhouette_score(emb, aa, metric="cosine")),
        "mean_cos_synonymous": float(sim[same & off_diag].mean()),
        "mean_cos_nonsynonymous": float(sim[~same].mean()),
        "mean_norm": float(np.linalg.norm(emb, axis=1).mean()),
    }


def shuffled_control(emb: np.ndarray, aa: np.ndarray, rng: np.random.Generator) -> dict:
    """The trained vectors with amino-acid labels permuted across codons (same family sizes)."""
    from sklearn.metrics import silhouette_score

    sim = cosine_matrix(emb)
    nn1, sil = [], []
    for _ in range(N_SHUFFLES):
        perm = rng.permutation(aa)
        nn1.append(knn_purity(sim, perm, 1))
        if len(sil) < 20:  # silhouette is the slow one; 20 permutations pin its mean well enough
            sil.append(silhouette_score(emb, perm, metric="cosine"))
    return {"n_permutations": N_SHUFFLES, "nn1_purity_mean": float(np.mean(nn1)),
            "nn1_purity_p95": float(np.quantile(nn1, 0.95)), "silhouette_mean": float(np.mean(sil))}


def chance_purity(aa: np.ndarray) -> float:
    """Expected 1-NN purity when the nearest codon is any other codon at random."""
    sizes = Counter(aa.tolist())
    return float(sum(sizes[a] - 1 for a in aa) / (len(aa) * (len(aa) - 1)))


def genetic_code_order(aa: np.ndarray) -> list[int]:
    """Codon indices grouped by amino acid (AA_ORDER), alphabetical within a group."""
    rank = {a: i for i, a in enumerate(AA_ORDER)}
    return sorted(range(len(aa)), key=lambda i: (rank.get(aa[i], len(rank)), CODONS[i]))


def codon_table(vectors: dict[str, np.ndarray], aa: np.ndarray) -> pd.DataFrame:
    """Per codon and model: 2-D PCA coordinates and the nearest other codon."""
    from sklearn.decomposition import PCA

    table = pd.DataFrame({"codon": CODONS, "amino_acid": aa})
    for label, emb in vectors.items():
        xy = PCA(n_components=2, random_state=0).fit_transform(emb)
        sim = cosine_matrix(emb)
        np.fill_diagonal(sim, -np.inf)
        nearest = sim.argmax(axis=1)
        table[f"{label}_pc1"], table[f"{label}_pc2"] = xy[:, 0], xy[:, 1]
        table[f"{label}_nearest"] = [CODONS[j] for j in nearest]
        table[f"{label}_nearest_cos"] = sim[np.arange(len(aa)), nearest]
        table[f"{label}_nearest_synonymous"] = aa[nearest] == aa
    return table


def aa_colours(aa: np.ndarray) -> dict[str, tuple]:
    import matplotlib.pyplot as plt

    palette = [*plt.get_cmap("tab20").colors, (0, 0, 0)]
    present = [a for a in AA_ORDER if a in set(aa)]
    return {a: palette[i % len(palette)] for i, a in enumerate(present)}


def draw_pca(vectors: dict[str, np.ndarray], aa: np.ndarray, out) -> None:
    from sklearn.decomposition import PCA

    scatter_2d({k: (PCA(n_components=2, random_state=0).fit(v), v) for k, v in vectors.items()}, aa,
               "PCA", out / "pca.png")


def scatter_2d(fits: dict, aa: np.ndarray, method: str, path) -> None:
    """One panel per model: the 64 codons in 2-D, coloured by amino acid, each labelled."""
    import matplotlib.pyplot as plt

    colours = aa_colours(aa)
    fig, axes = plt.subplots(1, len(fits), figsize=(7 * len(fits), 6.5))
    for ax, (label, (fit, emb)) in zip(np.atleast_1d(axes), fits.items(), strict=True):
        xy = fit.transform(emb) if hasattr(fit, "transform") else fit
        for a, colour in colours.items():
            sel = aa == a
            ax.scatter(xy[sel, 0], xy[sel, 1], color=colour, s=40, label=a, edgecolor="white", linewidth=0.5)
        for i, codon in enumerate(CODONS):
            ax.annotate(f"{codon}", xy[i], fontsize=6, xytext=(2, 2), textcoords="offset points")
        if hasattr(fit, "explained_variance_ratio_"):
            ev = fit.explained_variance_ratio_
            ax.set_xlabel(f"PC 1 ({ev[0]:.0%} of variance)")
            ax.set_ylabel(f"PC 2 ({ev[1]:.0%} of variance)")
        else:
            ax.set_xlabel(f"{method} 1")
            ax.set_ylabel(f"{method} 2")
        ax.set_title(f"{label.replace('_', ' ')} model")
    np.atleast_1d(axes)[-1].legend(title="amino acid", bbox_to_anchor=(1.02, 1), loc="upper left", ncol=1,
                                   fontsize=8)
    fig.suptitle(f"Codon input embeddings (tied with the output layer), {method} of the 64 codon vectors")
    save_figure(fig, path)


def draw_umap(vectors: dict[str, np.ndarray], aa: np.ndarray, out) -> bool:
    """UMAP panels when umap-learn is importable; False (nothing drawn) otherwise."""
    try:
        import umap
    except ImportError:
        return False
    fits = {k: (umap.UMAP(n_neighbors=8, random_state=0, metric="cosine").fit_transform(v), v)
            for k, v in vectors.items()}
    scatter_2d(fits, aa, "UMAP", out / "umap.png")
    return True


def draw_heatmap(sims: dict[str, np.ndarray], aa_sorted: np.ndarray, labels: list[str], out) -> None:
    """Cosine similarity of every codon pair, codons grouped by amino acid; lines between groups.
    The trained panel names every codon; the control panel names the amino-acid blocks."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sims), figsize=(9.5 * len(sims), 9), squeeze=False, layout="constrained")
    bounds = [i for i in range(1, len(aa_sorted)) if aa_sorted[i] != aa_sorted[i - 1]]
    edges = [0, *bounds, len(aa_sorted)]
    centres = [(a + b - 1) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    # the diagonal (1 by definition) is left grey, so the colour scale spans the codon pairs
    off = {k: np.where(np.eye(len(v), dtype=bool), np.nan, v) for k, v in sims.items()}
    bound = max(float(np.nanmax(np.abs(v))) for v in off.values())
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")
    for panel, (ax, (label, sim)) in enumerate(zip(axes[0], off.items(), strict=True)):
        image = ax.imshow(sim, cmap=cmap, vmin=-bound, vmax=bound, interpolation="nearest")
        for b in bounds:
            ax.axhline(b - 0.5, color="black", linewidth=0.4)
            ax.axvline(b - 0.5, color="black", linewidth=0.4)
        if panel == 0:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5.5, family="monospace")
            ax.set_yticks(range(len(labels)), labels, fontsize=5.5, family="monospace")
            ax.set_xlabel("codon and its amino acid")
            ax.set_ylabel("codon and its amino acid")
        else:
            blocks = [aa_sorted[a] for a in edges[:-1]]
            ax.set_xticks(centres, blocks, fontsize=8)
            ax.set_yticks(centres, blocks, fontsize=8)
            ax.set_xlabel("amino acid block (same codon order)")
            ax.set_ylabel("amino acid block (same codon order)")
        ax.set_title(f"{label.replace('_', ' ')} model")
    fig.colorbar(image, ax=axes[0], fraction=0.025, pad=0.02, label="cosine similarity (diagonal grey)")
    fig.suptitle("Cosine similarity of codon embeddings, ordered by the genetic code "
                 "(blocks on the diagonal = synonymous codons)")
    save_figure(fig, out / "cosine_heatmap.png")
