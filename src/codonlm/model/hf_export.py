"""Export TinyGPT as a Hugging Face `LlamaForCausalLM` with its tokenizer and a model card.

TinyGPT uses Llama's conventions (RMSNorm in float32 then weight, rotate_half RoPE on split
halves, SwiGLU, no biases, tied embeddings), so the export only splits the fused q/k/v and
gate/up matrices; no permutation is needed and logits match to float tolerance.

The tokenizer is a `tokenizers` word-level vocabulary of our 68 tokens (ids as `codons.ITOS`)
behind a normaliser (whitespace dropped, upper case, U -> T) and a pre-tokeniser that cuts DNA
into codons; it prepends `<BOS_CDS>` as the model expects and pads with `<PAD>`. It has no
unknown token on purpose: a base other than A/C/G/T/U or a length that is not a multiple of 3
raises instead of giving silent `<unk>` ids. Files: config.json, generation_config.json,
model.safetensors, tokenizer.json (+ tokenizer_config.json), itos.json, README.md.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from codonlm.data.codons import BOS, EOS, HOST_OFFSET, ITOS, PAD, SEP, host_itos
from codonlm.errors import UserError
from codonlm.model.model_card import model_card, run_facts
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


def codon_tokenizer(block_size: int, hosts: list[str] | tuple = ()):
    """A `PreTrainedTokenizerFast` that gives the ids of `codons.encode(dna)` (`<BOS_CDS>` + codons); a
    host-conditioned model's `<HOST:name>` tokens are special tokens, written before the DNA."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(host_itos(hosts))}
    # unk_token names no vocabulary entry: an unknown piece (a bad base, a leftover 1-2 bases) raises
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    upper = [normalizers.Replace(c, c.upper()) for c in "acgt"]
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\s+"), ""), *upper, normalizers.Replace("u", "T"), normalizers.Replace("U", "T")]
    )
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(".{1,3}"), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{ITOS[BOS]} $A", pair=f"{ITOS[BOS]} $A {ITOS[BOS]} $B", special_tokens=[(ITOS[BOS], BOS)]
    )
    tok.decoder = decoders.Fuse()  # codons joined with no spaces: DNA back
    host_tokens = host_itos(hosts)[HOST_OFFSET:]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=ITOS[BOS], eos_token=ITOS[EOS], pad_token=ITOS[PAD], sep_token=ITOS[SEP],
        model_max_length=block_size, padding_side="left", clean_up_tokenization_spaces=False,
        **({"additional_special_tokens": host_tokens} if host_tokens else {}),
    )


def generation_config(block_size: int, n_hosts: int = 0):
    """What `generate()` and `pipeline("text-generation")` do without arguments: stop at `<EOS_CDS>` or
    when prompt and continuation fill the context (`max_length`: positions past it were never trained,
    and the pipeline's own default, 256 new tokens, runs past it), and sample from the full distribution
    over codons and `<EOS_CDS>` as `codonlm query --mode generate` does (greedy decoding falls into
    repeats such as AAA AAA ...)."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, suppress_tokens=[PAD, BOS, SEP, *range(HOST_OFFSET, HOST_OFFSET + n_hosts)],
                            max_length=block_size, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)


def export_hf(model: TinyGPT, out_dir: str | Path, itos: list[str] | None = None, card: str | None = None) -> Path:
    """Write the model (`save_pretrained`), its tokenizer, itos.json and README.md (`card`, else a
    minimal one from the model alone) to out_dir.

    Files are written into a temporary folder beside out_dir and moved in one by one, so an
    interrupted export does not leave half-written files.
    """
    hosts = model.cfg.hosts
    if itos is not None and list(itos) != host_itos(hosts):
        raise UserError("the checkpoint's vocabulary (itos) differs from codonlm's 68 tokens and its host tokens; "
                        "export a checkpoint trained by this version of codonlm")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    hf = to_hf_llama(model)
    hf.generation_config = generation_config(model.cfg.block_size, len(hosts))
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp") as tmp:
        tmp_dir = Path(tmp)
        hf.save_pretrained(tmp_dir)
        codon_tokenizer(model.cfg.block_size, hosts).save_pretrained(tmp_dir)
        tok_cfg = json.loads((tmp_dir / "tokenizer_config.json").read_text())
        # transformers 5 writes "TokenizersBackend"; 4.x knows only this name, which 5 maps back
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        (tmp_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
        (tmp_dir / "itos.json").write_text(json.dumps(host_itos(hosts), indent=0))
        (tmp_dir / "README.md").write_text(card or model_card(model, out_dir.name))
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp_dir.iterdir()):
            if f.is_dir():
                shutil.rmtree(out_dir / f.name, ignore_errors=True)
                shutil.move(str(f), out_dir / f.name)
            else:
                os.replace(f, out_dir / f.name)
    return out_dir


def export_run(run_id: str, out_dir: str | Path, checkpoints_dir: str | None = None,
               runs_dir: str | None = None) -> Path:
    """`codonlm export-hf`: a run's checkpoint with a card built from its run folder."""
    from codonlm.model.load import load_model

    model, cfg, state = load_model(run_id, checkpoints_dir, runs_dir=runs_dir)
    run_id = state.get("run_id", run_id)
    card = model_card(model, Path(out_dir).name, run_facts(cfg, run_id, state, runs_dir))
    return export_hf(model, out_dir, state.get("itos"), card=card)


