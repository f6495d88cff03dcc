"""CUDA equals CPU: the model in bf16, whole-gene scoring, and a few training steps. Skipped without a CUDA
GPU; `bench/gpu_check.sh` runs them (`pytest -m cuda`) where there is one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codonlm.config import ModelConfig
from codonlm.data.codons import frame_gene
from codonlm.evaluate.perplexity import score_genes
from codonlm.model.tinygpt import TinyGPT

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def small_model(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(ModelConfig(block_size=64, n_layer=2, n_head=2, n_embd=64)).eval()


def test_bf16_forward_and_backward_on_cuda_equal_cpu():
    idx = torch.randint(4, 68, (4, 64))
    grads, outs = {}, {}
    for device in ("cpu", "cuda"):
        m = small_model().to(device).train()
        with torch.autocast(device, dtype=torch.bfloat16):
            logits, loss = m(idx.to(device), targets=idx.roll(-1, 1).to(device))
        loss.backward()
        outs[device] = logits.float().cpu()
        grads[device] = m.wte.weight.grad.float().cpu()
    torch.testing.assert_close(outs["cuda"], outs["cpu"], atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(grads["cuda"], grads["cpu"], atol=5e-3, rtol=5e-2)


def test_scoring_on_cuda_equals_cpu_for_short_and_long_genes():
    rng = np.random.default_rng(0)
    genes = [frame_gene(rng.integers(4, 68, n).astype(np.uint8)) for n in (20, 63, 150, 300)]
    model = small_model()
    cpu = score_genes(model, genes)
    gpu = score_genes(model.to("cuda"), genes, device="cuda")
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(b.logp, a.logp, atol=1e-4)
        assert (a.top1 == b.top1).mean() > 0.99


def test_a_few_training_steps_on_cuda_lower_the_loss():
    model = small_model().to("cuda").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(4, 68, (8, 64), device="cuda")
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(idx, targets=idx.roll(-1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
