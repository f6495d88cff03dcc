"""Query a trained run: next-codon distribution, generation, whole-gene scoring, variant scans.

The checkpoint is loaded once by the caller. `score` is the one way DNA records are scored
(`codonlm query --mode score` and `codonlm eval-perplexity` both use it); variant scans live in
`variants.py` (computation) and `variant_table.py` (streamed table, heatmaps, summary).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from codonlm.data.codons import (
    CODON_OFFSET,
    EOS,
    ITOS,
    as_codon_ids,
    decode,
    encode,
    genetic_code,
    internal_stop_count,
)
from codonlm.errors import UserError
from codonlm.evaluate.perplexity import perplexity_of, require_finite, score_genes
from codonlm.evaluate.sampling import generate

MODES = ("next", "generate", "score", "mutate")


def amino_acid(token: int, table_id: int = 11) -> str:
    """One-letter amino acid of a codon token, '*' for stops, '<end>' for <EOS_CDS>."""
    if token == EOS:
        return "<end>"
    if token < CODON_OFFSET:
        return ITOS[token]
    return chr(genetic_code(table_id).aa[token])


@torch.no_grad()
def next_codons(model, dna: str, top_k: int = 10, table_id: int = 11, host: int | None = None) -> list[dict]:
    """The top_k next tokens after a gene's first codons (host: the host token id of a host-conditioned model)."""
    tokens = torch.from_numpy(encode(dna, host=host).astype(np.int64))[None, -model.cfg.block_size:]
    tokens = tokens.to(next(model.parameters()).device)
    logits, _ = model(tokens, segment_ids=torch.ones_like(tokens))
    probs = torch.softmax(logits[0, -1].float(), dim=-1)[: len(ITOS)]  # a host token never comes next
    require_finite(probs, "next-codon probabilities")
    top = torch.topk(probs, min(top_k, len(ITOS)))
    return [{"token": ITOS[int(i)], "probability": float(p), "amino_acid": amino_acid(int(i), table_id)}
            for p, i in zip(top.values, top.indices, strict=True)]


def score(model, records: list[tuple[str, str]], stride: int | None = None, amp: bool = False,
          table_id: int = 11, host: int | list[int | None] | None = None) -> list[dict]:
    """Each record as a whole gene `<BOS_CDS> codons <EOS_CDS>` (score_genes: sliding-window attention
    past block_size, or strided windows with `stride`): total log-likelihood, mean NLL, perplexity, and the
    per-target log-probabilities; beside them the count of internal stop codons, which make the number a score
    of something that is not a gene. host: the host token id of a host-conditioned model, one for all records
    or one per record."""
    genes = [encode(dna, add_bos=True, add_eos=True) for _, dna in records]
    device = next(model.parameters()).device
    scores = score_genes(model, genes, device=device, stride=stride, amp=amp, table_id=table_id,
                         hosts=host if isinstance(host, list) else None if host is None else [host] * len(genes))
    require_finite([perplexity_of(s.nll) for s in scores], "perplexities")
    return [{"id": name, "n_codons": len(dna) // 3, "internal_stops": internal_stop_count(dna, table_id),
             "log_likelihood": float(s.logp.sum()), "nll": s.nll,
             "perplexity": perplexity_of(s.nll), "per_codon_log_likelihood": [float(x) for x in s.logp]}
            for (name, dna), s in zip(records, scores, strict=True)]


def generate_rows(model, records: list[tuple[str, str]], max_codons: int, temperature: float,
                  top_k: int | None, top_p: float | None, seed: int, table_id: int = 11,
                  host: int | None = None) -> list[dict]:
    code = genetic_code(table_id)
    outs = generate(model, [encode(d, host=host) for _, d in records], max_codons, temperature, top_k, top_p, seed,
                    stop_codons=code.is_stop, device=next(model.parameters()).device)
    rows = []
    for (n, d), o in zip(records, outs, strict=True):
        dna_out = decode(o)
        rows.append({"id": n, "prompt_codons": len(d) // 3, "dna": dna_out,
                     "protein": code.translate(as_codon_ids(o).astype(np.uint8)),
                     "new_codons": len(dna_out) // 3 - len(d) // 3, "ended": ITOS[int(o[-1])]})
    return rows


def run_query(model, mode: str, records: list[tuple[str, str]], top_k: int = 10, temperature: float = 1.0,
              sample_top_k: int | None = None, top_p: float | None = None, seed: int = 0, max_codons: int = 500,
              as_json: bool = False, out=None, amp: bool = False, stride: int | None = None,
              table_id: int = 11, scan: dict | None = None, host: int | None = None) -> list[dict] | dict:
    """Run one mode and print its table (or JSON). Returns the rows; for "mutate" (rows streamed,
    not held) the scan summary. `scan`: keyword arguments of variant_table.scan_records. host: the host
    token id of a host-conditioned model (`codons.host_token`)."""
    out = out or sys.stdout
    if mode not in MODES:
        raise UserError(f"unknown --mode '{mode}'; choose one of {', '.join(MODES)}")
    if mode == "mutate":
        from codonlm.evaluate.variant_table import scan_records

        return scan_records(model, records, stream=out, fmt="jsonl" if as_json else "tsv", stride=stride,
                            table_id=table_id, host=host, amp=amp, **(scan or {}))
    if mode == "next":
        rows = [{"id": n, "next": next_codons(model, d, top_k, table_id, host)} for n, d in records]
    elif mode == "generate":
        rows = generate_rows(model, records, max_codons, temperature, sample_top_k, top_p, seed, table_id, host)
    else:
        rows = score(model, records, stride=stride, amp=amp, table_id=table_id, host=host)
    if as_json:
        json.dump(rows, out, indent=1)
        out.write("\n")
    else:
        _print_table(mode, rows, out)
    return rows


def _print_table(mode: str, rows: list[dict], out) -> None:
    if mode == "next":
        for r in rows:
            print(f"# {r['id']}: next codon", file=out)
            for c in r["next"]:
                print(f"{c['token']:>10}  {c['probability']:.4f}  {c['amino_acid']}", file=out)
    elif mode == "generate":
        for r in rows:
            print(f">{r['id']} generated new_codons={r['new_codons']} ended={r['ended']}\n{r['dna']}\n"
                  f"# protein: {r['protein']}", file=out)
    else:
        print("id\tn_codons\tinternal_stops\tlog_likelihood\tperplexity", file=out)
        for r in rows:
            print(f"{r['id']}\t{r['n_codons']}\t{r['internal_stops']}\t{r['log_likelihood']:.4f}\t{r['perplexity']:.3f}",
                  file=out)
