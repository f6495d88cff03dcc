"""TinyGPT: packing invariance, backend agreement, hooks, loss masking, checkpointing, HF export."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codonlm.config import ModelConfig
from codonlm.data.codons import BOS, EOS, ITOS, PAD, SEP, loss_mask
from codonlm.model.tinygpt import TinyGPT, ablate_heads, mlp_hidden_size

CFG = dict(vocab_size=68, block_size=64, n_layer=2, n_head=4, n_embd=64, dropout=0.0)


def make_model(seed: int = 0, **overrides) -> TinyGPT:
    """A small model with perturbed norm weights, so the norms are exercised too."""
    torch.manual_seed(seed)
    model = TinyGPT(ModelConfig(**(CFG | overrides)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def gene(n_codons: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([[BOS], rng.integers(4, 68, n_codons), [EOS]])


def pack(genes: list[np.ndarray], width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """One window as the NPZ stores it: genes joined by <SEP> (which belongs to the gene before it),
    <PAD> tail with segment 0, positions counted from each gene's <BOS_CDS>. Returns starts too."""
    tokens, seg, pos, starts = [], [], [], []
    for s, g in enumerate(genes, start=1):
        if tokens:
            tokens.append(SEP)
            seg.append(s - 1)
            pos.append(len(genes[s - 2]))
        starts.append(len(tokens))
        tokens += g.tolist()
        seg += [s] * g.size
        pos += list(range(g.size))
    pad = width - len(tokens)
    assert pad >= 0
    tokens, seg, pos = tokens + [PAD] * pad, seg + [0] * pad, pos + [0] * pad
    as_t = lambda x, dt: torch.tensor([x], dtype=dt)  # noqa: E731
    # NPZ dtypes: uint8 tokens, int16 segments, int32 positions (the model must accept them).
    return as_t(tokens, torch.uint8), as_t(seg, torch.int16), as_t(pos, torch.int32), starts


