"""A plain forward pass to check our scorers against (shared by the host-token tests)."""

from __future__ import annotations

import numpy as np
import torch


def manual_logp(lm, tokens: list[int]) -> np.ndarray:
    """log p(target) of every token after the first, by one plain forward pass of `lm.model` (a CodonLM's)."""
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logits, _ = lm.model(ids[:, :-1])
    return torch.log_softmax(logits[0].float(), -1).gather(-1, ids[0, 1:, None]).squeeze(-1).numpy()
