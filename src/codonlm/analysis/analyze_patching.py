"""Step 7: activation patching, the causal test of what the probes only correlate.

For seeded held-out (test) genes that fit one context, each gene is paired with a corrupted copy that
differs at one codon i (10 or more codons from either end):

    nonsense     codon i replaced by a stop codon of the genome's code (TAA where it is one)
    synonymous   codon i replaced by another codon of the same amino acid (seeded choice)

Two measures of a run, from the logits:

    eos      log p(<EOS_CDS>) predicted right after codon i: "does the model think the gene ends here?"
    after    mean log p of the K = 10 true codons after the next one, i+2 .. i+K+1 ("does it read on as
             a gene?"; the codon right after i is left out: after a stop it is mostly the eos measure again)

Clean activations are then patched into the corrupted run (a hook that replaces the activation) and
we measure how much of the clean-minus-corrupted difference each patch restores, as a ratio of sums
over genes, (sum patched - sum corrupted) / (sum clean - sum corrupted): 0 = nothing, 1 = all. Grid:
the residual stream entering each block (`blocks.{l}.hook_resid_pre`) and leaving the last one,
x the position (i, i+1, ..., i+3, or every position); then each head's output (`hook_z`, every
position) of every layer. Inputs end at the last position a measure reads (the model is causal, so
nothing is lost), which keeps the step within the analysis time budget. Known answer: the last residual at every position restores the clean run
exactly (tested). Everything for the trained model and its random-init twin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from codonlm.analysis.context import AnalysisContext
from codonlm.data.codons import EOS, PAD, STOI, genetic_code
from codonlm.errors import UserError
from codonlm.io import save_figure, write_csv
from codonlm.model.tinygpt import TinyGPT

NAME = "analyze_patching"
GENES_PER_DATASET = 4
MARGIN = 10  # codons kept clean at both ends; also K, the codons scored after i
OFFSETS = 4  # patched positions i .. i + OFFSETS - 1, then "all"
MIN_CODONS, MAX_CODONS = 3 * MARGIN, 160
CORRUPTIONS = ("nonsense", "synonymous")
MEASURES = ("eos", "after")
MEASURE_LABELS = {"eos": "log p(<EOS_CDS>) right after codon i", "after": "log p of codons i+2 .. i+11"}


def settings(ctx: AnalysisContext) -> dict:
    return {"genes_per_dataset": GENES_PER_DATASET, "margin": MARGIN, "offsets": OFFSETS, "max_codons": MAX_CODONS}


def make_pairs(ctx: AnalysisContext) -> pd.DataFrame:
    """One row per gene and corruption: gene index, dataset, position i, clean and corrupted codon ids."""
    genes = ctx.split("test")
    limit = min(MAX_CODONS, ctx.cfg.model.block_size - 2 - ctx.host_shift)
    picked = [g for g in ctx.sample_genes("test", GENES_PER_DATASET, max_codons=limit, salt=7)
              if len(genes.genes[g]) - 2 >= MIN_CODONS]
    rng = np.random.default_rng([ctx.seed, 77])
    rows = []
    for g in picked:
        dataset = genes.dataset_names[genes.groups[g]]
        code = genetic_code(ctx.table_id(dataset))
        tokens = genes.genes[g]
        n = len(tokens) - 2
        stops = [t for t in np.flatnonzero(code.is_stop)]
        stop = STOI["TAA"] if code.is_stop[STOI["TAA"]] else int(stops[0])
        candidates = np.arange(MARGIN, n - MARGIN - 1)  # codon i is token i of the stored gene
        i = int(rng.choice(candidates))
        rows.append({"gene": g, "name": genes.names[g], "dataset": dataset, "corruption": "nonsense",
                     "position": i, "clean": int(tokens[i]), "corrupted": stop})
        synonyms = {int(p): [int(t) for t in np.flatnonzero(code.aa == code.aa[tokens[p]]) if t != tokens[p]]
                    for p in candidates if not code.is_stop[tokens[p]]}
        usable = [p for p, alts in synonyms.items() if alts]
        if usable:
            p = int(rng.choice(usable))
            rows.append({"gene": g, "name": genes.names[g], "dataset": dataset, "corruption": "synonymous",
                         "position": p, "clean": int(tokens[p]), "corrupted": int(rng.choice(synonyms[p]))})
    return pd.DataFrame(rows)


def token_positions(ctx: AnalysisContext, pairs: pd.DataFrame) -> Tensor:
    """Where codon i of each pair sits in what the model reads: token i, or i + 1 after a host token."""
    return torch.tensor(pairs.position.tolist(), dtype=torch.long, device=ctx.device) + ctx.host_shift


def batch_tokens(ctx: AnalysisContext, pairs: pd.DataFrame) -> tuple[Tensor, Tensor]:
    """Clean and corrupted inputs [N, W]: each gene as the model reads it (`ctx.model_genes`) up to the
    last token a measure reads (codon i + K + 1), padded after it."""
    genes = ctx.model_genes("test", pairs.gene.tolist())
    position = token_positions(ctx, pairs).cpu()
    ends = (position + MARGIN + 2).tolist()
    clean = torch.full((len(pairs), max(ends)), PAD, dtype=torch.long)
    for r, (gene, end) in enumerate(zip(genes, ends, strict=True)):
        clean[r, :end] = torch.from_numpy(gene[:end].astype(np.int64))
    corrupted = clean.clone()
    corrupted[torch.arange(len(pairs)), position] = torch.tensor(pairs.corrupted.tolist())
    return clean.to(ctx.device), corrupted.to(ctx.device)


def measures(logits: Tensor, targets: Tensor, position: Tensor) -> dict[str, Tensor]:
    """Per gene: log p(<EOS_CDS>) at i (predicting target i + 1) and the mean log p of targets i+2..i+K+1."""
    logp = logits.float().log_softmax(-1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    steps = position[:, None] + 1 + torch.arange(MARGIN, device=logits.device)[None, :]  # predicting i+2 .. i+K+1
    after = logp[rows[:, None], steps, targets[rows[:, None], steps + 1]].mean(1)
    return {"eos": logp[rows, position, EOS], "after": after}


def restored(patched: dict[str, Tensor], clean: dict[str, Tensor], corrupted: dict[str, Tensor]) -> dict[str, float]:
    """Share of the clean-minus-corrupted difference a patch restores (ratio of sums over genes)."""
    out = {}
    for m in MEASURES:
        gap = float((clean[m] - corrupted[m]).sum())
        out[m] = float((patched[m] - corrupted[m]).sum()) / gap if abs(gap) > 1e-9 else float("nan")
    return out


def _position_patch(name: str, clean_cache: dict[str, Tensor], position: Tensor, offset: int | None):
    def hook(x: Tensor, _hook) -> Tensor:
        source = clean_cache[name]
        if offset is None:
            return source
        x = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)
        cols = (position + offset).clamp(max=x.shape[1] - 1)
        x[rows, cols] = source[rows, cols]
        return x

    return [(name, hook)]


def _head_patch(name: str, clean_cache: dict[str, Tensor], head: int):
    def hook(z: Tensor, _hook) -> Tensor:
        z = z.clone()
        z[:, :, head] = clean_cache[name][:, :, head]
        return z

    return [(name, hook)]


def residual_points(n_layer: int) -> list[str]:
    return [f"blocks.{i}.hook_resid_pre" for i in range(n_layer)] + [f"blocks.{n_layer - 1}.hook_resid_post"]


@torch.no_grad()
def patch_model(model: TinyGPT, clean: Tensor, corrupted: Tensor, position: Tensor) -> tuple[list[dict], dict]:
    """Every patch of one model on one corruption's pairs: rows for the residual grid and the heads, and
    the per-gene clean / corrupted measures."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    points = residual_points(L) + [f"blocks.{i}.attn.hook_z" for i in range(L)]
    logits, cache = model.run_with_cache(clean, names_filter=points)
    base = {"clean": measures(logits, clean, position),
            "corrupted": measures(model(corrupted)[0], clean, position)}
    rows = []
    for layer, name in enumerate(residual_points(L)):
        for offset in [*range(OFFSETS), None]:
            patched = measures(model.run_with_hooks(corrupted, _position_patch(name, cache, position, offset)),
                               clean, position)
            rows.append({"kind": "residual", "hook": name, "layer": layer, "offset": "all" if offset is None else offset,
                         **restored(patched, base["clean"], base["corrupted"])})
    for layer in range(L):
        for head in range(H):
            name = f"blocks.{layer}.attn.hook_z"
            patched = measures(model.run_with_hooks(corrupted, _head_patch(name, cache, head)), clean, position)
            rows.append({"kind": "head", "hook": name, "layer": layer, "head": head,
                         **restored(patched, base["clean"], base["corrupted"])})
    return rows, base