def alone(g: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = g.size
    return torch.tensor([g.tolist()]), torch.ones(1, n, dtype=torch.long), torch.arange(n)[None]


# ---- packing invariance --------------------------------------------------------------------------


@torch.no_grad()
def test_packing_invariance_with_sep_mask() -> None:
    model = make_model()
    a, b, c = gene(12, 1), gene(20, 2), gene(9, 3)
    idx, seg, pos, starts = pack([a, b, c], CFG["block_size"])
    ref, _ = model(*alone(b)[:1], segment_ids=alone(b)[1], positions=alone(b)[2])
    packed, _ = model(idx, segment_ids=seg, positions=pos)
    got = packed[:, starts[1] : starts[1] + b.size]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # Defaults (segments from <BOS_CDS>, positions arange(T)) give the same logits: RoPE is relative.
    derived, _ = model(idx)
    torch.testing.assert_close(derived[:, starts[1] : starts[1] + b.size], ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_packing_changes_logits_without_sep_mask() -> None:
    model = make_model(sep_mask_enabled=False)
    a, b, c = gene(12, 1), gene(20, 2), gene(9, 3)
    idx, seg, pos, starts = pack([a, b, c], CFG["block_size"])
    ref, _ = model(alone(b)[0])
    packed, _ = model(idx, segment_ids=seg, positions=pos)  # mask off: segments and positions unused
    diff = (packed[:, starts[1] : starts[1] + b.size] - ref).abs().max()
    assert diff > 1e-3


@torch.no_grad()
def test_continuation_chunk_positions_are_relative() -> None:
    """A chunk of a long gene keeps its absolute positions (e.g. 63..); logits equal positions 0.."""
    model = make_model()
    chunk = torch.tensor([gene(40, 7)[1:-1].tolist()])
    shifted, _ = model(chunk, segment_ids=torch.ones_like(chunk), positions=torch.arange(63, 63 + 40)[None])
    base, _ = model(chunk, segment_ids=torch.ones_like(chunk), positions=torch.arange(40)[None])
    torch.testing.assert_close(shifted, base, atol=1e-4, rtol=0)


# ---- backends ------------------------------------------------------------------------------------


def batch(seed: int = 0, B: int = 3, T: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(4, 68, (B, T + 1), generator=g)
    idx[:, 0] = BOS
    idx[0, 20] = BOS
    idx[1, 10], idx[1, 11] = SEP, BOS
    idx[2, 30:] = PAD
    return idx[:, :-1], idx[:, 1:]


@pytest.mark.parametrize("sep_mask", [True, False])
def test_sdpa_and_math_backends_agree(sep_mask: bool) -> None:
    model = make_model(sep_mask_enabled=sep_mask).train()
    idx, targets = batch()
    grads = {}
    for backend in ("sdpa", "math"):
        model.set_attn_backend(backend)
        model.zero_grad(set_to_none=True)
        logits, loss = model(idx, targets)
        loss.backward()
        grads[backend] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(grads["sdpa"][0], grads["math"][0], atol=1e-5, rtol=1e-5)
    for gs, gm in zip(grads["sdpa"][1], grads["math"][1], strict=True):
        torch.testing.assert_close(gs, gm, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sep_mask", [True, False])
@torch.no_grad()
def test_flex_backend_agrees_with_sdpa(sep_mask: bool) -> None:
    model = make_model(sep_mask_enabled=sep_mask)
    idx, _ = batch(T=64)
    model.set_attn_backend("sdpa")
    ref, _ = model(idx)
    model.set_attn_backend("flex")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "flex_attention called without torch.compile"
            got, _ = model(idx)
    except (NotImplementedError, RuntimeError) as exc:
        pytest.skip(f"FlexAttention forward does not run on CPU in this torch: {exc}")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_sdpa_and_math_agree_under_bf16_autocast() -> None:
    """The CPU default switches to math under bf16; both must give the same model to bf16 tolerance."""
    model = make_model()
    idx, targets = batch()
    out = {}
    for backend in ("sdpa", "math"):
        model.set_attn_backend(backend)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out[backend] = model(idx, targets)
    torch.testing.assert_close(out["sdpa"][0].float(), out["math"][0].float(), atol=5e-2, rtol=0)
    assert abs(out["sdpa"][1].item() - out["math"][1].item()) < 1e-2


def test_backend_choice_by_device_and_dtype() -> None:
    model = make_model()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert model._backend(cpu, torch.float32, 256) == "sdpa"
    assert model._backend(cpu, torch.bfloat16, 256) == "math"
    assert model._backend(cpu, torch.bfloat16, 4096) == "sdpa"
    assert model._backend(cuda, torch.bfloat16, 256) == "sdpa"
    model.use_flex = True
    assert model._backend(cuda, torch.bfloat16, 256) == "flex"
    assert model._backend(cpu, torch.float32, 256) == "sdpa"
    model.set_attn_backend("math")
    assert model._backend(cuda, torch.float32, 256) == "math"


def test_unknown_backend_rejected() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        make_model().set_attn_backend("cudnn")


# ---- run_with_cache ------------------------------------------------------------------------------


def test_run_with_cache_hooks() -> None:
    model = make_model()
    a, b = gene(14, 4), gene(25, 5)
    idx, seg, pos, _ = pack([a, b], 48)
    B, T = idx.shape
    H, C = CFG["n_head"], CFG["n_embd"]
    D = C // H
    logits, cache = model.run_with_cache(idx, segment_ids=seg)
    with torch.no_grad():
        ref, _ = model(idx, segment_ids=seg)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)

    required = ["hook_embed", "ln_final.hook_normalized"]
    for i in range(CFG["n_layer"]):
        required += [
            f"blocks.{i}.{n}"
            for n in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
        ]
        required += [f"blocks.{i}.attn.{n}" for n in ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z")]
    assert set(required) <= set(cache)
    assert set(cache) == set(model.hook_names())
    for name, t in cache.items():
        if name.endswith("hook_pattern"):
            assert t.shape == (B, H, T, T), name
        elif name.endswith("hook_result"):
            assert t.shape == (B, T, H, C), name
        elif name.endswith("mlp.hook_post"):
            assert t.shape == (B, T, mlp_hidden_size(C)), name
        elif ".attn." in name:
            assert t.shape == (B, T, H, D), name
        else:
            assert t.shape == (B, T, C), name
        assert not t.requires_grad

    allowed = torch.ones(T, T, dtype=torch.bool).tril() & (seg[0][:, None] == seg[0][None, :])
    for i in range(CFG["n_layer"]):
        pattern = cache[f"blocks.{i}.attn.hook_pattern"]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(B, H, T), atol=1e-5, rtol=0)
        assert torch.all(pattern[..., ~allowed] == 0)
    # residual stream bookkeeping
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], cache["hook_embed"])
    torch.testing.assert_close(
        cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_mid"] + cache["blocks.1.hook_mlp_out"]
    )
    torch.testing.assert_close(model.lm_head(cache["ln_final.hook_normalized"]), logits)


def test_run_with_cache_names_filter_and_training_path_unchanged() -> None:
    model = make_model()
    idx, _ = batch()
    _, cache = model.run_with_cache(idx, names_filter=lambda n: n.endswith("hook_pattern"))
    assert sorted(cache) == [f"blocks.{i}.attn.hook_pattern" for i in range(CFG["n_layer"])]
    _, cache = model.run_with_cache(idx, names_filter=["hook_embed"])
    assert list(cache) == ["hook_embed"]
    assert model.attn_backend is None  # the analysis path does not change the training backend


def test_head_ablation_hook_zeroes_one_head_everywhere() -> None:
    """Zeroing head (1, 2) at hook_z equals an independent reference (the head's columns of the output
    projection zeroed), in forward, in run_with_cache and in the KV-cache decoder; nothing is left behind."""
    model = make_model()
    idx, targets = batch()
    D = CFG["n_embd"] // CFG["n_head"]
    with torch.no_grad():
        logits, loss = model(idx, targets)
        with model.hooks(ablate_heads(1, [2])):
            ablated_logits, ablated_loss = model(idx, targets)
            _, cache = model.run_with_cache(idx, names_filter="blocks.1.attn.hook_z")
            next_logits, _ = model.extend(idx[:, :5], None, 0)
        assert not model.has_active_hooks()
        plain_next, _ = model.extend(idx[:, :5], None, 0)
        restored, _ = model(idx, targets)
        reference = make_model()
        reference.blocks[1].attn.proj.weight[:, 2 * D : 3 * D] = 0.0
        expected, _ = reference(idx, targets)
    assert (cache["blocks.1.attn.hook_z"][:, :, 2] == 0).all()  # the head's output is gone
    assert (cache["blocks.1.attn.hook_z"][:, :, 1] != 0).any()  # its neighbour's is not
    torch.testing.assert_close(ablated_logits, expected, atol=1e-6, rtol=1e-6)
    assert abs(ablated_loss.item() - loss.item()) > 1e-6
    assert not torch.allclose(next_logits, plain_next)  # incremental decoding honours the hook too
    torch.testing.assert_close(restored, logits, atol=0, rtol=0)


def test_noop_hooks_change_nothing_and_fast_path_is_kept() -> None:
    """A read-only hook on every point gives forward's logits (fp32, <= 1e-6); without a pattern hook the
    fused kernel runs, so a cache of residuals is bit-identical to forward."""
    model = make_model()
    a, b = gene(14, 4), gene(25, 5)
    idx, seg, pos, _ = pack([a, b], 48)
    with torch.no_grad():
        ref, _ = model(idx, segment_ids=seg, positions=pos)
        hooked = model.run_with_hooks(idx, [(lambda _n: True, lambda x, hook: None)], segment_ids=seg, positions=pos)
    assert (hooked - ref).abs().max().item() <= 1e-6
    logits, cache = model.run_with_cache(idx, segment_ids=seg, positions=pos, names_filter=lambda n: "resid" in n)
    torch.testing.assert_close(logits, ref, atol=0, rtol=0)
    assert len(cache) == 3 * CFG["n_layer"]


def test_hook_replacement_patches_and_per_head_results_sum_to_the_output() -> None:
    model = make_model()
    idx, _ = batch()
    _, clean = model.run_with_cache(idx)
    for i in range(CFG["n_layer"]):  # hook_result: each head's share after the projection
        torch.testing.assert_close(clean[f"blocks.{i}.attn.hook_result"].sum(2), clean[f"blocks.{i}.hook_attn_out"],
                                   atol=1e-5, rtol=1e-5)
        assert clean[f"blocks.{i}.mlp.hook_post"].shape[-1] == mlp_hidden_size(CFG["n_embd"])
    corrupted = idx.clone()
    corrupted[:, 3] = (corrupted[:, 3] - 4 + 1) % 64 + 4
    last = f"blocks.{CFG['n_layer'] - 1}.hook_resid_post"
    with torch.no_grad():
        clean_logits, _ = model(idx)
        patched = model.run_with_hooks(corrupted, [(last, lambda x, hook: clean[last])])
        steered = model.run_with_hooks(idx, [("blocks.0.hook_resid_mid", lambda x, hook: x + 1.0)])
    torch.testing.assert_close(patched, clean_logits, atol=1e-5, rtol=1e-5)  # the whole last residual restores it
    assert not torch.allclose(steered, clean_logits)


def test_hook_that_raises_leaves_no_hook_behind() -> None:
    model = make_model()
    idx, _ = batch()

    def broken(x, hook):
        raise RuntimeError(f"boom at {hook.name}")

    with pytest.raises(RuntimeError, match="boom at blocks.0.attn.hook_pattern"):
        model.run_with_hooks(idx, [("blocks.0.attn.hook_pattern", broken)])
    assert not model.has_active_hooks()
    with pytest.raises(KeyError, match="no hook point"):
        model.run_with_hooks(idx, [("blocks.9.hook_resid_post", broken)])
    assert not model.has_active_hooks()


def test_plain_torch_hooks_reach_hook_points() -> None:
    model = make_model()
    idx, _ = batch()
    seen = []
    handle = model.hook_dict["blocks.0.hook_resid_post"].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad():
            model(idx)
    finally:
        handle.remove()
    assert seen == [(*idx.shape, CFG["n_embd"])]
    assert model.hook_names()[0] == "hook_embed" and model.hook_names()[-1] == "ln_final.hook_normalized"


# ---- loss ----------------------------------------------------------------------------------------


def test_loss_ignores_pad_bos_sep_targets() -> None:
    model = make_model()
    idx, targets = batch()
    assert not loss_mask(targets).all()  # the batch really has PAD/BOS/SEP targets
    logits, loss = model(idx, targets)
    logp = torch.log_softmax(logits.double(), dim=-1)
    picked = logp.gather(-1, targets[..., None]).squeeze(-1)
    keep = (targets != PAD) & (targets != BOS) & (targets != SEP)
    manual = -(picked[keep]).mean()
    torch.testing.assert_close(loss.double(), manual, atol=1e-6, rtol=1e-6)

    # label smoothing is passed through, still over the counted targets only
    _, smoothed = model(idx, targets, label_smoothing=0.1)
    ref = F.cross_entropy(logits[keep].float(), targets[keep], label_smoothing=0.1)
    torch.testing.assert_close(smoothed, ref, atol=1e-6, rtol=1e-6)

    # no counted target: zero, not NaN
    empty = torch.full_like(targets, PAD)
    _, zero = model(idx, empty)
    assert zero.item() == 0.0


def test_loss_finite_under_bf16_autocast() -> None:
    model = make_model().train()
    idx, targets = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets, positions=torch.arange(idx.shape[1]).expand_as(idx))
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        _, fp32_loss = model(idx, targets)
    assert abs(loss.item() - fp32_loss.item()) < 0.05


