"""DNA input parsing and codon generation shared by `codonlm query` and prefix-generation evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from codonlm.data.codons import BOS, CODON_OFFSET, EOS, ITOS, codon_ids, first_bad_base
from codonlm.errors import UserError


def clean_dna(text: str, source: str = "--dna") -> str:
    """Upper-case, U->T, whitespace dropped; a non-ACGT character or a length not a multiple of 3 is an error."""
    seq = "".join(text.split()).upper().replace("U", "T")
    if not seq:
        raise UserError(f"{source}: empty DNA sequence; pass codons such as ATGAAATAA")
    bad = first_bad_base(seq)
    if bad is not None:
        raise UserError(
            f"{source}: character '{seq[bad]}' at position {bad + 1} is not A/C/G/T/U; "
            "remove it or use an unambiguous sequence"
        )
    if len(seq) % 3:
        raise UserError(
            f"{source}: length {len(seq)} is not a multiple of 3 (the last codon is incomplete at "
            f"position {len(seq) - len(seq) % 3 + 1}); trim or complete it"
        )
    return seq


def read_sequences(
    dna: str | None = None, fasta: str | None = None, stdin_text: str | None = None
) -> list[tuple[str, str]]:
    """(name, DNA) pairs from a --dna string, a FASTA file, or text read from stdin (FASTA or bare DNA)."""
    if dna is not None:
        return [("seq1", clean_dna(dna))]
    if fasta is not None:
        path = Path(fasta)
        if not path.is_file():
            raise UserError(f"FASTA file not found: {path}; check the path")
        text, source = path.read_text(errors="replace"), str(path)
    elif stdin_text is not None:
        text, source = stdin_text, "stdin"
    else:
        raise UserError("no input: pass --dna SEQ, --fasta FILE, or pipe DNA on stdin")
    if not text.lstrip().startswith(">"):
        return [("seq1", clean_dna(text, source))]
    records: list[tuple[str, str]] = []
    name, chunks = None, []
    for line in text.splitlines():
        if line.startswith(">"):
            if name is not None:
                records.append((name, clean_dna("".join(chunks), f"{source} record '{name}'")))
            name, chunks = (line[1:].split() or [f"seq{len(records) + 1}"])[0], []
        else:
            chunks.append(line)
    if name is not None:
        records.append((name, clean_dna("".join(chunks), f"{source} record '{name}'")))
    if not records:
        raise UserError(f"{source}: no sequences found")
    return records


def dna_to_tokens(dna: str, add_bos: bool = True, add_eos: bool = False) -> np.ndarray:
    ids = codon_ids(dna.encode())
    parts = [np.array([BOS], np.uint8)] if add_bos else []
    parts.append(ids)
    if add_eos:
        parts.append(np.array([EOS], np.uint8))
    return np.concatenate(parts)


def tokens_to_dna(tokens) -> str:
    return "".join(ITOS[int(t)] for t in tokens if int(t) >= CODON_OFFSET)


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
def generate(
    model,
    prompts: list[np.ndarray],
    max_codons: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop_codons: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """Extend each prompt (<BOS> + codons) until <EOS_CDS>, a stop codon (kept), or max_codons new codons.

    Only codons and <EOS_CDS> can be sampled. The context is the last block_size tokens, which the
    per-CDS rotary positions make equivalent to the model's training context.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    block = model.cfg.block_size
    allowed = torch.zeros(len(ITOS), dtype=torch.bool)
    allowed[CODON_OFFSET:] = True
    allowed[EOS] = True
    stop_mask = (
        torch.from_numpy(stop_codons) if stop_codons is not None else torch.zeros(len(ITOS), dtype=torch.bool)
    )
    outs = [list(map(int, p)) for p in prompts]
    done = [False] * len(outs)
    for _ in range(max_codons):
        active = [i for i, d in enumerate(done) if not d]
        if not active:
            break
        ctx_len = min(block, max(len(outs[i]) for i in active))
        batch = torch.zeros(len(active), ctx_len, dtype=torch.long)
        last = []
        for row, i in enumerate(active):
            seq = outs[i][-ctx_len:]
            batch[row, : len(seq)] = torch.tensor(seq)
            last.append(len(seq) - 1)
        segments = torch.ones_like(batch)
        logits, _ = model(batch.to(device), segment_ids=segments.to(device))
        logits = logits[torch.arange(len(active)), torch.tensor(last)].float().cpu()
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = filter_logits(logits, temperature, top_k, top_p)
        picks = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        for row, i in enumerate(active):
            tok = int(picks[row])
            outs[i].append(tok)
            if tok == EOS or bool(stop_mask[tok]):
                done[i] = True
    return [np.array(o, dtype=np.uint8) for o in outs]
