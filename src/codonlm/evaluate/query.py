"""Query a trained run: next-codon distribution, generation, scoring, and single-codon variant effects.

The checkpoint is loaded once; scoring batches all sequences through `score_genes`.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import torch

from codonlm.data.codons import CODON_OFFSET, CODONS, EOS, ITOS, STOI, decode, encode, genetic_code
from codonlm.errors import UserError
from codonlm.evaluate.perplexity import score_genes
from codonlm.evaluate.sampling import generate

MODES = ("next", "generate", "score", "mutate")


def _aa(token: int, table_id: int = 11) -> str:
    if token == EOS:
        return "<end>"
    if token < CODON_OFFSET:
        return ITOS[token]
    return chr(genetic_code(table_id).aa[token])


@torch.no_grad()
def next_codons(model, dna: str, top_k: int = 10) -> list[dict]:
    tokens = torch.from_numpy(encode(dna).astype(np.int64))[None, -model.cfg.block_size:]
    logits, _ = model(tokens, segment_ids=torch.ones_like(tokens))
    probs = torch.softmax(logits[0, -1].float(), dim=-1)
    top = torch.topk(probs, top_k)
    return [{"token": ITOS[int(i)], "probability": float(p), "amino_acid": _aa(int(i))}
            for p, i in zip(top.values, top.indices, strict=True)]


def score(model, records: list[tuple[str, str]], with_eos: bool = True, amp: bool = False) -> list[dict]:
    genes = [encode(dna, add_bos=True, add_eos=with_eos) for _, dna in records]
    out = []
    for (name, dna), s in zip(records, score_genes(model, genes, amp=amp), strict=True):
        out.append({"id": name, "n_codons": len(dna) // 3, "log_likelihood": float(s.logp.sum()),
                    "per_codon_log_likelihood": [float(x) for x in s.logp], "perplexity": math.exp(s.nll)})
    return out


def mutate(model, name: str, dna: str, table_id: int = 11, amp: bool = False) -> list[dict]:
    """Every single-codon substitution scored as log-likelihood(mutant) - log-likelihood(wild type)."""
    code = genetic_code(table_id)
    wt = encode(dna, add_bos=True, add_eos=True)
    variants, labels = [wt], [None]
    for pos in range(1, wt.size - 1):
        for codon in CODONS:
            tok = STOI[codon]
            if tok == wt[pos]:
                continue
            mutant = wt.copy()
            mutant[pos] = tok
            variants.append(mutant)
            wt_aa, mt_aa = chr(code.aa[wt[pos]]), chr(code.aa[tok])
            kind = "synonymous" if wt_aa == mt_aa else ("nonsense" if mt_aa == "*" else
                                                        ("stop_loss" if wt_aa == "*" else "missense"))
            labels.append((pos, ITOS[wt[pos]], codon, wt_aa, mt_aa, kind))
    scores = score_genes(model, variants, amp=amp)
    wt_ll = float(scores[0].logp.sum())
    return [
        {"id": name, "codon_position": pos, "wt_codon": wc, "mut_codon": mc, "wt_aa": wa, "mut_aa": ma,
         "kind": kind, "llr": float(s.logp.sum()) - wt_ll}
        for (pos, wc, mc, wa, ma, kind), s in zip(labels[1:], scores[1:], strict=True)
    ]


def run_query(model, mode: str, records: list[tuple[str, str]], top_k: int = 10, temperature: float = 1.0,
              sample_top_k: int | None = None, top_p: float | None = None, seed: int = 0, max_codons: int = 500,
              as_json: bool = False, out=None, amp: bool = False) -> list[dict]:
    out = out or sys.stdout
    if mode not in MODES:
        raise UserError(f"unknown --mode '{mode}'; choose one of {', '.join(MODES)}")
    if mode == "next":
        rows = [{"id": n, "next": next_codons(model, d, top_k)} for n, d in records]
    elif mode == "generate":
        prompts = [encode(d) for _, d in records]
        outs = generate(model, prompts, max_codons, temperature, sample_top_k, top_p, seed,
                        stop_codons=genetic_code(11).is_stop)
        rows = []
        for (n, d), o in zip(records, outs, strict=True):
            dna_out = decode(o)
            protein = genetic_code(11).translate(o[o >= CODON_OFFSET])
            rows.append({"id": n, "prompt_codons": len(d) // 3, "dna": dna_out, "protein": protein,
                         "new_codons": len(dna_out) // 3 - len(d) // 3, "ended": ITOS[int(o[-1])]})
    elif mode == "score":
        rows = score(model, records, amp=amp)
    else:
        rows = [r for n, d in records for r in mutate(model, n, d, amp=amp)]
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
    elif mode == "score":
        print("id\tn_codons\tlog_likelihood\tperplexity", file=out)
        for r in rows:
            print(f"{r['id']}\t{r['n_codons']}\t{r['log_likelihood']:.4f}\t{r['perplexity']:.3f}", file=out)
    else:
        print("id\tcodon_position\twt_codon\tmut_codon\twt_aa\tmut_aa\tkind\tllr", file=out)
        for r in rows:
            print(f"{r['id']}\t{r['codon_position']}\t{r['wt_codon']}\t{r['mut_codon']}\t{r['wt_aa']}\t"
                  f"{r['mut_aa']}\t{r['kind']}\t{r['llr']:.4f}", file=out)
