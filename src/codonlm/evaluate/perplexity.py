"""Whole-gene scoring: every codon predicted with (nearly) the full left context of block_size tokens.

A gene that fits the window is one forward pass. A longer gene is scored with overlapping
windows of block_size inputs advancing by `stride`; each window scores only the targets the
previous one did not, so every codon is scored once, with at least block_size - stride + 1
tokens of context (stride 1: exactly block_size). Genes are never cut at arbitrary window
boundaries. (A single pass with a banded mask is not equivalent: stacked layers widen the
receptive field beyond the band.)

Default stride block_size // 4: on 150 long test genes (tiny_cpu run) perplexity was 39.919 at
stride 32, 39.921 at 64, 39.926 at 128 and 40.072 with non-overlapping windows (256), so
context past 3/4 of the window changes nothing visible, while each halving of the stride doubles
the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from codonlm.data.codons import PAD, genetic_code, with_host
from codonlm.errors import UserError
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


def gene_windows(n_targets: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(input start, first scored target, last scored target) per window; targets are 1..n_targets."""
    end = min(block_size, n_targets)
    windows = [(0, 1, end)]
    while end < n_targets:
        new_end = min(end + stride, n_targets)
        windows.append((new_end - block_size, end + 1, new_end))
        end = new_end
    return windows


@torch.no_grad()
def score_genes(model, genes: list[np.ndarray], device: str | torch.device = "cpu", stride: int | None = None,
                max_tokens: int = 32768, amp: bool = False, table_id: int = 11,
                hosts: list[int | None] | None = None) -> list[GeneScore]:
    """Score genes given as `<BOS> c1..cn <EOS>` token arrays (the NPZ `gene_tokens` layout).

    stride defaults to block_size // 4 (context >= 3/4 of the window for every codon). hosts: each gene's
    host token id (a host-conditioned model), put after <BOS>; its target is dropped, so a GeneScore
    lines up with codons 1..n and <EOS> either way.
    """
    if hosts is not None:
        genes = [with_host(g, h) for g, h in zip(genes, hosts, strict=True)]
    model.eval()
    device = torch.device(device)
    aa = torch.from_numpy(genetic_code(table_id).aa_classes(model.cfg.vocab_size)).to(device)
    T = model.cfg.block_size
    stride = max(1, min(stride or T // 4, T))
    # every window of every gene: (gene, input start, first target, last target), shortest first
    # so that a batch pads little
    rows = [(g, a, lo, hi) for g, gene in enumerate(genes) for a, lo, hi in gene_windows(gene.size - 1, T, stride)]
    rows.sort(key=lambda r: min(T, genes[r[0]].size - 1 - r[1]))
    per_batch = max(1, max_tokens // T)
    cols: dict[str, list[list[tuple[int, np.ndarray]]]] = {k: [[] for _ in genes] for k in _COLUMNS}
    for b0 in progress(range(0, len(rows), per_batch), desc="score", unit="batch", leave=False):
        batch = rows[b0 : b0 + per_batch]
        width = max(min(T, genes[g].size - 1 - a) for g, a, _, _ in batch)
        idx = torch.full((len(batch), width + 1), PAD, dtype=torch.long)
        for r, (g, a, _, _) in enumerate(batch):
            piece = genes[g][a : a + width + 1]
            idx[r, : piece.size] = torch.from_numpy(piece.astype(np.int64))
        idx = idx.to(device)
        inputs, targets = idx[:, :-1], idx[:, 1:]
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
        with ctx:
            logits, _ = model(inputs, segment_ids=torch.ones_like(inputs))
        logp_all = torch.log_softmax(logits.float(), dim=-1)
        probs = logp_all.exp()
        top5 = torch.topk(logp_all, 5, dim=-1).indices
        pred = top5[..., 0]
        true_aa = aa[targets]
        values = {
            "logp": logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1),
            "top1": pred == targets,
            "top5": (top5 == targets.unsqueeze(-1)).any(-1),
            "aa_correct": aa[pred] == true_aa,
            "synonymous_mass": (probs * (aa.view(1, 1, -1) == true_aa.unsqueeze(-1))).sum(-1),
            "confidence": probs.gather(-1, pred.unsqueeze(-1)).squeeze(-1),
        }
        values = {k: v.cpu().numpy() for k, v in values.items()}
        for r, (g, a, lo, hi) in enumerate(batch):
            # target t sits at column t - a - 1 of this window
            for k in _COLUMNS:
                cols[k][g].append((lo, values[k][r, lo - a - 1 : hi - a]))
    skip = [0 if hosts is None or hosts[g] is None else 1 for g in range(len(genes))]  # the host token's target
    scores = [GeneScore(**{k: np.concatenate([v for _, v in sorted(cols[k][g], key=lambda p: p[0])])[skip[g]:]
                           for k in _COLUMNS}) for g in range(len(genes))]
    require_finite(np.concatenate([s.logp for s in scores]) if scores else [], "log-probabilities")
    return scores


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