def _export_hosts(folder: Path) -> list[str]:
    """The host names of an export's itos.json (`<HOST:name>` after the 68 fixed tokens); [] without one."""
    path = folder / "itos.json"
    itos = json.loads(path.read_text()) if path.is_file() else ITOS
    return [token[len("<HOST:"):-1] for token in itos[HOST_OFFSET:]]


def load_hf_export(folder: str | Path) -> TinyGPT:
    """A TinyGPT from a folder `export_hf` wrote (config.json + model.safetensors; safetensors runs no code):
    the inverse of `hf_state_dict`, so the export's logits and ours agree (tested)."""
    from safetensors.torch import load_file

    from codonlm.config import ModelConfig

    folder = Path(folder)
    try:
        hf = json.loads((folder / "config.json").read_text())
        weights = load_file(folder / "model.safetensors")
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: not a readable Hugging Face export ({str(exc)[:100]}); "
                        "make one with 'codonlm export-hf RUN_ID'") from None
    hosts = _export_hosts(folder)
    if hf.get("model_type") != "llama" or hf.get("vocab_size") != len(ITOS) + len(hosts):
        raise UserError(f"{folder}: not a codonlm export (model_type {hf.get('model_type')}, vocab {hf.get('vocab_size')})")
    cfg = ModelConfig(vocab_size=hf["vocab_size"], n_embd=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
                      n_head=hf["num_attention_heads"], block_size=hf["max_position_embeddings"], dropout=0.0,
                      condition_on_host=bool(hosts), hosts=hosts)
    model = TinyGPT(cfg)
    if model.blocks[0].mlp.hidden != hf["intermediate_size"]:
        raise UserError(f"{folder}: MLP width {hf['intermediate_size']} is not codonlm's for d{cfg.n_embd}")
    state = {"wte.weight": weights["model.embed_tokens.weight"], "ln_f.weight": weights["model.norm.weight"]}
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        state |= {
            f"blocks.{i}.ln_1.weight": weights[p + "input_layernorm.weight"],
            f"blocks.{i}.attn.qkv.weight": torch.cat([weights[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]),
            f"blocks.{i}.attn.proj.weight": weights[p + "self_attn.o_proj.weight"],
            f"blocks.{i}.ln_2.weight": weights[p + "post_attention_layernorm.weight"],
            f"blocks.{i}.mlp.gate_up.weight": torch.cat([weights[p + "mlp.gate_proj.weight"],
                                                         weights[p + "mlp.up_proj.weight"]]),
            f"blocks.{i}.mlp.down.weight": weights[p + "mlp.down_proj.weight"],
        }
    state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    return model.eval()
