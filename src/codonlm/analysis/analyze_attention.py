"""Step 5: what each attention head looks at, whether genes packed together stay apart, what each head is worth.

On a seeded draw of the run's held-out (val) windows, in the packed layout the model trained on
(half of them holding several CDS pieces), per head: attention entropy, mean attention distance,
mass on the gene's <BOS_CDS> and on its start codon, share on the previous codon, and the
attention mass that crosses into another gene of the same window. With `sep_mask_enabled` that
mass must be exactly 0 (the per-CDS mask); anything else is flagged (`mask_ok: false` and a
warning). When no drawn query has another gene before it (single-gene windows), there is nothing to
check: `mask_check: "not checked"`, `mask_ok: null`, never a leak. Head ablation: the change in
held-out loss when one head's output is zeroed (a hook on `blocks.{i}.attn.hook_z`,
`tinygpt.ablate_heads`). Everything for the trained model and its random-init twin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from codonlm.analysis.batching import Windows, draw_windows
from codonlm.analysis.context import AnalysisContext, first_codon_position, is_codon
from codonlm.data.codons import BOS, loss_mask
from codonlm.io import save_figure, write_csv
from codonlm.log import log, progress
from codonlm.model.tinygpt import TinyGPT, ablate_heads

NAME = "analyze_attention"
N_PACKED, N_OTHER = 8, 8  # windows drawn (4,096 query tokens at block 256): several CDS pieces / the rest
BATCH = 8  # windows per forward pass
MAX_DISTANCE = 32  # attention-by-distance profile, in codons
MEASURES = ("entropy", "distance", "to_bos", "to_start", "to_previous", "cross_gene")
MEASURE_LABELS = {
    "entropy": "entropy (nats)",
    "distance": "mean distance (codons)",
    "to_bos": "mass on <BOS_CDS>",
    "to_start": "mass on start codon",
    "to_previous": "mass on previous codon",
    "cross_gene": "mass on other genes",
}


def run(ctx: AnalysisContext) -> dict:
    out = ctx.out_dir(NAME)
    windows = draw_windows(ctx.split_path("val"), N_PACKED, N_OTHER, ctx.seed, salt=5, device=ctx.device)
    tables, profiles, result = [], [], {}
    for label, model in progress(ctx.models().items(), desc=NAME, unit="model", disable=ctx.quiet):
        heads, profile, extra = head_statistics(model, windows)
        base, delta = head_ablation(model, windows)
        heads["ablation_delta_loss"] = delta.flatten()
        tables.append(heads.assign(model=label))
        profiles.append(profile.assign(model=label))
        result[label] = model_summary(heads, base, extra)
    heads = pd.concat(tables)[["model", "layer", "head", *MEASURES, "ablation_delta_loss"]]
    write_csv(heads, out / "heads.csv")
    write_csv(pd.concat(profiles), out / "attention_by_distance.csv")
    draw_head_grid(heads, out)
    draw_ablation(heads, out)
    draw_distance_profile(pd.concat(profiles), out)

    result.update(mask_check(ctx, windows, result))
    result.update({"split": "val", "n_windows": len(windows), "n_packed_windows": int(windows.packed.sum()),
                   "n_query_codons": result["trained"]["n_query_codons"],
                   "uniform_entropy": result["trained"]["uniform_entropy"],
                   "uniform_distance": result["trained"]["uniform_distance"]})
    result["reading"] = reading(result)
    log(f"[{NAME}] {result['reading']}")
    return result


def selections(inputs: Tensor, seg: Tensor, pos: Tensor,
               first: int = 1) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Which queries each measure averages over ([B, T] bool), and the key index it reads ([B, T]);
    `first`: the start codon's position in its CDS (2 after a host token, `first_codon_position`)."""
    T = inputs.shape[1]
    q = torch.arange(T, device=inputs.device).expand_as(inputs)
    codon = is_codon(inputs)  # queries are codons: never <BOS_CDS> or a host token
    bos = (q - pos).clamp(min=0)  # where the query's own <BOS_CDS> sits, if it is in this window
    has_bos = (q - pos >= 0) & (inputs.gather(1, bos) == BOS) & (seg.gather(1, bos) == seg)
    previous = (q - 1).clamp(min=0)
    # segments are contiguous, so a query has another gene before it in the window (and could leak)
    # exactly when its segment is not the window's first
    select = {
        "entropy": codon, "distance": codon,
        "to_bos": codon & has_bos,
        "to_start": codon & has_bos & (pos > first),
        "to_previous": codon & (q >= 1) & (pos > first) & (seg.gather(1, previous) == seg),
        "cross_gene": codon & (seg != seg[:, :1]),
    }
    keys = {"to_bos": bos, "to_start": (bos + first).clamp(max=T - 1), "to_previous": previous}
    return select, keys