def run(ctx: AnalysisContext) -> dict:
    out = ctx.out_dir(NAME)
    pairs = make_pairs(ctx)
    if pairs.empty:
        raise UserError(f"no held-out gene of {MIN_CODONS}..{MAX_CODONS} codons fits one context: nothing to patch")
    grid, per_gene = [], []
    for corruption in CORRUPTIONS:
        sub = pairs[pairs.corruption == corruption].reset_index(drop=True)
        clean, corrupted = batch_tokens(ctx, sub)
        position = token_positions(ctx, sub)
        for label, model in ctx.models().items():
            rows, base = patch_model(model, clean, corrupted, position)
            grid += [{"model": label, "corruption": corruption, **r} for r in rows]
            per_gene.append(sub.assign(model=label, **{f"{k}_{m}": base[k][m].cpu().numpy()
                                                       for k in base for m in MEASURES}))
    grid_df, genes_df = pd.DataFrame(grid), pd.concat(per_gene, ignore_index=True)
    write_csv(grid_df[grid_df.kind == "residual"].drop(columns=["kind", "head"]), out / "residual.csv")
    write_csv(grid_df[grid_df.kind == "head"].drop(columns=["kind", "offset"]), out / "heads.csv")
    write_csv(genes_df, out / "pairs.csv")
    result = summarise(grid_df, genes_df, ctx.cfg.model.n_layer)
    effects = {(label, c, m): _effect(genes_df, label, c, m) for label in ("trained", "random_init")
               for c in CORRUPTIONS for m in MEASURES}
    for kind in ("residual", "head"):
        draw_grids(grid_df, kind, effects, out, ctx.cfg.model.n_layer)
    result["reading"] = reading(result)
    return result


