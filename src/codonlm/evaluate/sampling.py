"""Codon sampling with a key/value cache, shared by `codonlm query` and prefix-generation evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from codonlm.data.codons import CODON_OFFSET, EOS, HOST_OFFSET


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering; returns probabilities [B, V]."""
    logits = logits / max(temperature, 1e-6)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


@torch.no_grad()
def generate(model, prompts: Sequence[np.ndarray], max_new: int | Sequence[int], temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             stop_codons: np.ndarray | None = None, device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Extend prompts (<BOS> + codons) until <EOS_CDS>, a stop codon in `stop_codons` (a bool mask
    over token ids; kept), or `max_new` new tokens (one budget, or one per prompt).

    Only codons and <EOS_CDS> are sampled: temperature, then top-k, then top-p; one draw per
    active row per step from a seeded CPU generator. A key/value cache (TinyGPT.extend) makes each
    step cost one token. Past block_size the cache is rebuilt from the last block_size // 2
    tokens, so each prediction sees between half and a whole block of context, as tokens inside
    training chunks do. Prompts of different lengths are run in groups of equal length.
    """
    budgets = [int(max_new)] * len(prompts) if isinstance(max_new, int) else [int(m) for m in max_new]
    outs: list[np.ndarray | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for group_no, rows in enumerate(by_length.values()):
        group_seed = seed if group_no == 0 else int(np.random.SeedSequence([seed, group_no]).generate_state(1)[0])
        done = _generate_equal_length(model, [prompts[i] for i in rows], [budgets[i] for i in rows], temperature,
                                      top_k, top_p, group_seed, stop_codons, torch.device(device))
        for i, o in zip(rows, done, strict=True):
            outs[i] = o
    return outs  # type: ignore[return-value]


def _generate_equal_length(model, prompts, budget, temperature, top_k, top_p, seed, stop_codons, device):
    block = model.cfg.block_size
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    vocab = model.cfg.vocab_size
    allowed = torch.zeros(vocab, dtype=torch.bool)
    allowed[CODON_OFFSET:HOST_OFFSET] = True  # never a host token
    allowed[EOS] = True
    stop = torch.zeros(vocab, dtype=torch.bool)
    if stop_codons is not None:
        stop[: len(stop_codons)] = torch.from_numpy(stop_codons)
    outs = [list(map(int, p)) for p in prompts]
    active = [i for i in range(len(outs)) if budget[i] > 0]
    if not active:
        return [np.array(o, dtype=np.uint8) for o in outs]
    ctx = torch.tensor([outs[i][-block:] for i in active], dtype=torch.long, device=device)
    logits, past = model.extend(ctx, None, 0)
    ctx_len = ctx.shape[1]
    while True:
        logits = logits.float().cpu().masked_fill(~allowed, float("-inf"))
        picks = torch.multinomial(filter_logits(logits, temperature, top_k, top_p), 1, generator=gen).squeeze(1)
        keep = []
        for row, i in enumerate(active):
            tok = int(picks[row])
            outs[i].append(tok)
            budget[i] -= 1
            if not (tok == EOS or bool(stop[tok]) or budget[i] <= 0):
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(active):
            rows = torch.tensor(keep, device=device)
            past = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in past]
            picks = picks[torch.tensor(keep)]
            active = [active[r] for r in keep]
        if ctx_len >= block:  # full: rebuild from the last half block
            ctx = torch.tensor([outs[i][-(block // 2) :] for i in active], dtype=torch.long, device=device)
            logits, past = model.extend(ctx, None, 0)
            ctx_len = ctx.shape[1]
        else:
            logits, past = model.extend(picks[:, None].to(device), past, ctx_len)
            ctx_len += 1
    return [np.array(o, dtype=np.uint8) for o in outs]
