"""How the model reads a whole gene, for scoring, embeddings and variant scans: the one definition.

Default (`stride=None`), sliding-window attention: the gene's tokens (`<BOS_CDS> c1..cn`, and `<EOS_CDS>`
as the last target when scored) are read in one pass in which every token attends, at every layer, to
itself and the block_size - 1 tokens before it. A gene that fits the window is read exactly as in training
(one causal pass). In a longer gene every codon is predicted from at least block_size tokens of direct
context, and the lower layers' states carry information from further back (receptive field n_layer x
block_size, as in sliding-window-attention models); rotary positions are relative, so a token's absolute
position changes nothing. Cost: every token is computed once, the minimum any definition needs, i.e. the
bare forward pass of the gene's tokens. The pass runs in chunks of block_size / 2 tokens, each attending to
the previous block_size - 1 tokens' cached keys/values (`TinyGPT.extend(window=...)`), so attention spans
at most 1.5 x block_size keys and memory does not grow with the gene (chunks of block_size / 2 measured
1.06x the bare forward on genes over 400 codons, whole windows 1.17x, quarter windows 1.15x).

Strided windows (`stride=s`, the earlier default with s = block_size // 4): overlapping windows of
block_size inputs advancing by s; each target is scored by the first window that gives it at least
block_size - s + 1 tokens of context, and every layer sees only that window. Cost: about block_size / s
forward tokens per codon of a long gene (4x at s = block_size // 4). Kept for comparison (`--stride`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from codonlm.data.codons import PAD

Row = tuple[int, int, int, int]  # (gene, first input token, first scored target, last scored target)


def gene_windows(n_targets: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(input start, first scored target, last scored target) per window; targets are 1..n_targets."""
    end = min(block_size, n_targets)
    windows = [(0, 1, end)]
    while end < n_targets:
        new_end = min(end + stride, n_targets)
        windows.append((new_end - block_size, end + 1, new_end))
        end = new_end
    return windows


def gene_rows(n_targets: list[int], block_size: int, stride: int | None) -> list[Row]:
    """The rows that read each gene (targets 1..n_targets[g]): one per gene (sliding window), or its
    strided windows. Row inputs are tokens first input .. last scored target - 1."""
    if stride is None:
        return [(g, 0, 1, n) for g, n in enumerate(n_targets)]
    stride = max(1, min(stride, block_size))
    return [(g, a, lo, hi) for g, n in enumerate(n_targets) for a, lo, hi in gene_windows(n, block_size, stride)]


def row_batches(tokens: list[np.ndarray], rows: list[Row], max_tokens: int) -> Iterator[tuple[list[Row], torch.Tensor]]:
    """Yield (rows, idx [rows, width] right-padded inputs): rows sorted by width so a batch pads little, and
    batched by token budget, rows x width (padding included: every position is computed) within max_tokens.
    A row is never split (a longer one is a batch of its own)."""
    rows = sorted(rows, key=lambda r: r[3] - r[1])
    start = 0
    while start < len(rows):
        end = start + 1
        while end < len(rows) and (end + 1 - start) * (rows[end][3] - rows[end][1]) <= max_tokens:
            end += 1
        batch = rows[start:end]
        idx = torch.full((len(batch), batch[-1][3] - batch[-1][1]), PAD, dtype=torch.long)
        for r, (g, a, _, hi) in enumerate(batch):
            idx[r, : hi - a] = torch.from_numpy(tokens[g][a:hi].astype(np.int64))
        yield batch, idx
        start = end


def sliding_forward(model, idx: torch.Tensor, names: Iterable[str] = (), past: list | None = None,
                    start: int = 0, cache: list | None = None,
                    chunk: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits [B, L, V] of idx [B, L] read with sliding-window attention (window block_size), and the
    activations at hook points `names` [B, L, ...]. `past`: keys/values of the tokens before `start` (one
    row shared by all, or B rows), e.g. a wild-type prefix; only its last block_size - 1 are attended.
    `cache`: a list that receives every layer's keys/values of all L tokens (a prefix for later calls).
    `chunk`: tokens per step (default block_size / 2); the result does not depend on it beyond rounding."""
    window = model.cfg.block_size
    names = list(names)
    states: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def record(x: torch.Tensor, hook) -> None:
        states[hook.name].append(x)

    def recent(t: torch.Tensor) -> torch.Tensor:
        return t[:, :, max(0, t.shape[2] - window + 1) :]

    logits, pieces = [], []
    hooks = model.hooks([(n, record) for n in names]) if names else contextlib.nullcontext()
    with hooks:
        step = max(1, chunk or window // 2)  # fewer keys per query (1.5 x window) than whole windows (2 x)
        for c0 in range(0, idx.shape[1], step):
            if past is not None:
                past = [(recent(k), recent(v)) for k, v in past]
            chunk = idx[:, c0 : c0 + step]
            last = c0 + step >= idx.shape[1]
            out, past = model.extend(chunk, past, start + c0, all_logits=True, keep_cache=not last or cache is not None,
                                     window=window)
            logits.append(out)
            if cache is not None:
                pieces.append([(k[:, :, -chunk.shape[1] :], v[:, :, -chunk.shape[1] :]) for k, v in past])
    if cache is not None:
        cache.extend((torch.cat([p[i][0] for p in pieces], 2), torch.cat([p[i][1] for p in pieces], 2))
                     for i in range(len(pieces[0])))
    return torch.cat(logits, 1), {n: torch.cat(v, 1) for n, v in states.items()}


def sample_forward(model, tokens: list[np.ndarray], stride: int | None, max_tokens: int):
    """`forward(autocast) -> tokens`: one batch of a job's rows, those of median width up to `max_tokens`, read
    as the job reads them; what `amp: auto` times to choose bf16 or float32 for the whole job."""
    rows = sorted(gene_rows([t.size - 1 for t in tokens], model.cfg.block_size, stride), key=lambda r: r[3] - r[1])
    batch, idx = next(row_batches(tokens, rows[len(rows) // 2 :], max_tokens))
    idx = idx.to(next(model.parameters()).device)

    def forward(autocast) -> int:
        with autocast():
            sliding_forward(model, idx)
        return idx.numel()

    return forward