def _effect(genes: pd.DataFrame, label: str, corruption: str, m: str) -> float:
    sub = genes[(genes.model == label) & (genes.corruption == corruption)]
    return float((sub[f"clean_{m}"] - sub[f"corrupted_{m}"]).mean())


def summarise(grid: pd.DataFrame, genes: pd.DataFrame, n_layer: int) -> dict:
    """Per model, corruption and measure: the corruption's effect (clean minus corrupted, mean per gene),
    the share restored by position i alone and by the best later position at each residual point, and
    the head whose output restores most."""
    result: dict = {"n_pairs": {c: int((genes[genes.model == "trained"].corruption == c).sum()) for c in CORRUPTIONS}}
    for label in ("trained", "random_init"):
        block: dict = {}
        for corruption in CORRUPTIONS:
            sub = grid[(grid.model == label) & (grid.corruption == corruption)]
            res, heads = sub[sub.kind == "residual"], sub[sub.kind == "head"]
            for m in MEASURES:
                at_i = res[res.offset == 0].set_index("layer")[m].reindex(range(n_layer + 1))
                later = res[res.offset.isin(range(1, OFFSETS))].groupby("layer")[m].max().reindex(range(n_layer + 1))
                best = heads.loc[heads[m].idxmax()] if heads[m].notna().any() else None
                block[f"{corruption}_{m}"] = {
                    "clean_minus_corrupted": _effect(genes, label, corruption, m),
                    "restored_at_i_by_layer": [float(v) for v in at_i],
                    "restored_best_later_position_by_layer": [float(v) for v in later],
                    "best_head": None if best is None else {"head": f"L{int(best['layer'])}H{int(best['head'])}",
                                                            "restored": float(best[m])},
                }
        result[label] = block
    return result


MIN_EFFECT = 0.05  # nats per codon: below this a downstream effect is too small for restored shares to mean much


def _head_text(block: dict, what: str) -> str:
    head = block["best_head"]
    if head is None:
        return f"no single head's output restores any of {what}"
    if head["restored"] < 0.1:
        return (f"no single head's output restores more than {max(head['restored'], 0):.0%} of {what} (best "
                f"{head['head']}): attention does not carry it, the stop codon's own residual stream does")
    return f"the single head whose output restores most of {what} is {head['head']} ({head['restored']:.0%})"


