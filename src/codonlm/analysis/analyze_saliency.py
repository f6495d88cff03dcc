"""Step 6: which codons a prediction rests on, and the codon motifs found where saliency is high.

For a seeded draw of held-out (val) genes, two predictions per gene: the stop codon (from the codons
before it) and <EOS_CDS> (from the stop codon and everything before). Attributions to each input
codon's embedding vector with Captum: integrated gradients (`IntegratedGradients`, baseline every
codon replaced by the mean codon embedding, <BOS_CDS> kept; see `attributions`) and gradient x
input (`InputXGradient`), summed over the embedding dimension. The model sees the last `2 * saliency_window` codons before
the predicted token (the whole gene when shorter). From these: saliency by distance (within
`saliency_window` codons), the top `saliency_top` positions per gene, and the codon k-mers
(k = 1..3, ending at a top position) enriched there against all positions of the same contexts
(hypergeometric test), drawn as sequence logos: the "motifs" of analysis.sh. Controls: the
random-init model, and top positions drawn at random (shuffled positions).

A k-mer is reported as a learned motif only when it also beats the random-init model on the same
occurrences (MOTIF_TEST: a paired sign test, `against_random_init`): the stop codon before <EOS_CDS>
is top for any model, trained or not, so its enrichment alone says nothing about training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from codonlm.analysis.batching import pad_pieces
from codonlm.analysis.context import AnalysisContext, is_codon
from codonlm.data.codons import BOS, CODON_OFFSET, CODONS, EOS, HOST_OFFSET, VOCAB_SIZE, genetic_code
from codonlm.io import save_figure, write_csv
from codonlm.log import log, progress
from codonlm.model.tinygpt import TinyGPT

NAME = "analyze_saliency"
GENES_PER_DATASET = 3
IG_STEPS, IG_STEPS_FINE = 16, 64  # Gauss-Legendre nodes: first pass, and rows it did not resolve
GAP_TOLERANCE = 0.05  # IG completeness gap, relative to the prediction's change from the baseline
ROWS_PER_PASS = 256  # rows (gene x prediction x IG step) per forward/backward pass
MAX_K = 3  # codon k-mers 1..MAX_K
MIN_COUNT = 5  # a k-mer seen fewer times at top positions is not ranked
ALPHA = 0.05  # on Bonferroni-adjusted p: a significant k-mer
N_SHUFFLES = 20
PREDICTIONS = ("stop_codon", "eos")  # predicted from the last sense codon / from the stop codon
MOTIF_TEST = (
    "a k-mer is a learned motif when it is significant for the trained model (top positions vs all positions, "
    "one-sided hypergeometric, Bonferroni over the k-mers, alpha 0.05) and the trained model's saliency picks out "
    "its occurrences more often than the random-init model's on the same contexts: exact one-sided sign test "
    "(McNemar) on the occurrences at a top position of one model only, Bonferroni over the trained model's "
    "significant k-mers, alpha 0.05")


def run(ctx: AnalysisContext) -> dict:
    out = ctx.out_dir(NAME)
    window, top = ctx.cfg.outputs.saliency_window, ctx.cfg.outputs.saliency_top
    genes = ctx.split("val")
    picked = ctx.sample_genes("val", GENES_PER_DATASET, salt=6)
    contexts = Contexts.build(ctx.model_genes("val", picked), min(2 * window, ctx.cfg.model.block_size))
    tables, result = [], {}
    for label, model in progress(ctx.models().items(), desc=NAME, unit="model", disable=ctx.quiet):
        attr = attributions(model, contexts, ctx.device)
        tables.append(position_table(contexts, attr, picked, genes, ctx).assign(model=label))
        result[label] = {"ig_completeness_gap": attr["gap"],
                         "mean_probability": {p: float(np.exp(attr["logp"][contexts.kind == p]).mean())
                                              for p in PREDICTIONS}}
    positions = pd.concat(tables, ignore_index=True)
    positions["top"] = top_positions(positions, top)
    by_distance = distance_profile(positions, window)
    tables = kmer_tables(positions)
    motifs = against_random_init(enriched_kmers(tables, positions.top), tables, positions)
    shuffled = shuffled_control(positions, tables, np.random.default_rng([ctx.seed, 6]))
    write_csv(by_distance, out / "saliency_by_distance.csv")
    write_csv(positions[positions.top].drop(columns="top"), out / "top_positions.csv")
    write_csv(motifs, out / "motifs.csv")
    draw_distance(by_distance, window, out)
    draw_logos(positions, tables[-1], motifs, out)

    for label in ("trained", "random_init"):
        result[label].update(model_numbers(positions[positions.model == label], by_distance, motifs, label, window))
    result.update({"split": "val", "n_genes": len(picked), "genes_per_dataset": GENES_PER_DATASET,
                   "context_codons": contexts.length, "saliency_window": window, "saliency_top": top,
                   "ig_steps": [IG_STEPS, IG_STEPS_FINE], "ig_gap_tolerance": GAP_TOLERANCE,
                   "baseline": "the mean codon embedding at every codon, <BOS_CDS> kept",
                   "shuffled_positions": shuffled, "motif_test": MOTIF_TEST})
    learned = motifs[(motifs.model == "trained") & motifs.learned]
    result.update({"n_learned_kmers": len(learned), "learned_motif": motif_entry(learned),
                   "top_motif": result["trained"]["top_motif"]})
    result["reading"] = reading(result, set(positions.codon[positions.amino_acid == "*"]))
    log(f"[{NAME}] {result['reading']}")
    return result


class Contexts:
    """One row per (gene, prediction): the input tokens before the predicted token (at most
    `length`, the gene's tail), where the prediction is read, and what it should be."""

    def __init__(self, pieces, starts, at, target, gene, kind, length):
        self.pieces, self.starts, self.length = pieces, starts, length
        self.at, self.target = np.array(at), np.array(target)
        self.gene, self.kind = np.array(gene), np.array(kind)

    @classmethod
    def build(cls, genes: list[np.ndarray], length: int) -> Contexts:
        rows: dict[str, list] = {k: [] for k in ("pieces", "starts", "at", "target", "gene", "kind")}
        for g, tokens in enumerate(genes):
            inputs = tokens[:-1]  # <BOS_CDS> c1 .. stop: predicts <EOS_CDS> at its last position
            start = max(0, inputs.size - length)
            piece = inputs[start:]
            for kind, back, target in (("stop_codon", 2, tokens[-2]), ("eos", 1, EOS)):
                rows["pieces"].append(piece)
                rows["starts"].append(start)
                rows["at"].append(piece.size - back)
                rows["target"].append(int(target))
                rows["gene"].append(g)
                rows["kind"].append(kind)
        return cls(**rows, length=length)

    def __len__(self) -> int:
        return len(self.pieces)


class CodonScore:
    """log p(target at row's position) as a function of the input embeddings, for Captum: the
    embedding layer's output is replaced by the given vectors (so attributions land on each
    position's codon vector, and the baseline can be a vector no token has)."""

    def __init__(self, model: TinyGPT):
        self.model = model

    def __call__(self, embeddings: Tensor, tokens: Tensor, segment_ids: Tensor, positions: Tensor, at: Tensor,
                 target: Tensor) -> Tensor:
        logits = self.model.run_with_hooks(tokens, [("hook_embed", lambda _x, _hook: embeddings)],
                                           segment_ids=segment_ids, positions=positions)
        return logits.float().log_softmax(-1)[torch.arange(tokens.shape[0]), at, target]


def attributions(model: TinyGPT, contexts: Contexts, device) -> dict:
    """Integrated gradients and gradient x input per input position ([rows, width], 0 past the
    prediction), the log-probability of each predicted token, and IG's completeness gaps.

    Baseline: every codon replaced by the mean codon embedding ("some codon here"), <BOS_CDS> (and a host
    token) kept.
    IG runs IG_STEPS Gauss-Legendre nodes; rows whose gap |sum(IG) - (f(x) - f(baseline))| exceeds
    GAP_TOLERANCE of |f(x) - f(baseline)| run again with IG_STEPS_FINE (a confident <EOS_CDS> turns
    on sharply as the stop codon fades in, which a coarse path misses).
    """
    from captum.attr import InputXGradient, IntegratedGradients

    idx, seg, pos, _ = pad_pieces(contexts.pieces, contexts.starts, device)
    at = torch.as_tensor(contexts.at, device=idx.device)
    target = torch.as_tensor(contexts.target, device=idx.device)
    table = model.wte.weight.detach()
    emb = table[idx]
    baseline = torch.where(is_codon(idx)[..., None], table[CODON_OFFSET:VOCAB_SIZE].mean(0), emb)
    score = CodonScore(model)
    extra = (idx, seg, pos, at, target)
    with torch.no_grad():
        change = (score(emb, *extra) - score(baseline, *extra)).abs().clamp(min=1e-6)
    ig, gap = integrated_gradients(IntegratedGradients(score), emb, baseline, extra, IG_STEPS)
    relative = gap.abs() / change
    coarse = relative > GAP_TOLERANCE
    if coarse.any():
        rows = coarse.nonzero().squeeze(1)
        ig[rows], gap[rows] = integrated_gradients(IntegratedGradients(score), emb[rows], baseline[rows],
                                                   tuple(a[rows] for a in extra), IG_STEPS_FINE)
        relative = gap.abs() / change
    gxi = InputXGradient(score).attribute(emb.clone().requires_grad_(True), additional_forward_args=extra)
    with torch.no_grad():
        logp = score(emb, *extra)
    inside = torch.arange(idx.shape[1], device=idx.device)[None, :] <= at[:, None]
    as_np = lambda a: (a.sum(-1) * inside).detach().cpu().numpy()  # noqa: E731
    gaps = {"median": float(relative.median()), "max": float(relative.max()),
            "rows_refined": int(coarse.sum()), "rows_over_tolerance": int((relative > GAP_TOLERANCE).sum())}
    return {"ig": as_np(ig), "gxi": as_np(gxi), "logp": logp.cpu().numpy(), "gap": gaps}


def integrated_gradients(method, emb: Tensor, baseline: Tensor, extra: tuple, steps: int) -> tuple[Tensor, Tensor]:
    return method.attribute(emb, baselines=baseline, additional_forward_args=extra, n_steps=steps,
                            internal_batch_size=max(emb.shape[0], ROWS_PER_PASS), return_convergence_delta=True)


def position_table(contexts: Contexts, attr: dict, picked: list[int], genes, ctx: AnalysisContext) -> pd.DataFrame:
    """One row per (gene, prediction, input codon at or before the prediction), and <BOS_CDS>; a host
    token (the context of every codon, never a codon itself) has no row."""
    frames = []
    for r in range(len(contexts)):
        piece, at, g = contexts.pieces[r], int(contexts.at[r]), picked[int(contexts.gene[r])]
        tokens = piece[: at + 1].astype(int)
        j = np.flatnonzero(tokens < HOST_OFFSET)
        code = genetic_code(ctx.table_id(genes.dataset_names[genes.groups[g]]))
        frames.append(pd.DataFrame({
            "gene": genes.names[g], "dataset": genes.dataset_names[genes.groups[g]],
            "prediction": contexts.kind[r], "row": r, "index": j, "distance": at - j,
            "codon_number": np.where(tokens[j] == BOS, 0, contexts.starts[r] + j - ctx.host_shift),  # start codon 1
            "token": tokens[j],
            "amino_acid": [chr(code.aa[t]) if t >= CODON_OFFSET else "" for t in tokens[j]],
            "ig": attr["ig"][r, j], "grad_x_input": attr["gxi"][r, j],
        }))
    table = pd.concat(frames, ignore_index=True)
    table["codon"] = [CODONS[t - CODON_OFFSET] if t >= CODON_OFFSET else "<BOS_CDS>" for t in table.token]
    return table


def top_positions(positions: pd.DataFrame, top: int) -> np.ndarray:
    """True for the `top` codons of largest |IG| in each (model, row)."""
    at_codon = positions.token >= CODON_OFFSET
    rank = positions.ig.abs().where(at_codon, -1.0).groupby([positions.model, positions.row]).rank(
        ascending=False, method="first")
    return ((rank <= top) & at_codon).to_numpy()


def distance_profile(positions: pd.DataFrame, window: int) -> pd.DataFrame:
    """Mean share of a prediction's total |attribution| on the codon `distance` back (0 = the input
    codon the prediction is read at), per model, prediction and method."""
    frames = []
    for method in ("ig", "grad_x_input"):
        share = positions[method].abs() / positions.groupby(["model", "row"])[method].transform(lambda a: a.abs().sum())
        table = positions.assign(share=share.fillna(0.0))
        table = table[table.distance < window]
        n_rows = positions.groupby(["model", "prediction"]).row.nunique()
        sums = table.groupby(["model", "prediction", "distance"]).share.sum().reset_index()
        sums["share"] /= [n_rows[(m, p)] for m, p in zip(sums.model, sums.prediction, strict=True)]
        frames.append(sums.assign(method=method))
    return pd.concat(frames, ignore_index=True)[["model", "prediction", "method", "distance", "share"]]


def kmers(positions: pd.DataFrame, k: int) -> pd.DataFrame:
    """The codon k-mer ending at each codon position (k codons, all inside the context); the
    index is the position's row in `positions`."""
    parts, ok = [], (positions.token >= CODON_OFFSET).to_numpy().copy()
    for back in range(k - 1, -1, -1):
        shifted = positions.groupby(["model", "row"]).codon.shift(back)
        ok &= shifted.notna().to_numpy() & (shifted != "<BOS_CDS>").to_numpy()
        parts.append(shifted.fillna("").to_numpy())
    mers = ["-".join(p) for p in zip(*parts, strict=True)]
    return positions[["model", "prediction"]].assign(kmer=mers, k=k)[ok]


def kmer_tables(positions: pd.DataFrame) -> list[pd.DataFrame]:
    return [kmers(positions, k) for k in range(1, MAX_K + 1)]


def enrichment(kmer: np.ndarray, top: np.ndarray) -> pd.DataFrame:
    """Per k-mer: count at top positions vs all positions, log2 enrichment, one-sided hypergeometric
    p, and p_adjusted (Bonferroni over every distinct k-mer seen)."""
    from scipy.stats import hypergeom

    n_all, n_top = len(kmer), int(top.sum())
    counts = pd.DataFrame({"kmer": kmer, "top": top}).groupby("kmer").top.agg(["sum", "size"])
    counts = counts.rename(columns={"sum": "count_top", "size": "count_all"}).reset_index()
    counts["log2_enrichment"] = np.log2(((counts.count_top + 0.5) / (n_top + 0.5)) /
                                        ((counts.count_all + 0.5) / (n_all + 0.5)))
    counts["p_value"] = hypergeom.sf(counts.count_top - 1, n_all, counts.count_all, n_top)
    counts["p_adjusted"] = (counts.p_value * len(counts)).clip(upper=1.0)
    counts["n_top"], counts["n_all"] = n_top, n_all
    return counts


def enriched_kmers(tables: list[pd.DataFrame], top: pd.Series) -> pd.DataFrame:
    """motifs.csv: per model, prediction and k, the k-mers seen at least MIN_COUNT times at top
    positions (`top`, aligned with the positions table); per model and prediction the significant
    ones (p_adjusted < ALPHA) first, most enriched first."""
    frames = []
    for table in tables:
        flags = top.loc[table.index].to_numpy()
        for (model, prediction), rows in table.groupby(["model", "prediction"]).indices.items():
            counts = enrichment(table.kmer.to_numpy()[rows], flags[rows])
            frames.append(counts[counts.count_top >= MIN_COUNT].assign(model=model, prediction=prediction,
                                                                        k=int(table.k.iloc[0])))
    motifs = pd.concat(frames, ignore_index=True)
    motifs["significant"] = motifs.p_adjusted < ALPHA
    motifs = motifs.sort_values(["model", "prediction", "significant", "log2_enrichment", "p_value"],
                                ascending=[True, True, False, False, True])
    return motifs[["model", "prediction", "k", "kmer", "count_top", "count_all", "n_top", "n_all",
                   "log2_enrichment", "p_value", "p_adjusted", "significant"]].reset_index(drop=True)


def against_random_init(motifs: pd.DataFrame, tables: list[pd.DataFrame], positions: pd.DataFrame) -> pd.DataFrame:
    """motifs.csv with, for the trained model's significant k-mers, the random-init model's saliency on the
    same occurrences (both models see the same contexts, so each occurrence is a pair): its count at top
    positions and fold, the occurrences top for the trained model only and for random init only, the
    one-sided sign-test p that the trained model picks the k-mer out more often (p_vs_random_init, and
    Bonferroni-adjusted over the k-mers tested), and `learned` (see MOTIF_TEST)."""
    from scipy.stats import binom

    frames = []
    for table in tables:
        pairs = table.assign(top=positions.top.loc[table.index], row=positions.row.loc[table.index],
                             at=positions["index"].loc[table.index])
        key = ["prediction", "row", "at"]
        both = pairs[pairs.model == "trained"].merge(pairs[pairs.model == "random_init"][[*key, "top"]], on=key,
                                                     suffixes=("", "_random_init"))
        n_top = both.groupby("prediction").top_random_init.transform("sum")
        frames.append(both.assign(n_top_random_init=n_top,
                                  only_trained=both.top & ~both.top_random_init,
                                  only_random_init=~both.top & both.top_random_init)
                      .groupby(["prediction", "k", "kmer"])
                      .agg(random_init_count_top=("top_random_init", "sum"), n_top_random_init=("n_top_random_init", "first"),
                           only_trained=("only_trained", "sum"), only_random_init=("only_random_init", "sum"))
                      .reset_index().assign(model="trained"))
    paired = motifs.merge(pd.concat(frames), on=["model", "prediction", "k", "kmer"], how="left")
    tested = (paired.model == "trained") & paired.significant
    paired["random_init_log2_enrichment"] = np.log2(((paired.random_init_count_top + 0.5) / (paired.n_top_random_init + 0.5))
                                                   / ((paired.count_all + 0.5) / (paired.n_all + 0.5)))
    b, c = paired.only_trained, paired.only_random_init
    paired["p_vs_random_init"] = binom.sf(b - 1, b + c, 0.5)  # P(at least b of the b + c discordant pairs)
    paired["p_vs_random_init_adjusted"] = (paired.p_vs_random_init * max(int(tested.sum()), 1)).clip(upper=1.0)
    paired.loc[~tested, ["p_vs_random_init", "p_vs_random_init_adjusted"]] = np.nan
    paired["learned"] = tested & (paired.p_vs_random_init_adjusted < ALPHA)
    return paired.drop(columns="n_top_random_init")


def shuffled_control(positions: pd.DataFrame, tables: list[pd.DataFrame], rng: np.random.Generator) -> dict:
    """The best k-mer enrichment when the 'top' positions are drawn at random among the codons of
    each context (trained model's rows, same number per row): what chance alone gives."""
    trained = positions.model == "trained"
    at_codon = positions.token >= CODON_OFFSET
    group = [positions.model, positions.row]
    n_top = positions.top.groupby(group).transform("sum")
    n_significant, best_p = [], []
    for _ in range(N_SHUFFLES):
        keys = pd.Series(rng.random(len(positions)), index=positions.index).where(at_codon)
        flags = (keys.groupby(group).rank(method="first") <= n_top) & at_codon & trained
        motifs = enriched_kmers([t[t.model == "trained"] for t in tables], flags)
        n_significant.append(int(motifs.significant.sum()))
        best_p.append(float(motifs.p_adjusted.min()) if len(motifs) else 1.0)
    return {"n_shuffles": N_SHUFFLES, "n_significant_kmers_mean": float(np.mean(n_significant)),
            "best_p_adjusted_median": float(np.median(best_p))}


def model_numbers(positions: pd.DataFrame, by_distance: pd.DataFrame, motifs: pd.DataFrame, label: str,
                  window: int) -> dict:
    """Headline numbers of one model: where the saliency sits, and its top motif."""
    ig = by_distance[(by_distance.model == label) & (by_distance.method == "ig")]
    numbers: dict = {}
    for p in PREDICTIONS:
        sub = ig[ig.prediction == p]
        numbers[p] = {"ig_share_at_distance_0": float(sub[sub.distance == 0].share.sum()),
                      "ig_share_within_3": float(sub[sub.distance < 3].share.sum()),
                      f"ig_share_within_{window}": float(sub.share.sum())}
    mine = motifs[(motifs.model == label) & motifs.significant]
    numbers["n_significant_kmers"] = len(mine)
    for p in PREDICTIONS:
        numbers[p]["top_motif"] = motif_entry(mine[mine.prediction == p])
    numbers["top_motif"] = motif_entry(mine)
    numbers["most_significant_motif"] = motif_entry(mine, by="p_value")
    numbers["n_positions"] = len(positions)
    return numbers


def motif_entry(motifs: pd.DataFrame, by: str = "log2_enrichment") -> dict | None:
    """The most enriched (or, by="p_value", the most significant) of these k-mers, or None."""
    if motifs.empty:
        return None
    order = ["log2_enrichment", "p_value", "count_top"] if by == "log2_enrichment" else ["p_value", "log2_enrichment"]
    best = motifs.sort_values(order, ascending=[c == "p_value" for c in order]).iloc[0]
    entry = {"prediction": best.prediction, "kmer": best.kmer, "k": int(best.k), "count_top": int(best.count_top),
             "count_all": int(best.count_all), "fold_enrichment": float(2 ** best.log2_enrichment),
             "p_adjusted": float(best.p_adjusted)}
    if best.model == "trained" and best.significant:  # compared with random init (against_random_init)
        entry.update({"random_init_count_top": int(best.random_init_count_top),
                      "random_init_fold_enrichment": float(2 ** best.random_init_log2_enrichment),
                      "p_vs_random_init_adjusted": float(best.p_vs_random_init_adjusted),
                      "learned": bool(best.learned)})
    return entry


def motif_text(motif: dict | None) -> str:
    if motif is None:
        return "none significant"
    return (f"{motif['kmer']} for {'<EOS_CDS>' if motif['prediction'] == 'eos' else 'the stop codon'} "
            f"({motif['fold_enrichment']:.1f}x at top positions, {motif['count_top']} of {motif['count_all']}, "
            f"adjusted p={motif['p_adjusted']:.1g})")


def motif_reading(result: dict, stop_codons: set[str]) -> str:
    """The learned motif, or why there is none: the trained model's top k-mer is as salient at random init."""
    learned, top = result["learned_motif"], result["trained"]["top_motif"]
    if learned is not None:
        return (f"learned motif {motif_text(learned)}, {learned['random_init_fold_enrichment']:.1f}x at random init "
                f"(paired sign test adjusted p={learned['p_vs_random_init_adjusted']:.1g})")
    if top is None:
        return "no learned motif (no significant codon k-mer)"
    beyond = "the stop codon" if top["kmer"] in stop_codons else "what random init also picks out"
    return (f"no learned motif beyond {beyond}: the trained model's top k-mer {motif_text(top)} is as salient at "
            f"random init ({top['random_init_fold_enrichment']:.1f}x; paired sign test adjusted "
            f"p={top['p_vs_random_init_adjusted']:.2g})")


def reading(result: dict, stop_codons: set[str]) -> str:
    t, r = result["trained"], result["random_init"]
    return (f"<EOS_CDS> predictions put {t['eos']['ig_share_at_distance_0']:.0%} of their integrated-gradients "
            f"saliency on the stop codon itself (random init {r['eos']['ig_share_at_distance_0']:.0%}); "
            f"{motif_reading(result, stop_codons)}; {t['n_significant_kmers']} significant codon k-mers, "
            f"{result['n_learned_kmers']} beyond random init (random init {r['n_significant_kmers']} significant, "
            f"shuffled positions {result['shuffled_positions']['n_significant_kmers_mean']:.1f}); "
            f"{result['n_genes']} held-out genes")


def draw_distance(by_distance: pd.DataFrame, window: int, out) -> None:
    import matplotlib.pyplot as plt

    methods = {"ig": "integrated gradients", "grad_x_input": "gradient x input"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    colours = {"eos": "tab:red", "stop_codon": "tab:blue"}
    for ax, (method, title) in zip(axes, methods.items(), strict=True):
        for (label, prediction), sub in by_distance[by_distance.method == method].groupby(["model", "prediction"]):
            ax.plot(sub.distance, sub.share, color=colours[prediction], marker="o", markersize=3,
                    linestyle="-" if label == "trained" else ":",
                    label=f"{'<EOS_CDS>' if prediction == 'eos' else 'stop codon'}, "
                          f"{'trained' if label == 'trained' else 'random init'}")
        ax.set_xlabel("distance back (codons)")
        ax.set_title(title)
        ax.set_xlim(-0.5, window - 0.5)
        ax.set_yscale("log")
    axes[0].set_ylabel("share of the prediction's |attribution|")
    axes[1].legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
    fig.suptitle("Saliency by distance for the stop-codon and <EOS_CDS> predictions (mean over held-out genes; "
                 "distance 0 = the input codon the prediction is read at)")
    save_figure(fig, out / "saliency_by_distance.png")


def logo_counts(kmer: pd.Series) -> pd.DataFrame:
    """Nucleotide counts per column of aligned codon k-mers ('AAA-GCT-TAA' -> 9 columns)."""
    letters = np.array([list(k.replace("-", "")) for k in kmer]).reshape(len(kmer), 3 * MAX_K)
    return pd.DataFrame({b: (letters == b).sum(axis=0) for b in "ACGT"}, dtype=float)


def draw_logos(positions: pd.DataFrame, table: pd.DataFrame, motifs: pd.DataFrame, out) -> None:
    """Information content (vs all positions of the same contexts) of the codons at and before
    high-saliency positions (`table`: the MAX_K-codon k-mers): one logo per prediction and model."""
    import logomaker
    import matplotlib.pyplot as plt

    models = ["trained", "random_init"]
    fig, axes = plt.subplots(len(PREDICTIONS), len(models), figsize=(6.5 * len(models), 2.6 * len(PREDICTIONS)),
                             squeeze=False)
    top = positions.top.loc[table.index].to_numpy()
    for i, prediction in enumerate(PREDICTIONS):
        for j, label in enumerate(models):
            mine = ((table.model == label) & (table.prediction == prediction)).to_numpy()
            background = logo_counts(table.kmer[mine]).sum().to_numpy()
            counts = logo_counts(table.kmer[mine & top])
            info = logomaker.transform_matrix(counts, from_type="counts", to_type="information",
                                              background=background / background.sum(), pseudocount=1)
            ax = axes[i, j]
            logomaker.Logo(info, ax=ax, color_scheme="classic")
            ax.set_xticks(range(3 * MAX_K), [f"{c - MAX_K + 1}:{n + 1}" for c in range(MAX_K) for n in range(3)])
            ax.set_xlabel("codon:base (codon 0 = the salient codon, -1 the one before)")
            ax.set_ylabel("information (bits)")
            best = motif_entry(motifs[(motifs.model == label) & (motifs.prediction == prediction) & motifs.significant])
            versus = {True: "; learned", False: "; as at random init"}.get(best.get("learned")) if best else None
            top_text = "" if best is None else f"; top k-mer {best['kmer']} ({best['fold_enrichment']:.1f}x{versus or ''})"
            name = "<EOS_CDS>" if prediction == "eos" else "stop codon"
            ax.set_title(f"{label.replace('_', ' ')}: {name} prediction, n={int((mine & top).sum())}"
                         f"{top_text}", fontsize=9)
    fig.suptitle("Motifs at high-saliency codons (top |integrated gradients| positions), vs all positions")
    fig.tight_layout()
    save_figure(fig, out / "motif_logos.png")
