"""Whole-gene scoring: every codon's log-probability given the gene before it.

How a gene is read (sliding-window attention by default, or strided windows) and what each costs is
defined once, in `codonlm.evaluate.sliding`. Default: each token computed once, every codon predicted
from at least block_size tokens of context; on the default run's test genes this changed perplexity
from that of the earlier default (strided windows, stride block_size // 4) by the figure in README
("Inference speed").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from codonlm.data.codons import genetic_code, with_host
from codonlm.errors import UserError
from codonlm.evaluate.sliding import gene_rows, row_batches, sliding_forward
from codonlm.evaluate.sliding import gene_windows as gene_windows  # re-exported: its older home
from codonlm.log import progress


@dataclass
class GeneScore:
    """Per-target arrays (length = gene length - 1) for one gene."""

    logp: np.ndarray  # natural-log probability of the true target
    top1: np.ndarray  # bool
    top5: np.ndarray  # bool
    aa_correct: np.ndarray  # bool: the argmax token's amino acid (or end) is the true one
    synonymous_mass: np.ndarray  # probability on tokens of the true target's amino acid
    confidence: np.ndarray  # probability of the argmax token

    @property
    def nll(self) -> float:
        return float(-self.logp.mean())


def perplexity_of(nll: float) -> float:
    """exp(nll); inf (not OverflowError) past the float range: a hopeless model, which callers refuse to report."""
    try:
        return math.exp(nll)
    except OverflowError:
        return math.inf


def require_finite(values: np.ndarray | torch.Tensor | float, what: str) -> None:
    """Refuse a NaN/inf result (a model with finite but overflowing weights) instead of reporting it."""
    values = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise UserError(f"the model's {what} came out NaN/inf ({bad} of {values.size}): its weights overflow, "
                        "so there is no result to report; train a new run with a lower train.lr (or drop --amp)")


@torch.no_grad()
def score_genes(model, genes: list[np.ndarray], device: str | torch.device = "cpu", stride: int | None = None,
                max_tokens: int = 16384, amp: bool = False, table_id: int = 11,
                hosts: list[int | None] | None = None) -> list[GeneScore]:
    """Score genes given as `<BOS> c1..cn <EOS>` token arrays (the NPZ `gene_tokens` layout).

    stride None: sliding-window attention, each token computed once; an integer: strided windows
    (`codonlm.evaluate.sliding`). Genes are batched by length and token budget, so a batch pads little.
    hosts: each gene's host token id (a host-conditioned model), put after <BOS>; its target is dropped,
    so a GeneScore lines up with codons 1..n and <EOS> either way.
    """
    if hosts is not None:
        genes = [with_host(g, h) for g, h in zip(genes, hosts, strict=True)]
    model.eval()
    device = torch.device(device)
    aa = torch.from_numpy(genetic_code(table_id).aa_classes(model.cfg.vocab_size)).to(device)
    T = model.cfg.block_size
    rows = gene_rows([g.size - 1 for g in genes], T, stride)
    cols: dict[str, list[list[tuple[int, np.ndarray]]]] = {k: [[] for _ in genes] for k in _COLUMNS}
    batches = row_batches(genes, rows, max_tokens)
    for batch, idx in progress(batches, desc="score", unit="batch", leave=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, _ = sliding_forward(model, idx.to(device))
        values = target_values(logits, batch, genes, aa)
        offset = 0
        for g, _, lo, hi in batch:  # the flat arrays hold each row's scored targets lo..hi in turn
            for k in _COLUMNS:
                cols[k][g].append((lo, values[k][offset : offset + hi - lo + 1]))
            offset += hi - lo + 1
    skip = [0 if hosts is None or hosts[g] is None else 1 for g in range(len(genes))]  # the host token's target
    scores = [GeneScore(**{k: np.concatenate([v for _, v in sorted(cols[k][g], key=lambda p: p[0])])[skip[g]:]
                           for k in _COLUMNS}) for g in range(len(genes))]
    require_finite(np.concatenate([s.logp for s in scores]) if scores else [], "log-probabilities")
    return scores


def scored_logits(logits: torch.Tensor, batch: list, genes: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits [N, V] at every scored target of a batch's rows and those targets [N], flat in row order
    (row r = (gene, first input a, lo, hi): targets lo..hi, target t predicted at column t - a - 1)."""
    device = logits.device
    first = torch.tensor([lo - a - 1 for _, a, lo, _ in batch], device=device)
    last = torch.tensor([hi - a - 1 for _, a, _, hi in batch], device=device)
    col = torch.arange(logits.shape[1], device=device)
    owned = (col >= first[:, None]) & (col <= last[:, None])  # row-major, so row by row in target order
    targets = torch.from_numpy(np.concatenate([genes[g][lo : hi + 1] for g, _, lo, hi in batch]).astype(np.int64))
    return logits[owned], targets.to(device)


def target_values(logits: torch.Tensor, batch: list, genes: list[np.ndarray], aa: torch.Tensor) -> dict[str, np.ndarray]:
    """The GeneScore columns of every scored target of a batch, flat in row order (row r: its targets lo..hi).
    Only the scored positions are gathered before the float32 softmax: padding costs nothing here."""
    picked, targets = scored_logits(logits, batch, genes)
    logp_all = torch.log_softmax(picked.float(), dim=-1)
    probs = logp_all.exp()
    top5 = torch.topk(logp_all, 5, dim=-1).indices
    pred = top5[:, 0]
    true_aa = aa[targets]
    values = {
        "logp": logp_all.gather(-1, targets[:, None]).squeeze(-1),
        "top1": pred == targets,
        "top5": (top5 == targets[:, None]).any(-1),
        "aa_correct": aa[pred] == true_aa,
        "synonymous_mass": (probs * (aa[None] == true_aa[:, None])).sum(-1),
        "confidence": probs.gather(-1, pred[:, None]).squeeze(-1),
    }
    return {k: v.cpu().numpy() for k, v in values.items()}


_COLUMNS = ("logp", "top1", "top5", "aa_correct", "synonymous_mass", "confidence")


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> tuple[float, list[dict]]:
    """Expected calibration error of top-1 confidence (Guo et al. 2017), with the reliability table."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    total, rows, err = confidence.size, [], 0.0
    for b in range(n_bins):
        sel = bins == b
        n = int(sel.sum())
        if n == 0:
            continue
        conf, acc = float(confidence[sel].mean()), float(correct[sel].mean())
        err += n / total * abs(conf - acc)
        rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "n": n, "confidence": conf, "accuracy": acc})
    return err, rows


POSITION_BINS = (1, 11, 26, 51, 101, 201, 401, 801, 10**9)


def position_bins(n_targets: int) -> np.ndarray:
    """Bin index of each target (target k is codon k of the gene, 1-based; the last is <EOS_CDS>)."""
    return np.digitize(np.arange(1, n_targets + 1), POSITION_BINS[1:-1])