@torch.no_grad()
def head_statistics(model: TinyGPT, windows: Windows) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Per (layer, head) means of MEASURES, the attention-by-distance profile, and context numbers."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(L)]
    sums = {m: torch.zeros(L, H, dtype=torch.float64) for m in MEASURES}
    counts = dict.fromkeys(MEASURES, 0)
    by_distance = torch.zeros(L, H, MAX_DISTANCE + 1, dtype=torch.float64)
    max_cross, uniform_entropy, uniform_distance = 0.0, 0.0, 0.0
    for inputs, _, seg, pos in windows.batches(BATCH):
        _, cache = model.run_with_cache(inputs, segment_ids=seg, names_filter=names, positions=pos)
        select, keys = selections(inputs, seg, pos, first_codon_position(model.cfg))
        allowed = allowed_keys(model, inputs, seg)
        n_allowed = allowed.sum(-1).double()
        codon = select["entropy"]
        uniform_entropy += float(torch.log(n_allowed)[codon].sum())
        uniform_distance += float(((n_allowed - 1) / 2)[codon].sum())
        other_gene = (seg[:, :, None] != seg[:, None, :]).unsqueeze(1)  # [B, 1, T, T]
        q = torch.arange(inputs.shape[1])
        lag = (q[:, None] - q[None, :]).to(inputs.device)  # query minus key
        for i, name in enumerate(names):
            p = cache[name]  # [B, H, T, T]
            per_query = {
                "entropy": -torch.special.xlogy(p, p).sum(-1),
                "distance": (p * lag).sum(-1),
                "cross_gene": (p * other_gene).sum(-1),
                **{m: p.gather(-1, k[:, None, :, None].expand(*p.shape[:3], 1)).squeeze(-1) for m, k in keys.items()},
            }
            for m in MEASURES:
                sums[m][i] += (per_query[m] * select[m][:, None, :]).sum((0, 2)).double()
            max_cross = max(max_cross, float((per_query["cross_gene"] * select["cross_gene"][:, None]).max()))
            for d in range(MAX_DISTANCE + 1):
                at_d = torch.diagonal(p, offset=-d, dim1=-2, dim2=-1)  # [B, H, T - d]: key = query - d
                by_distance[i, :, d] += (at_d * codon[:, None, d:]).sum((0, 2)).double()
        for m in MEASURES:
            counts[m] += int(select[m].sum())
    n_codon = max(counts["entropy"], 1)
    rows = [{"layer": i, "head": h, **{m: float(sums[m][i, h] / max(counts[m], 1)) for m in MEASURES}}
            for i in range(L) for h in range(H)]
    profile = pd.DataFrame([{"layer": i, "head": h, "distance": d, "mean_attention": float(by_distance[i, h, d] / n_codon)}
                            for i in range(L) for h in range(H) for d in range(MAX_DISTANCE + 1)])
    extra = {"n_query_codons": n_codon, "counts": counts, "cross_gene_mass_max": max_cross,
             "uniform_entropy": uniform_entropy / n_codon, "uniform_distance": uniform_distance / n_codon}
    return pd.DataFrame(rows), profile, extra


def allowed_keys(model: TinyGPT, inputs: Tensor, seg: Tensor) -> Tensor:
    """[B, T, T] bool: the keys each query may see by design (causal, and own CDS with the mask on)."""
    T = inputs.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=inputs.device).tril()
    if not model.cfg.sep_mask_enabled:
        return causal.expand(inputs.shape[0], T, T)
    return causal & (seg[:, :, None] == seg[:, None, :])


