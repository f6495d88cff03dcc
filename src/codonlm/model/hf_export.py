"""Export TinyGPT as a Hugging Face `LlamaForCausalLM` (safetensors + itos.json + model card).

TinyGPT uses Llama's conventions (RMSNorm in float32 then weight, rotate_half RoPE on split
halves, SwiGLU, no biases, tied embeddings), so the export only splits the fused q/k/v and
gate/up matrices; no permutation is needed and logits match to float tolerance.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from codonlm.data.codons import BOS, EOS, PAD
from codonlm.model.tinygpt import RMS_NORM_EPS, ROPE_THETA, TinyGPT


def hf_llama_config(model: TinyGPT):
    """The LlamaConfig that describes `model` (transformers 4.x `rope_theta` or 5.x `rope_parameters`)."""
    from transformers import LlamaConfig

    cfg = model.cfg
    kwargs = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=model.blocks[0].mlp.hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        head_dim=cfg.n_embd // cfg.n_head,
        hidden_act="silu",
        max_position_embeddings=cfg.block_size,
        rms_norm_eps=RMS_NORM_EPS,
        tie_word_embeddings=True,
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        initializer_range=0.02,
    )
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": ROPE_THETA}
    else:
        kwargs["rope_theta"] = ROPE_THETA
    return LlamaConfig(**kwargs)


def hf_state_dict(model: TinyGPT) -> dict[str, torch.Tensor]:
    """TinyGPT weights under Llama's parameter names (fused matrices split along the output dim)."""
    C = model.cfg.n_embd
    sd: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": model.wte.weight,
        "model.norm.weight": model.ln_f.weight,
    }
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.qkv.weight.split(C, dim=0)
        gate, up = block.mlp.gate_up.weight.split(block.mlp.hidden, dim=0)
        sd |= {
            p + "input_layernorm.weight": block.ln_1.weight,
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": block.attn.proj.weight,
            p + "post_attention_layernorm.weight": block.ln_2.weight,
            p + "mlp.gate_proj.weight": gate,
            p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": block.mlp.down.weight,
        }
    return {name: t.detach().float().cpu().contiguous() for name, t in sd.items()}


@torch.no_grad()
def to_hf_llama(model: TinyGPT):
    """A float32 `transformers.LlamaForCausalLM` with TinyGPT's weights (eval mode, on CPU)."""
    from transformers import LlamaForCausalLM

    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile

    hf = LlamaForCausalLM(hf_llama_config(model)).float().eval()
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise RuntimeError(f"HF export mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf


_CARD = """---
library_name: transformers
tags: [codon, genomics, llama]
---
# {name}

A small codon-level language model trained with `codonlm` (TinyGPT), exported as
`LlamaForCausalLM`: {n_layer} layers, {n_head} heads, width {n_embd}, SwiGLU hidden
{hidden}, context {block_size} tokens, {params:,} parameters, tied embeddings.

**Tokens.** One token per codon; vocabulary in `itos.json` (68 tokens):
`0 <PAD>  1 <BOS_CDS>  2 <EOS_CDS>  3 <SEP>  4..67 AAA, AAC, ..., TTT`.
A protein-coding gene is `<BOS_CDS> c1 ... cn <EOS_CDS>` (stop codon included).

**Use.** Feed one gene per sequence, starting with `<BOS_CDS>` (positions from 0):

```python
import json, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{out_dir}")
itos = json.load(open("{out_dir}/itos.json")); stoi = {{t: i for i, t in enumerate(itos)}}
ids = [stoi["<BOS_CDS>"]] + [stoi[c] for c in ["ATG", "AAA", "GCT"]]
logits = model(torch.tensor([ids])).logits
```

Training packed several genes per window with a per-gene (block-diagonal causal) attention
mask and per-gene positions, so a single gene per sequence reproduces training exactly;
Hugging Face's plain causal mask would let packed genes see each other.
"""


def export_hf(model: TinyGPT, out_dir: str | Path, itos: list[str], name: str = "codonlm TinyGPT") -> Path:
    """Write `save_pretrained` output (config.json, model.safetensors), itos.json and README.md to out_dir.

    Files are written into a temporary folder beside out_dir and moved in one by one, so an
    interrupted export does not leave half-written files.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    hf = to_hf_llama(model)
    cfg = model.cfg
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp") as tmp:
        tmp_dir = Path(tmp)
        hf.save_pretrained(tmp_dir)
        (tmp_dir / "itos.json").write_text(json.dumps(list(itos), indent=0))
        (tmp_dir / "README.md").write_text(
            _CARD.format(
                name=name,
                n_layer=cfg.n_layer,
                n_head=cfg.n_head,
                n_embd=cfg.n_embd,
                hidden=model.blocks[0].mlp.hidden,
                block_size=cfg.block_size,
                params=model.num_params(),
                out_dir=out_dir,
            )
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp_dir.iterdir()):
            if f.is_dir():
                shutil.rmtree(out_dir / f.name, ignore_errors=True)
                shutil.move(str(f), out_dir / f.name)
            else:
                os.replace(f, out_dir / f.name)
    return out_dir
