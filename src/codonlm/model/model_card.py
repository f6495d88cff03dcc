"""The model card (README.md) of a Hugging Face export: what a user needs to judge and cite the model.

Facts come from the checkpoint (config, step) and, when present, the run folder:
`pipeline_prepare.json` (genomes, CDS counts, splits), `evaluate/metrics.json` (held-out
perplexity beside the baselines), `provenance.json` (git commit). Paths are never written: the
card names the export folder only by its own name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from codonlm.config import Config, config_sha256
from codonlm.io import read_json


@dataclass
class RunFacts:
    run_id: str
    config_sha256: str
    step: int | None = None
    git_commit: str | None = None
    genomes: list[dict] = field(default_factory=list)  # name, transl_table, kept CDS, genes per split
    metrics: dict | None = None  # runs/<RUN_ID>/evaluate/metrics.json


def run_facts(cfg: Config, run_id: str, state: dict, runs_dir: str | Path | None = None) -> RunFacts:
    folder = Path(runs_dir or cfg.outputs.runs_dir) / run_id
    prepare = read_json(folder / "pipeline_prepare.json", {}) or {}
    genomes = []
    for spec in cfg.data.datasets:
        d = prepare.get("datasets", {}).get(spec.name, {})
        splits = d.get("splits", {})
        genomes.append({"name": spec.name, "transl_table": spec.transl_table,
                        "kept_cds": d.get("extraction", {}).get("kept"),
                        "codons": d.get("extraction", {}).get("kept_codons"),
                        **{f"{s}_genes": splits.get(s, {}).get("genes") for s in ("train", "val", "test")}})
    provenance = read_json(folder / "provenance.json", {}) or {}
    return RunFacts(run_id=run_id, config_sha256=config_sha256(cfg), step=state.get("step"),
                    git_commit=provenance.get("git_commit"), genomes=genomes,
                    metrics=read_json(folder / "evaluate" / "metrics.json"))


def _num(v) -> str:
    return "n/a" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.2f}"


def _data_section(facts: RunFacts) -> str:
    if not facts.genomes:
        return "Not recorded with this export.\n"
    lines = ["| genome | genetic code | kept CDS | codons | train / val / test genes |", "|---|---|---|---|---|"]
    for g in facts.genomes:
        lines.append(f"| {g['name']} | {g['transl_table']} | {_num(g['kept_cds'])} | {_num(g['codons'])} | "
                     f"{_num(g['train_genes'])} / {_num(g['val_genes'])} / {_num(g['test_genes'])} |")
    kept = [g["kept_cds"] for g in facts.genomes if g["kept_cds"] is not None]
    total = f"{sum(kept):,} CDS in all. " if len(kept) == len(facts.genomes) else ""
    return ("\n".join(lines) + f"\n\n{total}Genes are split into train/val/test by a seeded hash of their protein "
            "sequence, so identical proteins never straddle splits. Counts: the run's `pipeline_prepare.json`.\n")


def _eval_section(facts: RunFacts) -> str:
    m = facts.metrics
    if not m:
        return (f"Not evaluated when exported. Run `codonlm evaluate {facts.run_id}` and export again to "
                "report held-out perplexity beside the baselines here.\n")
    rows = [("this model", m["model"])] + list(m.get("baselines", {}).items())
    lines = ["| model | perplexity | loss (nats/codon) |", "|---|---|---|"]
    lines += [f"| {name} | {r['perplexity']:.2f} | {r['loss']:.4f} |" for name, r in rows]
    model = m["model"]
    names = {"top1_accuracy": "top-1 codon accuracy", "aa_accuracy": "amino-acid accuracy"}
    extra = ", ".join(f"{label} {model[k]:.3f}" for k, label in names.items() if k in model)
    stride = m.get("stride", "n/a")
    how = ("read with sliding-window attention, each token attending to the context length before it"
           if stride == "sliding window" else f"scored with windows advancing by {stride} tokens")
    return (f"`{m.get('split', 'test')}` split, {_num(m.get('genes'))} whole held-out genes, "
            f"{_num(model.get('n_targets'))} scored codons (each gene's codons and `<EOS_CDS>`; genes longer "
            f"than the context are {how}). "
            "Baselines are fitted on the same training genes (unigram, per-genome unigram, Kneser-Ney "
            "n-grams). Lower is better.\n\n" + "\n".join(lines) + (f"\n\nModel {extra}.\n" if extra else "\n"))


def model_card(model, dir_name: str, facts: RunFacts | None = None) -> str:
    """README.md text for an export in a folder named `dir_name`."""
    cfg = model.cfg
    title = f"codonlm TinyGPT {facts.run_id}" if facts else "codonlm TinyGPT"
    cite = ("Not exported from a run folder." if facts is None else
            f"run id `{facts.run_id}`, config sha256 `{facts.config_sha256}`"
            + (f", checkpoint step {facts.step}" if facts.step is not None else "")
            + (f", codonlm commit `{facts.git_commit}`" if facts.git_commit else "") + ".")
    hosts = ("" if not cfg.hosts else ", then one host token per genome (ids 68..; write it right after "
             "`<BOS_CDS>`, e.g. `<HOST:name>ATG...`): " + ", ".join(f"`<HOST:{h}>`" for h in cfg.hosts))
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [codon, dna, genomics, llama]
---
# {title}

A small codon-level language model of bacterial and archaeal protein-coding genes (CDS), trained
with `codonlm` and exported as `LlamaForCausalLM`: {cfg.n_layer} layers, {cfg.n_head} heads, width
{cfg.n_embd}, SwiGLU hidden {model.blocks[0].mlp.hidden}, context {cfg.block_size} tokens,
{model.num_params():,} parameters, tied embeddings.

## How to cite this model

{cite}

## Training data

{_data_section(facts) if facts else "Not recorded with this export."}
## Held-out perplexity

{_eval_section(facts) if facts else "Not recorded with this export."}
## Use

One token per codon (68 tokens, `itos.json`): `<PAD> <BOS_CDS> <EOS_CDS> <SEP>` then `AAA .. TTT`{hosts}.
A gene is `<BOS_CDS> c1 ... cn <EOS_CDS>`, stop codon included. The tokenizer takes DNA (A/C/G/T/U,
any case, whitespace ignored), cuts it into codons and puts `<BOS_CDS>` first:

```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

tok = AutoTokenizer.from_pretrained("./{dir_name}")
model = AutoModelForCausalLM.from_pretrained("./{dir_name}")
ids = tok("ATGAAAGCTTAA<EOS_CDS>", return_tensors="pt").input_ids   # <BOS_CDS> ATG AAA GCT TAA <EOS_CDS>
logp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).sum()
print(tok.decode(ids[0], skip_special_tokens=True))                # ATGAAAGCTTAA

generate = pipeline("text-generation", model="./{dir_name}")
print(generate("ATGAAAGCT")[0]["generated_text"])                 # a sampled gene: DNA, no special tokens

out = model.generate(**tok("ATGAAAGCT", return_tensors="pt"))    # the same defaults
print(tok.decode(out[0], skip_special_tokens=True))               # DNA without <BOS_CDS> and <EOS_CDS>
```

Generation continues the DNA codon by codon and, without arguments (`generation_config.json`),
samples from the full distribution over codons and `<EOS_CDS>` (temperature 1; greedy decoding
falls into repeats such as AAA AAA ...) until `<EOS_CDS>` or until the prompt and the continuation
fill the {cfg.block_size}-token context. `max_length=N` caps prompt and continuation at N tokens,
`do_sample=False` decodes greedily.

## Intended use and limits

- Research and teaching: codon-usage modelling, scoring and comparing CDS of the genomes above,
  variant-effect exploration, interpretability. Not validated for any clinical, diagnostic or
  biosafety decision; the training set is a handful of genomes, not the diversity of prokaryotes.
- One gene per sequence, starting with `<BOS_CDS>`. Training packed several genes per window with
  a per-gene attention mask and per-gene positions; the plain causal mask of `LlamaForCausalLM`
  would let genes packed into one sequence see each other.
- Context: {cfg.block_size} tokens (`<BOS_CDS>` + {cfg.block_size - 1} codons). Positions past it were never
  trained; score longer genes with overlapping windows (`codonlm eval-perplexity`, `codonlm query
  --mode score`), as the perplexities above were.
- Input must be in-frame coding DNA: a base other than A/C/G/T/U, or a length that is not a
  multiple of 3, makes the tokenizer raise ("Missing [UNK] token") instead of returning unknown
  ids: check the sequence (`codonlm query` names the bad position).
"""