@torch.no_grad()
def head_ablation(model: TinyGPT, windows: Windows) -> tuple[float, np.ndarray]:
    """Held-out loss of the intact model, and its change [n_layer, n_head] when each head is zeroed."""
    L, H = model.cfg.n_layer, model.cfg.n_head

    def heldout_loss() -> float:
        total, n = 0.0, 0
        for inputs, targets, seg, pos in windows.batches(len(windows)):
            _, loss = model(inputs, targets, segment_ids=seg, positions=pos)
            k = int(loss_mask(targets).sum())
            total, n = total + float(loss) * k, n + k
        return total / max(n, 1)

    base = heldout_loss()
    delta = np.zeros((L, H))
    for i in range(L):
        for h in range(H):
            with model.hooks(ablate_heads(i, [h])):
                delta[i, h] = heldout_loss() - base
    return base, delta


def head_name(row: pd.Series) -> str:
    return f"L{int(row['layer'])}H{int(row['head'])}"


def model_summary(heads: pd.DataFrame, base_loss: float, extra: dict) -> dict:
    """Means over heads, the most notable heads, and the loss numbers of one model."""
    def top(column: str, largest: bool = True) -> dict:
        row = heads.loc[heads[column].idxmax() if largest else heads[column].idxmin()]
        return {"head": head_name(row), "value": float(row[column])}

    return {
        "heldout_loss": base_loss,
        **{f"mean_{m}": float(heads[m].mean()) for m in MEASURES},
        "max_ablation_delta_loss": float(heads["ablation_delta_loss"].max()),
        "sum_ablation_delta_loss": float(heads["ablation_delta_loss"].sum()),
        "notable_heads": {
            "previous_codon": top("to_previous"), "bos": top("to_bos"), "start_codon": top("to_start"),
            "lowest_entropy": top("entropy", largest=False), "longest_range": top("distance"),
            "most_needed": top("ablation_delta_loss"),
        },
        "n_query_codons": extra["n_query_codons"],
        "cross_gene_mass_max": extra["cross_gene_mass_max"],
        "uniform_entropy": extra["uniform_entropy"],
        "uniform_distance": extra["uniform_distance"],
        "queries_per_measure": extra["counts"],
    }


def mask_check(ctx: AnalysisContext, windows: Windows, result: dict) -> dict:
    """With sep_mask_enabled, cross-gene attention must be exactly 0 in every head of both models.

    `mask_check` says what was found: "holds", "leaks", "not checked" (no drawn query had another
    gene before it in its window, so there was nothing that could leak: `mask_ok` is null, not false)
    or "no mask" (genes may see each other by design)."""
    worst = max(result[label]["cross_gene_mass_max"] for label in ("trained", "random_init"))
    enabled = ctx.cfg.model.sep_mask_enabled
    queries = result["trained"]["queries_per_measure"]["cross_gene"]
    check = {"sep_mask_enabled": enabled, "cross_gene_mass_max": worst, "cross_gene_queries": queries,
             "warnings": []}
    if not enabled:
        return {**check, "mask_ok": None, "mask_check": "no mask"}
    if worst > 0.0:
        check.update(mask_ok=False, mask_check="leaks")
        check["warnings"].append(f"sep_mask_enabled but {worst:.3g} of a query's attention reaches another "
                                 f"gene of its window: the per-CDS attention mask leaks")
    elif queries == 0:
        check.update(mask_ok=None, mask_check="not checked")
        check["warnings"].append(f"no query had another gene before it in the {len(windows)} drawn windows "
                                 f"({int(windows.packed.sum())} packed): the per-CDS mask was not checked")
    else:
        check.update(mask_ok=True, mask_check="holds")
    for line in check["warnings"]:
        log(f"[{NAME}] WARNING: {line}")
    return check


def reading(result: dict) -> str:
    t, r = result["trained"], result["random_init"]
    notable = t["notable_heads"]
    mask = {"holds": "exactly 0 (mask holds)", "leaks": f"{result['cross_gene_mass_max']:.3g} (MASK LEAKS)",
            "not checked": "not checked (no query had another gene before it in its window)",
            "no mask": f"{result['cross_gene_mass_max']:.3g} (no per-CDS mask)"}[result["mask_check"]]
    return (f"mean attention entropy {t['mean_entropy']:.2f} nats (random init {r['mean_entropy']:.2f}, uniform "
            f"{result['uniform_entropy']:.2f}); {notable['previous_codon']['head']} puts "
            f"{notable['previous_codon']['value']:.2f} on the previous codon; zeroing {notable['most_needed']['head']} "
            f"costs {notable['most_needed']['value']:+.3f} nats of held-out loss (random init at most "
            f"{r['max_ablation_delta_loss']:+.3f}); cross-gene attention {mask}")


