"""TinyGPT: a small Llama-architecture decoder over codon tokens, in one file (nanoGPT style).

Layout (maps 1:1 onto `transformers.LlamaForCausalLM`, see `hf_export.py`):

    wte -> n_layer x [x + attn(rmsnorm(x)); x + mlp(rmsnorm(x))] -> rmsnorm -> lm_head (tied to wte)

- Attention: rotary positions (theta 10000, Llama's rotate_half convention on split halves, so
  weights copy to Hugging Face with no permutation), no biases. Causal, and with
  `sep_mask_enabled` block-diagonal over CDS segments, so a gene's logits do not depend on what
  it is packed beside (RoPE is relative, so per-CDS and global positions give the same logits).
- MLP: SwiGLU, hidden size a multiple of 64 near 8/3 * n_embd, no biases.
- q/k/v and gate/up are each one fused matmul (fewer, larger GEMMs are faster on CPU); the
  export splits them.

Attention backends (one module; `TinyGPT.set_attn_backend` forces one, tests compare them):

    "sdpa"  F.scaled_dot_product_attention with a boolean [B,1,T,T] mask (fused flash kernel on
            CPU), or is_causal=True when the segment mask is off. CPU float32, CUDA eager, MPS.
    "math"  softmax(q k^T / sqrt(D) + bias) v with an additive 0/-inf bias from the same mask.
            Chosen on CPU under bf16/fp16 for T <= 1024: there two bf16 GEMMs plus a softmax
            run about 2x faster than the CPU flash kernel (`python bench/train_throughput.py`
            prints both). Also used whenever a hook reads or replaces `hook_pattern`, so the
            pattern is exactly the attention that produced the logits.
    "flex"  FlexAttention with a document-causal BlockMask, which skips fully masked tiles. CUDA
            when `use_flex` is set (the trainer sets it when it compiles the model). It has no
            attention-probability dropout (residual dropout still applies), and in torch 2.13
            no backward on CPU.

Hooks: one mechanism, TransformerLens style. Every named activation passes through a `HookPoint`
(an identity module; `model.hook_dict[name]`), so plain torch forward hooks reach it and may
return a replacement. `hooks(...)` / `run_with_hooks` / `run_with_cache` register hooks for one
call and always remove them; head ablation is a hook on `blocks.{i}.attn.hook_z`. Forward, the
training path and `extend` (the KV-cache decoder) run the same Block code, so a hook applies to
all of them. With no hook registered, each point costs one module call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks
from torch.utils.checkpoint import checkpoint

from codonlm.config import ModelConfig
from codonlm.data.codons import BOS, loss_mask

ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-6
INIT_STD = 0.02
BACKENDS = ("sdpa", "flex", "math")

Cache = dict[str, Tensor]
NamesFilter = None | str | Iterable[str] | Callable[[str], bool]


def mlp_hidden_size(n_embd: int) -> int:
    """SwiGLU hidden width: nearest multiple of 64 to 8/3 * n_embd (keeps MLP params near 8 d^2, GEMM-friendly)."""
    return max(64, 64 * round(8 * n_embd / 3 / 64))


class RMSNorm(nn.Module):
    """Llama RMSNorm: normalise in float32, cast back, then scale (same order as Hugging Face)."""

    def __init__(self, dim: int, eps: float = RMS_NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float = ROPE_THETA) -> tuple[Tensor, Tensor]:
    """cos, sin [..., T, head_dim] for integer positions, computed in float32 like Llama's rotary embedding."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """Llama's x * cos + rotate_half(x) * sin, computed as x * cos + swap_halves(x) * sin_signed
    with sin_signed = [-sin, sin] (halves), which saves the negation pass. cos/sin broadcast
    against x and are already in x's dtype (no float32 promotion under autocast)."""
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
    return x * cos + swapped * sin_signed