def reading(result: dict) -> str:
    """Sentences written from the numbers: the effects, then where the downstream effect lives (or that there is
    none worth localising), then the synonymous control."""
    t, r = result["trained"], result["random_init"]
    eos, after = t["nonsense_eos"], t["nonsense_after"]
    text = (f"A premature stop at codon i raises log p(<EOS_CDS>) right after it by {-eos['clean_minus_corrupted']:.2f} "
            f"nats (random init {-r['nonsense_eos']['clean_minus_corrupted']:.2f}); {_head_text(eos, 'that')}. ")
    effect = -after["clean_minus_corrupted"]
    if abs(effect) < MIN_EFFECT:
        text += (f"The codons after the next one barely notice the stop ({effect:+.3f} nats/codon, random init "
                 f"{-r['nonsense_after']['clean_minus_corrupted']:+.3f}): the model does not carry it downstream, so "
                 f"there is nothing there to localise. ")
    else:
        at_i, later = after["restored_at_i_by_layer"], after["restored_best_later_position_by_layer"]
        mid = len(at_i) // 2
        if at_i[-1] >= 0.5:
            where = "the stop's own position still carries most of it at the last block"
        elif later[-1] > at_i[-1]:
            moved = next((k for k, v in enumerate(later) if v > at_i[k]), len(at_i) - 1)
            where = f"from block {moved} on a later position carries more of it than the stop's own"
        else:
            where = "no single position carries it at the last block: it is spread over the positions after i"
        text += (f"It moves the log p of the codons after the next one by {effect:+.2f} nats/codon (random init "
                 f"{-r['nonsense_after']['clean_minus_corrupted']:+.2f}); the clean residual at position i alone "
                 f"restores {at_i[0]:.0%} of that entering block 0, {at_i[mid]:.0%} entering block {mid} and "
                 f"{at_i[-1]:.0%} leaving the last block, the best single later position {later[-1]:.0%} there: "
                 f"{where}; {_head_text(after, 'it')}. ")
    return text + (f"A synonymous change moves those codons' log p by "
                   f"{-t['synonymous_after']['clean_minus_corrupted']:+.3f} nats/codon (random init "
                   f"{-r['synonymous_after']['clean_minus_corrupted']:+.3f}).")


def _cell_numbers(ax, values: np.ndarray) -> None:
    """Each cell's share, white on dark cells and black on light ones (the colour scale runs -1..1)."""
    for (a, b), v in np.ndenumerate(values):
        ax.text(b, a, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="white" if not np.isnan(v) and abs(v) > 0.6 else "black")


PANELS = [("nonsense", "eos"), ("nonsense", "after"), ("synonymous", "after")]


def draw_grids(grid: pd.DataFrame, kind: str, effects: dict, out, n_layer: int) -> None:
    """Heat maps of the restored share, one panel per (corruption, measure) and model: residual point x patched
    position (kind "residual") or layer x head (kind "head")."""
    import matplotlib.pyplot as plt

    labels = ["trained", "random_init"]
    fig, axes = plt.subplots(len(labels), len(PANELS), figsize=(4.6 * len(PANELS), 3.4 * len(labels) + 0.8),
                             squeeze=False, layout="constrained")
    columns = [*range(OFFSETS), "all"]
    for i, label in enumerate(labels):
        for j, (corruption, m) in enumerate(PANELS):
            sub = grid[(grid.model == label) & (grid.corruption == corruption) & (grid.kind == kind)]
            ax = axes[i, j]
            if kind == "residual":
                values = sub.pivot(index="layer", columns="offset", values=m).reindex(columns=columns).to_numpy(float)
                ax.set_xticks(range(len(columns)), ["i" if c == 0 else ("all" if c == "all" else f"i+{c}")
                                                    for c in columns])
                ax.set_yticks(range(n_layer + 1), [f"into block {k}" for k in range(n_layer)]
                              + [f"out of block {n_layer - 1}"], fontsize=8)
                ax.set_xlabel("patched position (codon i = the corrupted one)")
            else:
                values = sub.pivot(index="layer", columns="head", values=m).to_numpy(float)
                ax.set_xticks(range(values.shape[1]))
                ax.set_yticks(range(values.shape[0]))
                ax.set_xlabel("head")
                ax.set_ylabel("layer")
            image = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
            _cell_numbers(ax, values)
            ax.set_title(f"{label.replace('_', ' ')}: {corruption}, {m}\n(clean - corrupted "
                         f"{effects[(label, corruption, m)]:+.3f} nats per gene)", fontsize=9)
    fig.colorbar(image, ax=axes, fraction=0.03, pad=0.02, label="share of clean-minus-corrupted restored")
    if kind == "residual":
        fig.suptitle("Activation patching: share of the clean run's log p restored by patching one residual activation")
    else:
        fig.suptitle("Activation patching per head: one head's output (every position) from the clean run")
    save_figure(fig, out / f"{kind}_patching.png")