def _grid(heads: pd.DataFrame, column: str, label: str) -> np.ndarray:
    sub = heads[heads.model == label]
    return sub.pivot(index="layer", columns="head", values=column).to_numpy()


def _annotated(ax, values: np.ndarray, vmin: float, vmax: float, cmap: str, fmt: str = "{:.2f}"):
    """A heat map with each cell's value written on it, white on dark cells and black on light ones."""
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for (i, h), v in np.ndenumerate(values):
        red, green, blue, _ = image.cmap(image.norm(v))
        ax.text(h, i, fmt.format(v), ha="center", va="center", fontsize=7,
                color="white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black")
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    return image


def draw_head_grid(heads: pd.DataFrame, out, per_row: int = 3) -> None:
    """One heat map per measure and model, layer x head, one scale per measure starting at 0 (masses on
    0..1). `per_row` measures side by side, each with its models stacked under it, so the figure stays
    narrow enough for the numbers in its cells to be read where the report shows it."""
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(heads.model))
    blocks = [MEASURES[i : i + per_row] for i in range(0, len(MEASURES), per_row)]
    n_rows = len(blocks) * len(models)
    fig, axes = plt.subplots(n_rows, per_row, figsize=(3.6 * per_row, 2.9 * n_rows + 1), squeeze=False,
                             layout="constrained")
    for b, block in enumerate(blocks):
        rows = slice(b * len(models), (b + 1) * len(models))
        for j, m in enumerate(block):
            vmax = max(float(heads[m].max()), 1e-6) if m in ("entropy", "distance") else 1.0
            for ax, label in zip(axes[rows, j], models, strict=True):
                image = _annotated(ax, _grid(heads, m, label), 0.0, vmax, "viridis")
                ax.set_title(f"{label.replace('_', ' ')}: {MEASURE_LABELS[m].split(' (')[0]}", fontsize=9)
            fig.colorbar(image, ax=axes[rows, j], location="bottom", shrink=0.8, label=MEASURE_LABELS[m])
    fig.suptitle("Attention heads on held-out windows: what each head attends to (mean over codon queries)")
    save_figure(fig, out / "heads.png")


def draw_ablation(heads: pd.DataFrame, out) -> None:
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(heads.model))
    bound = max(float(heads["ablation_delta_loss"].abs().max()), 1e-6)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models) + 1.5, 3.8), squeeze=False,
                             layout="constrained")
    for ax, label in zip(axes[0], models, strict=True):
        image = _annotated(ax, _grid(heads, "ablation_delta_loss", label), -bound, bound, "RdBu_r", "{:+.3f}")
        ax.set_title(f"{label.replace('_', ' ')} model")
    fig.colorbar(image, ax=axes[0], fraction=0.05, pad=0.02, label="change in held-out loss (nats/codon)")
    fig.suptitle("Head ablation: held-out loss change when one head's output is zeroed")
    save_figure(fig, out / "head_ablation.png")


def draw_distance_profile(profile: pd.DataFrame, out) -> None:
    """Mean attention at each distance, one panel per layer, one line per head; random init dashed."""
    import matplotlib.pyplot as plt

    layers = sorted(profile.layer.unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(3.8 * len(layers) + 2, 3.6), sharey=True, squeeze=False,
                             layout="constrained")
    colours = plt.get_cmap("tab10").colors
    for ax, layer in zip(axes[0], layers, strict=True):
        for (label, head), sub in profile[profile.layer == layer].groupby(["model", "head"]):
            ax.plot(sub.distance, sub.mean_attention, color=colours[int(head) % 10],
                    linestyle="-" if label == "trained" else ":", linewidth=1.2,
                    label=f"H{head} {'trained' if label == 'trained' else 'random init'}")
        ax.set_yscale("log")
        ax.set_xlabel("distance back (codons)")
        ax.set_title(f"layer {layer}")
    axes[0, 0].set_ylabel("mean attention weight")
    axes[0, -1].legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7)
    fig.suptitle("Mean attention weight by distance from the query (0 = the codon itself); "
                 "solid: trained, dotted: random init")
    save_figure(fig, out / "attention_by_distance.png")
