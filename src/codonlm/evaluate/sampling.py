"""Codon sampling with a key/value cache, shared by `codonlm query` and prefix-generation evaluation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with n intra-op threads, then restore. One token a step is too little work to share: with 2
    threads on a busy 2-core machine, one attention call of one query measured 12.7 ms, with 1 thread 0.015 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class KVStepper:
    """A batch of contexts extended one token per step through TinyGPT.extend's key/value cache.

    Each step costs one token per row. Past block_size there are two policies: `slide=True` keeps the
    last block_size - 1 cached positions before adding the new one (the cost stays one token a step;
    RoPE makes attention depend on relative positions only, so the absolute position simply keeps
    counting); `slide=False` rebuilds the cache from the last block_size // 2 tokens, so each
    prediction sees between half and a whole block of context, as tokens inside training chunks do
    (what `generate` uses).
    """

    def __init__(self, model, contexts: Sequence[Sequence[int]], device: torch.device, slide: bool):
        self.model, self.device, self.slide = model, device, slide
        self.block = model.cfg.block_size
        self.history = [list(map(int, c)) for c in contexts]
        ctx = torch.tensor([h[-self.block :] for h in self.history], dtype=torch.long, device=device)
        self.logits, self.past = model.extend(ctx, None, 0)
        self.cached = self.position = ctx.shape[1]

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([B]); returns the next logits [B, V]."""
        for h, t in zip(self.history, tokens.tolist(), strict=True):
            h.append(int(t))
        if self.cached >= self.block and not self.slide:
            ctx = torch.tensor([h[-(self.block // 2) :] for h in self.history], dtype=torch.long, device=self.device)
            self.logits, self.past = self.model.extend(ctx, None, 0)
            self.cached = self.position = ctx.shape[1]
            return self.logits
        if self.cached >= self.block:
            keep = self.block - 1
            self.past = [(k[:, :, -keep:], v[:, :, -keep:]) for k, v in self.past]
            self.cached = keep
        self.logits, self.past = self.model.extend(tokens[:, None].to(self.device), self.past, self.position)
        self.cached += 1
        self.position += 1
        return self.logits

    def select(self, rows: Sequence[int]) -> None:
        """Keep (or repeat, reorder) these rows: finished rows dropped, beams re-ranked."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        self.past = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.past]
        self.logits = self.logits.index_select(0, index)
        self.history = [list(self.history[r]) for r in rows]


def _generate_equal_length(model, prompts, budget, temperature, top_k, top_p, seed, stop_codons, device):
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
    stepper = KVStepper(model, [outs[i] for i in active], device, slide=False)
    logits = stepper.logits
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
            stepper.select(keep)
            picks = picks[torch.tensor(keep)]
            active = [active[r] for r in keep]
        logits = stepper.advance(picks)
    return [np.array(o, dtype=np.uint8) for o in outs]