# ---- gradient checkpointing ----------------------------------------------------------------------


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradient_checkpointing_same_gradients(dropout: float) -> None:
    idx, targets = batch()
    results = []
    for ckpt in (False, True):
        model = make_model(dropout=dropout).train()
        model.gradient_checkpointing = ckpt
        torch.manual_seed(123)  # same dropout masks; checkpoint replays the RNG state
        _, loss = model(idx, targets)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-5)


# ---- sizes ---------------------------------------------------------------------------------------


def test_sizes() -> None:
    assert mlp_hidden_size(256) == 704 and mlp_hidden_size(768) == 2048
    assert all(mlp_hidden_size(d) % 64 == 0 for d in (8, 64, 96, 256, 512))
    model = make_model()
    assert model.lm_head.weight is model.wte.weight
    # parameter count: the same architecture built by transformers (an independent implementation)
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(vocab_size=68, hidden_size=64, intermediate_size=mlp_hidden_size(64),
                                  num_hidden_layers=2, num_attention_heads=4, tie_word_embeddings=True)
    assert model.num_params() == transformers.LlamaForCausalLM(hf).num_parameters()


def test_flops_per_token_matches_counted_matmuls() -> None:
    """6N + 12 L C T against torch's FlopCounterMode on a real forward (x3 for forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_model()
    model.set_attn_backend("math")  # explicit matmuls, full T x T scores as the estimate assumes
    T = CFG["block_size"]
    idx = torch.randint(4, 68, (1, T))
    with FlopCounterMode(display=False) as counter:
        model(idx)
    counted = 3 * counter.get_total_flops() / T
    # 6N counts the norm weights too (a negligible 6 FLOPs each); the counter sees matmuls only
    norms = sum(p.numel() for n, p in model.named_parameters() if "ln" in n)
    assert norms > 0
    assert counted == pytest.approx(model.flops_per_token(T) - 6 * norms, rel=1e-9)


# ---- Hugging Face export -------------------------------------------------------------------------


def test_hf_export_matches(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from codonlm.model.hf_export import export_hf

    model = make_model()
    out = export_hf(model, tmp_path / "hf", ITOS)
    assert json.loads((out / "itos.json").read_text()) == ITOS
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".hf.tmp*"))

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    cfg = hf.config
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (BOS, EOS, PAD)
    assert cfg.tie_word_embeddings and cfg.max_position_embeddings == CFG["block_size"]
    g = torch.tensor([gene(40, 9).tolist()])
    with torch.no_grad():
        ours, _ = model(g)
        theirs = hf(g).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_rope_matches_llama_reference() -> None:
    """apply_rope (halves swapped, sign folded into sin) equals transformers' Llama rotate_half formula."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from codonlm.model.tinygpt import apply_rope, rope_cos_sin

    x = torch.randn(2, 5, 3, 16)
    cos, sin = rope_cos_sin(torch.arange(5)[None], 16)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    sin_signed = torch.cat((-sin[..., :8], sin[..., 8:]), dim=-1)
    expected = x * cos + llama.rotate_half(x) * sin
    torch.testing.assert_close(apply_rope(x, cos, sin_signed), expected)


