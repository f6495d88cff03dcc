"""Single-codon variant scans: the log-likelihood ratio of every substitution, exact or local, streamed.

Exact (`llr="exact"`): LLR = LL(mutant gene) - LL(wild type), each LL being what `score_genes`
gives for the whole gene (`<BOS_CDS> c1..cn <EOS_CDS>`, read as `codonlm.evaluate.sliding` defines:
sliding-window attention by default, or strided windows with `stride`), so it equals rescoring every
mutant from scratch (tested) at a fraction of the cost:

- Targets before the mutated codon are unchanged and cancel. The mutated codon's own term comes from
  the wild type's logits. Only the codons after it need new forward passes: their inputs continue the
  wild type's prefix, whose key/value cache is computed once (per window with strided windows) and
  shared by every alternative, and the alternatives' suffixes run as one batch.
- With strided windows, windows that start after the mutation do not see it and contribute nothing.
- Batches are bounded in input tokens and in attended keys (several positions share a batch when
  suffixes are short; see `_groups`), and results stream out position by position, so memory does not
  grow with the gene.

Work, in forward tokens: the wild type once (n + 1), then for each position i its alternatives' suffixes,
63 x (n + 1 - i) tokens (attending to at most 1.25 x block_size keys each: suffixes run in chunks of
block_size / SUFFIX_CHUNK_FRACTION, measured 0.85x the time of block_size / 2 chunks on a 991-codon
gene, where every query's window is full): 63 n^2 / 2 in all, the
least an exact scan needs (each mutant's changed tokens computed once). Strided windows (`stride=s`)
repeat that for each window that sees a codon, about block_size / s times for a long gene.

Local (`llr="local"`): log p(mut_i | wild-type prefix) - log p(wt_i | same prefix), from one forward
pass of the wild type (per window). It leaves out the mutation's effect on every downstream codon
(how well the next codons fit after it, including the stop and `<EOS_CDS>`), so a nonsense variant
is judged only by how likely a stop is at that position, not by the truncated gene that follows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from codonlm.data.codons import CODON_OFFSET, CODONS, frame_gene, genetic_code
from codonlm.evaluate.sliding import gene_rows, sliding_forward

KINDS = ("synonymous", "missense", "nonsense", "stop_loss")
LLR_METHODS = ("exact", "local")
CODON_IDS = np.arange(CODON_OFFSET, CODON_OFFSET + len(CODONS))
SUFFIX_CHUNK_FRACTION = 4  # suffix rows run in chunks of block_size / 4 tokens (scoring: / 2)


def variant_kinds(wt: int, table_id: int = 11) -> np.ndarray:
    """Kind (an index into KINDS) of substituting each of the 64 codons for token `wt`."""
    code = genetic_code(table_id)
    wt_aa, mut_aa = code.aa[wt], code.aa[CODON_IDS]
    kinds = np.where(mut_aa == wt_aa, 0, 1)
    kinds[(mut_aa == ord("*")) & (wt_aa != ord("*"))] = 2
    kinds[(wt_aa == ord("*")) & (mut_aa != ord("*"))] = 3
    return kinds


def scan_work_tokens(n_codons: int, positions: Iterable[int], llr: str = "exact", alternatives: int = 63) -> int:
    """Forward tokens of a scan read with sliding-window attention: the wild type once (n + 1 inputs) and, for
    an exact scan, each position i's alternatives' suffixes, `alternatives` x (n + 1 - i)."""
    suffixes = sum(n_codons + 1 - i for i in positions) if llr == "exact" else 0
    return n_codons + 1 + alternatives * suffixes


@dataclass
class PositionScan:
    """The scanned substitutions at one codon position (1-based, as in `<BOS_CDS> c1 .. cn`)."""

    position: int
    wt: int  # token id of the wild-type codon
    alts: np.ndarray  # token ids of the alternative codons
    kinds: np.ndarray  # index into KINDS, per alternative
    llr: np.ndarray  # natural-log likelihood ratio mutant / wild type, per alternative


@dataclass
class _Window:
    start: int  # input start in the gene's tokens
    first: int  # first scored target
    last: int  # last scored target
    logp: torch.Tensor | None = None  # [width, V] wild-type log-probabilities at each input
    past: list | None = None  # wild-type key/value cache of the window's inputs (one row)


class VariantScanner:
    """Scan one gene at a time: `scan(codons)` yields a PositionScan per position, in order.

    llr: "exact" or "local"; kinds: subset of KINDS to keep; stride: None (default, as score_genes) reads
    long genes with sliding-window attention, an integer with strided windows advancing by it; max_tokens: suffix tokens per batch, and a quarter of
    the attended key positions (a batch holds at least one position's alternatives, so at most
    max(max_tokens, 63 x block_size) tokens);
    chunk_positions: positions finished together before they are yielded; amp: every forward pass under
    bf16 autocast (log-probabilities are taken in float32 either way).
    """

    def __init__(self, model, llr: str = "exact", kinds: Iterable[str] | None = None, stride: int | None = None,
                 max_tokens: int = 8192, table_id: int = 11, chunk_positions: int = 32, host: int | None = None,
                 amp: bool = False):
        if llr not in LLR_METHODS:
            raise ValueError(f"llr must be one of {LLR_METHODS}, got {llr!r}")
        self.model, self.llr, self.table_id, self.host = model.eval(), llr, table_id, host
        self.keep = np.array([k in set(kinds or KINDS) for k in KINDS])
        T = model.cfg.block_size
        self.block, self.stride = T, None if stride is None else max(1, min(stride, T))
        self.max_tokens, self.chunk_positions = max_tokens, chunk_positions
        self.device = next(model.parameters()).device
        self.amp = amp
        self.chunk = max(1, T // SUFFIX_CHUNK_FRACTION)  # tokens per step of the suffix rows
        self.batch_shapes: list[tuple[int, int, int]] = []  # (rows, prefix, suffix length) of each batch

    def alternatives(self, wt: int) -> tuple[np.ndarray, np.ndarray]:
        kinds = variant_kinds(wt, self.table_id)
        sel = (CODON_IDS != wt) & self.keep[kinds]
        return CODON_IDS[sel], kinds[sel]

    @torch.no_grad()
    def scan(self, codons: np.ndarray, positions: Iterable[int] | None = None) -> Iterator[PositionScan]:
        gene = frame_gene(np.asarray(codons, dtype=np.uint8), self.host)
        tokens = torch.from_numpy(gene.astype(np.int64)).to(self.device)
        n = len(codons)
        shift = gene.size - n - 2  # codon p is token p + shift (1 behind a host token)
        positions = sorted(set(range(1, n + 1) if positions is None else positions))
        if positions and not 1 <= positions[0] <= positions[-1] <= n:
            raise ValueError(f"codon positions must lie in 1..{n}")
        positions = [p + shift for p in positions]  # token positions from here on
        # exact: every window whose inputs hold the position; local: the one that scores it
        reach = "start" if self.llr == "exact" else "first"
        windows = [_Window(*r[1:]) for r in gene_rows([gene.size - 1], self.block, self.stride)]
        for c0 in range(0, len(positions), self.chunk_positions):
            chunk = positions[c0 : c0 + self.chunk_positions]
            alts = {p: self.alternatives(int(gene[p])) for p in chunk}
            llr = {p: np.zeros(alts[p][0].size) for p in chunk}
            for w in windows:
                if w.last < chunk[0]:
                    w.logp = w.past = None  # no later position needs this window: free it
                    continue
                inside = [p for p in chunk if getattr(w, reach) <= p <= w.last and alts[p][0].size]
                if inside:
                    self._add_window(tokens, w, inside, alts, llr)
            for p in chunk:
                yield PositionScan(p - shift, int(gene[p]), alts[p][0], alts[p][1], llr[p])

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Per forward call, not around the generator: autocast state must not leak to the caller between yields.
        Without amp, the caller's own autocast (if any) applies, as `timing_forward` needs."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def timing_forward(self, codons: np.ndarray, max_tokens: int) -> Callable[[Callable], int]:
        """`forward(autocast) -> tokens`: the scan of the one position of `codons` whose alternatives' suffixes
        fill about `max_tokens` inputs (the wild type's pass included), as the scan runs it: what `amp: auto`
        times to choose bf16 or float32 for a whole scan (`train.precision.inference_precision`)."""
        n = len(codons)
        position = max(1, n + 1 - max_tokens // 63)

        def forward(autocast) -> int:
            before = len(self.batch_shapes)
            with autocast():
                for _ in self.scan(codons, [position]):
                    pass
            return n + 1 + sum(rows * width for rows, _, width in self.batch_shapes[before:])

        return forward

    def _wild_type(self, tokens: torch.Tensor, w: _Window) -> None:
        if w.logp is None:
            w.past = []
            with self._autocast():
                logits, _ = sliding_forward(self.model, tokens[None, w.start : w.last], cache=w.past)
            w.logp = torch.log_softmax(logits[0].float(), dim=-1)

    def _add_window(self, tokens, w: _Window, positions: list[int], alts: dict, llr: dict) -> None:
        """Add window w's share of the LLR of every alternative at `positions` (all inside w)."""
        self._wild_type(tokens, w)
        for p in positions:
            if w.first <= p:  # the mutated codon is one of w's targets: its own term
                row = w.logp[p - 1 - w.start]
                llr[p] += (row[torch.from_numpy(alts[p][0])] - row[tokens[p]]).cpu().numpy()
        if self.llr == "exact":
            downstream = [p for p in positions if p < w.last]
            for group in self._groups(downstream, alts, w):
                self._add_suffixes(tokens, w, group, alts, llr)

    def _groups(self, positions: list[int], alts: dict, w: _Window) -> Iterator[list[int]]:
        """Consecutive positions run as one batch; a single position always forms a group.

        A batch's inputs run from its first position to target w.last - 1: at most max_tokens of
        them in all rows; and every row attends to the window's w.last - w.start keys (the shared
        prefix is copied per row), at most 4 x max_tokens key positions in all rows.
        """
        group: list[int] = []
        rows = 0
        for p in positions:
            k = alts[p][0].size
            if group and ((rows + k) * min(w.last - group[0], self.block) > self.max_tokens
                          or (rows + k) * min(w.last - w.start, 2 * self.block) > 4 * self.max_tokens):
                yield group
                group, rows = [], 0
            group.append(p)
            rows += k
        if group:
            yield group

    def _add_suffixes(self, tokens, w: _Window, group: list[int], alts: dict, llr: dict) -> None:
        """One batch: every alternative at every position of `group`, continuing w's wild-type prefix.

        Inputs run from the group's first position s0 to target w.last - 1 (rows whose mutation
        sits later recompute a few wild-type tokens); only targets after each row's mutation and
        inside w's scored range count.
        """
        s0, a = group[0], w.start
        suffix = tokens[s0 : w.last]  # inputs s0 .. last-1 predict targets s0+1 .. last
        alt_ids = np.concatenate([alts[p][0] for p in group])
        rows = suffix.repeat(alt_ids.size, 1)
        mut_at = torch.from_numpy(np.repeat([p - s0 for p in group], [alts[p][0].size for p in group]))
        mut_at = mut_at.to(self.device)
        rows[torch.arange(alt_ids.size, device=self.device), mut_at] = torch.from_numpy(alt_ids).to(self.device)
        prefix = [(k[:, :, : s0 - a], v[:, :, : s0 - a]) for k, v in w.past]
        self.batch_shapes.append((rows.shape[0], s0 - a, rows.shape[1]))
        with self._autocast():
            logits, _ = sliding_forward(self.model, rows, past=prefix, start=s0 - a, chunk=self.chunk)
        targets = tokens[s0 + 1 : w.last + 1]
        mut_lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.expand(rows.shape[0], -1)[..., None])
        wt_lp = w.logp[s0 - a : w.last - a].gather(-1, targets[:, None]).squeeze(-1)
        diff = mut_lp.squeeze(-1) - wt_lp  # [rows, L]: column c is target s0 + 1 + c
        target = torch.arange(s0 + 1, w.last + 1, device=self.device)
        counted = (target[None] > (mut_at + s0)[:, None]) & (target[None] >= w.first)
        per_row = (diff * counted).sum(-1).cpu().numpy()
        r = 0
        for p in group:
            k = alts[p][0].size
            llr[p] += per_row[r : r + k]
            r += k