def _keep(names_filter: NamesFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda _name: True
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    wanted = set(names_filter)
    return lambda name: name in wanted


class HookPoint(nn.Module):
    """An identity module at a named activation (TransformerLens style).

    Plain torch hooks work on it (`model.hook_dict[name].register_forward_hook(...)`), and a forward
    hook that returns a tensor replaces the activation: ablate, patch, steer. `TinyGPT.hooks`,
    `run_with_hooks` and `run_with_cache` register such hooks for one call and always remove them.
    With no hook registered the module only passes its input through.
    """

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    @property
    def active(self) -> bool:
        """Whether a hook is registered (some activations, like per-head results, are only computed then)."""
        return bool(self._forward_hooks or self._forward_pre_hooks)

    def __call__(self, x: Tensor) -> Tensor:
        # Skip nn.Module's call machinery when nothing listens: a hook point then costs one attribute test,
        # which matters in token-by-token decoding (about 60 points per token).
        if self._forward_hooks or self._forward_pre_hooks or _global_forward_hooks or _global_forward_pre_hooks:
            return super().__call__(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return self.name


HookFn = Callable[[Tensor, HookPoint], Tensor | None]
HookSpec = tuple[str | Callable[[str], bool], HookFn]


def _identity(x: Tensor) -> Tensor:
    return x


def ablate_heads(layer: int, heads: Iterable[int], scale: float = 0.0) -> list[HookSpec]:
    """Hooks that scale (default: zero) heads of one layer at `hook_z`, before the output projection:
    head ablation, e.g. `with model.hooks(ablate_heads(1, [2])): ...`."""
    heads = list(heads)

    def scaled(z: Tensor, _hook: HookPoint) -> Tensor:
        z = z.clone()
        z[:, :, heads] *= scale
        return z

    return [(f"blocks.{layer}.attn.hook_z", scaled)]


class Attention(nn.Module):
    """Multi-head attention with rotary positions. One implementation for every path: training
    (masks by backend), analysis (hooks) and incremental decoding (`past` keys/values)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        name = f"blocks.{layer}.attn"
        for hook in ("q", "k", "v", "rot_q", "rot_k", "pattern", "z", "result"):
            setattr(self, f"hook_{hook}", HookPoint(f"{name}.hook_{hook}"))

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: object, backend: str,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B,T,C] -> (output [B,T,C], this call's keys and values with `past` prepended [B,H,P+T,D]).

        `mask` is what `TinyGPT._mask` built for the backend, or None: plain causal when there is no
        `past`, every cached key visible when there is (the decoder passes a [T, P+T] mask for T > 1).
        """
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim)
        q, k, v = self.hook_q(qkv[:, :, 0]), self.hook_k(qkv[:, :, 1]), self.hook_v(qkv[:, :, 2])
        if self.hook_q.active or self.hook_k.active:  # a hook may have replaced q or k: rotate each
            q, k = apply_rope(q, cos.squeeze(-3), sin.squeeze(-3)), apply_rope(k, cos.squeeze(-3), sin.squeeze(-3))
        else:  # q and k rotated in one pass
            q, k = apply_rope(qkv[:, :, :2], cos, sin).unbind(2)
        q, k = self.hook_rot_q(q), self.hook_rot_k(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        if past is not None:
            pk, pv = (t.expand(B, -1, -1, -1) for t in past)
            k, v = torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2)
        p_drop = self.dropout if self.training else 0.0
        if backend == "math" or self.hook_pattern.active:
            y = self._math(q, k, v, mask, p_drop)
        elif backend == "flex":
            from torch.nn.attention.flex_attention import flex_attention

            y = flex_attention(q, k, v, block_mask=mask)
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, is_causal=past is None)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
        z = self.hook_z(y.transpose(1, 2))  # [B, T, H, D]
        if self.hook_result.active:  # each head's share of the output, [B, T, H, C]; they sum to it
            w = self.proj.weight.view(C, self.n_head, self.head_dim)
            return self.hook_result(torch.einsum("bthd,chd->bthc", z, w)).sum(2), (k, v)
        return self.proj(z.reshape(B, T, C)), (k, v)

    def _math(self, q: Tensor, k: Tensor, v: Tensor, mask: object, p_drop: float) -> Tensor:
        """Explicit attention, softmax(q k^T / sqrt(D) + bias) v, with the probabilities at hook_pattern.

        `mask` is the additive 0/-inf bias the math backend is given in training, a boolean mask
        (True = attend) from the sdpa path, or None (causal without `past`, else everything)."""
        # Scale q [B,H,T,D] rather than the scores [B,H,T,T]: same result, a quarter of the work at
        # T=256, D=64 (exact in bf16 when D is a power of 4). The bias is added in place: matmul
        # does not keep its output for backward.
        scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
        Tq, Tk = scores.shape[-2:]
        if mask is None and Tq == Tk and Tq > 1:
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill_(~mask, float("-inf"))
        elif mask is not None:
            scores = scores.add_(mask)
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        return F.dropout(pattern, p_drop, self.training) @ v


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); gate and up share one matmul."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.hidden = mlp_hidden_size(cfg.n_embd)
        self.gate_up = nn.Linear(cfg.n_embd, 2 * self.hidden, bias=False)
        self.down = nn.Linear(self.hidden, cfg.n_embd, bias=False)
        self.hook_post = HookPoint(f"blocks.{layer}.mlp.hook_post")

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.hook_post(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = RMSNorm(cfg.n_embd)
        self.attn = Attention(cfg, layer)
        self.ln_2 = RMSNorm(cfg.n_embd)
        self.mlp = MLP(cfg, layer)
        self.drop = nn.Dropout(cfg.dropout)
        for hook in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            setattr(self, f"hook_{hook}", HookPoint(f"blocks.{layer}.hook_{hook}"))

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: object, backend: str,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        drop = self.drop if self.training else _identity  # no module call per block when decoding
        x = self.hook_resid_pre(x)
        attn_out, kv = self.attn(self.ln_1(x), cos, sin, mask, backend, past)
        x = self.hook_resid_mid(x + self.hook_attn_out(drop(attn_out)))
        x = self.hook_resid_post(x + self.hook_mlp_out(drop(self.mlp(self.ln_2(x)))))
        return x, kv


class TinyGPT(nn.Module):
    """Llama-style decoder over codon tokens with a per-CDS (block-diagonal causal) attention mask.

    Flags the trainer may set: `gradient_checkpointing` (recompute each block in backward),
    `use_flex` (FlexAttention on CUDA; set when compiling), `attn_backend` (force one of
    BACKENDS, None = choose by device).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.head_dim = cfg.n_embd // cfg.n_head
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = RMSNorm(cfg.n_embd)
        self.hook_embed = HookPoint("hook_embed")
        self.hook_final = HookPoint("ln_final.hook_normalized")
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in nanoGPT / tie_word_embeddings
        self.gradient_checkpointing = False
        self.use_flex = False
        self.attn_backend: str | None = None
        self.apply(self._init_weights)
        # nanoGPT: residual-branch output projections scaled by 1/sqrt(2 * n_layer).
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.n_layer))
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.n_layer))
        points = {m.name: m for m in self.modules() if isinstance(m, HookPoint)}
        self.hook_dict: dict[str, HookPoint] = {n: points[n] for n in self._forward_order()}

    def _forward_order(self) -> list[str]:
        attn = [f"attn.hook_{n}" for n in ("q", "k", "v", "rot_q", "rot_k", "pattern", "z", "result")]
        block = ["hook_resid_pre", *attn, "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out",
                 "hook_resid_post"]
        return ["hook_embed", *(f"blocks.{i}.{n}" for i in range(self.cfg.n_layer) for n in block),
                "ln_final.hook_normalized"]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    # ---- sizes ---------------------------------------------------------------------------------

    def num_params(self) -> int:
        """Parameter count, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B / nanoGPT estimate_mfu:

            6 * N  +  12 * n_layer * n_embd * T

        N counts every weight matrix once (the tied embedding as the lm_head matmul, norms are
        negligible); the second term is the QK^T and PV matmuls at full T x T, so the causal and
        per-CDS masks (which skip work) are not credited. T defaults to block_size.
        """
        T = seq_len or self.cfg.block_size
        return 6.0 * self.num_params() + 12.0 * self.cfg.n_layer * self.cfg.n_embd * T

    # ---- backends and masks --------------------------------------------------------------------

    def set_attn_backend(self, backend: str | None) -> None:
        """Force "sdpa", "flex" or "math" (tests compare them); None restores the choice by device."""
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
        self.attn_backend = backend

    def _backend(self, device: torch.device, dtype: torch.dtype, T: int) -> str:
        """Forced backend, else: CUDA -> flex if use_flex else sdpa; CPU -> math for bf16/fp16 at
        T <= 1024 (about 2x faster than the CPU flash kernel there; keeps [B,H,T,T] probabilities
        for backward, hence the cap), sdpa otherwise (fp32 flash is as fast as math and lighter)."""
        if self.attn_backend is not None:
            return self.attn_backend
        if device.type == "cuda":
            return "flex" if self.use_flex else "sdpa"
        if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and T <= 1024:
            return "math"
        return "sdpa"

    def _mask(self, idx: Tensor, segment_ids: Tensor | None, backend: str, dtype: torch.dtype) -> object:
        """What the backend takes: sdpa a bool [B,1,T,T] mask (True = attend) or None (plain causal);
        math an additive 0/-inf bias in the compute dtype; flex a document-causal BlockMask."""
        B, T = idx.shape
        if not self.cfg.sep_mask_enabled:
            if backend == "sdpa":
                return None
            segment_ids = torch.zeros_like(idx)
        elif segment_ids is None:
            segment_ids = torch.cumsum(idx == BOS, dim=1)
        if backend == "flex":
            from torch.nn.attention.flex_attention import create_block_mask

            seg = segment_ids

            def document_causal(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
                return (kv <= q) & (seg[b, q] == seg[b, kv])

            return create_block_mask(document_causal, B, None, T, T, device=idx.device)
        causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
        allowed = (causal & (segment_ids[:, :, None] == segment_ids[:, None, :])).unsqueeze(1)
        if backend == "math":
            return torch.zeros(allowed.shape, dtype=dtype, device=idx.device).masked_fill_(
                ~allowed, float("-inf")
            )
        return allowed

    def _rope(self, idx: Tensor, positions: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and signed sin (see apply_rope), shaped [T,1,1,D] or [B,T,1,1,D] to broadcast over
        the (q|k, head) dims of the [B,T,2,H,D] q/k slice."""
        if positions is None or not self.cfg.sep_mask_enabled:
            positions = torch.arange(idx.shape[1], device=idx.device)
        return self._rope_tables(positions, dtype)

    def _rope_tables(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        half = self.head_dim // 2
        cos, sin = rope_cos_sin(positions, self.head_dim)
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return cos[..., None, None, :].to(dtype), sin[..., None, None, :].to(dtype)

    # ---- forward -------------------------------------------------------------------------------

    def _hidden(self, idx: Tensor, segment_ids: Tensor | None, positions: Tensor | None) -> Tensor:
        if idx.dtype != torch.long:
            idx = idx.long()
        x = self.drop(self.hook_embed(self.wte(idx)))
        # q/k/v leave a Linear, so under autocast they are in the autocast dtype: mask and cos/sin match it.
        on = torch.is_autocast_enabled(idx.device.type)
        dtype = torch.get_autocast_dtype(idx.device.type) if on else x.dtype
        backend = self._backend(idx.device, dtype, idx.shape[1])
        if backend == "flex" and self.has_active_hooks():
            backend = "sdpa"  # hooks run eagerly; the flex BlockMask path is for compiled training
        mask = self._mask(idx, segment_ids, backend, dtype)
        cos, sin = self._rope(idx, positions, dtype)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and not self.has_active_hooks()
        for block in self.blocks:
            if ckpt:
                x, _ = checkpoint(block, x, cos, sin, mask, backend, use_reentrant=False)
            else:
                x, _ = block(x, cos, sin, mask, backend)
        return self.hook_final(self.ln_f(x))

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        segment_ids: Tensor | None = None,
        positions: Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> tuple[Tensor, Tensor | None]:
        """idx [B, T] token ids -> (logits [B, T, vocab], mean loss over scored targets or None).

        segment_ids [B, T] (default: cumsum of <BOS_CDS>) drive the per-CDS mask; positions
        [B, T] (per-CDS, from the NPZ) drive RoPE when the mask is on, else arange(T).
        """
        logits = self.lm_head(self._hidden(idx, segment_ids, positions))
        if targets is None:
            return logits, None
        return logits, self.loss(logits, targets, label_smoothing)

    @staticmethod
    def loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Float32 cross entropy over codon and <EOS_CDS> targets only, mean over counted targets.

        Sum / count rather than ignore_index + mean, so a batch with no scored target gives 0
        (not NaN) and nothing forces a device sync.
        """
        targets = targets.long()
        keep = loss_mask(targets)
        total = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)),
            targets.masked_fill(~keep, -100).view(-1),
            ignore_index=-100,
            reduction="sum",
            label_smoothing=label_smoothing,
        )
        return total / keep.sum().clamp(min=1)

    # ---- incremental decoding -------------------------------------------------------------------

    @torch.no_grad()
    def extend(
        self,
        idx: Tensor,
        past: list[tuple[Tensor, Tensor]] | None,
        start: int,
        all_logits: bool = False,
        keep_cache: bool = True,
        window: int | None = None,
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Logits of idx [B, T] and the updated key/value cache (eval only).

        With past None, idx is a whole context (one CDS, positions from `start`). Otherwise idx
        continues the cached tokens at positions `start`..: each new token attends to every cached
        token and, causally, to the new ones before it. A cache of one row is shared by all B rows
        (one wild-type prefix under many variant suffixes). Returns the last token's logits [B, V],
        or every token's [B, T, V] with all_logits, and the cache (empty with keep_cache=False, which
        frees each layer's keys/values as soon as it is done). The same Block code as forward (and
        the same hook points), so logits equal `model(idx)` (tested) without recomputing the prefix.
        window: each token attends only to its last `window` tokens (itself included) at every layer:
        sliding-window attention, how genes longer than block_size are read (`codonlm.evaluate.sliding`).
        """
        x = self.hook_embed(self.wte(idx.long()))
        T = x.shape[1]
        P = 0 if past is None else past[0][0].shape[2]
        # as in forward: cos/sin in the autocast dtype, and the math backend where it is the faster one (CPU bf16)
        on = torch.is_autocast_enabled(idx.device.type)
        dtype = torch.get_autocast_dtype(idx.device.type) if on else x.dtype
        backend = "math" if self._backend(idx.device, dtype, P + T) == "math" else "sdpa"
        cos, sin = self._rope_tables(torch.arange(start, start + T, device=idx.device), dtype)
        mask = None
        if window is not None and P + T > window:  # query j sees keys P + j - window + 1 .. P + j
            mask = torch.ones(T, P + T, dtype=torch.bool, device=idx.device).tril(P).triu(P - window + 1)
        elif past is not None and T > 1:  # query j (after P cached keys) sees keys 0 .. P + j
            mask = torch.ones(T, P + T, dtype=torch.bool, device=idx.device).tril(P)
        if mask is not None and backend == "math":  # an additive bias: adding it to every row of scores
            # costs about a third of masked_fill_ with the broadcast boolean mask (measured, CPU bf16)
            mask = torch.zeros(mask.shape, dtype=dtype, device=idx.device).masked_fill_(~mask, float("-inf"))
        new_past = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, cos, sin, mask, backend, None if past is None else past[i])
            if keep_cache:
                new_past.append(kv)
        return self.lm_head(self.hook_final(self.ln_f(x if all_logits else x[:, -1]))), new_past

    # ---- hooks (analysis and interventions) ---------------------------------------------------------

    def hook_names(self) -> list[str]:
        """Every hook point's name, in forward order."""
        return list(self.hook_dict)

    def has_active_hooks(self) -> bool:
        return any(point.active for point in self.hook_dict.values())

    def _points(self, name: str | Callable[[str], bool]) -> list[HookPoint]:
        if callable(name):
            return [p for n, p in self.hook_dict.items() if name(n)]
        if name not in self.hook_dict:
            raise KeyError(f"no hook point {name!r}; names are model.hook_names(), e.g. 'blocks.0.hook_resid_post'")
        return [self.hook_dict[name]]

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[HookSpec]) -> Iterator[TinyGPT]:
        """Register `(name or predicate, fn)` forward hooks for the `with` block; removed on exit, also
        when the block raises. `fn(activation, hook)` may return a tensor that replaces the activation
        (ablate, patch, steer) or None to leave it (read only). Works for forward, `extend` and
        `run_with_cache` alike."""
        handles = []
        try:
            for name, fn in fwd_hooks:
                for point in self._points(name):
                    handles.append(point.register_forward_hook(lambda mod, _inp, out, fn=fn: fn(out, mod)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(
        self,
        idx: Tensor,
        fwd_hooks: Iterable[HookSpec] = (),
        segment_ids: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Logits of a forward pass with `fwd_hooks` in place (see `hooks`); gradients flow unless the
        caller disables them, so a hook may also substitute a leaf tensor (saliency)."""
        with self.hooks(fwd_hooks):
            logits, _ = self(idx, segment_ids=segment_ids, positions=positions)
        return logits

    def run_with_cache(
        self,
        idx: Tensor,
        segment_ids: Tensor | None = None,
        names_filter: NamesFilter = None,
        positions: Tensor | None = None,
        fwd_hooks: Iterable[HookSpec] = (),
    ) -> tuple[Tensor, Cache]:
        """Forward (no gradients) that also returns activations by TransformerLens hook name.

        Names (`hook_names()`): hook_embed; blocks.{i}.hook_resid_pre / hook_attn_out / hook_resid_mid /
        hook_mlp_out / hook_resid_post [B,T,C]; blocks.{i}.attn.hook_q / hook_k / hook_v /
        hook_rot_q / hook_rot_k / hook_z [B,T,H,D] (rot_ = after RoPE); blocks.{i}.attn.hook_result
        [B,T,H,C] (each head's output after the projection); blocks.{i}.attn.hook_pattern [B,H,T,T]
        softmax probabilities; blocks.{i}.mlp.hook_post [B,T,hidden]; ln_final.hook_normalized
        [B,T,C] (after the final norm's weight: the lm_head input). names_filter: None (all), a name,
        a list of names, or a predicate. Attention runs on the fast fused kernel unless a pattern is
        recorded (then the explicit math path, so the pattern is exactly the one used). `fwd_hooks`
        (see `hooks`) run first, so the cache shows patched activations.
        """
        keep = _keep(names_filter)
        cache: Cache = {}

        def record(x: Tensor, hook: HookPoint) -> None:
            cache[hook.name] = x.detach()

        with torch.no_grad(), self.hooks([*fwd_hooks, (keep, record)]):
            logits, _ = self(idx, segment_ids=segment_ids, positions=positions)
        return logits, cache