@pytest.mark.parametrize("sep_mask", [True, False])
def test_kv_cache_extend_matches_forward(sep_mask):
    torch.manual_seed(0)
    model = TinyGPT(ModelConfig(block_size=64, n_layer=2, n_head=2, n_embd=32, sep_mask_enabled=sep_mask)).eval()
    seq = torch.randint(4, 68, (2, 30))
    seq[:, 0] = 1
    with torch.no_grad():
        full, _ = model(seq)
    logits, past = model.extend(seq[:, :5], None, 0)
    torch.testing.assert_close(logits, full[:, 4], atol=1e-5, rtol=1e-4)
    for t in range(5, 30):
        logits, past = model.extend(seq[:, t : t + 1], past, t)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [None, 12])
def test_extend_math_and_sdpa_agree_with_a_cached_prefix_and_a_window(window):
    """The math backend (CPU bf16's) takes extend's mask as an additive bias: same logits as sdpa's boolean mask,
    for chunks continuing a cached prefix, with and without a sliding window."""
    torch.manual_seed(0)
    model = TinyGPT(ModelConfig(block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    seq = torch.randint(4, 68, (3, 30))
    logits = {}
    for backend in ("sdpa", "math"):
        model.set_attn_backend(backend)
        _, past = model.extend(seq[:1, :10], None, 0, window=window)
        logits[backend], _ = model.extend(seq[:, 10:], past, 10, all_logits=True, window=window)
    model.set_attn_backend(None)
    torch.testing.assert_close(logits["math"], logits["sdpa"], atol=1e-5, rtol=1e-4)
