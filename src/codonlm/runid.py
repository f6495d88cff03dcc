"""Run ids like 2026-11-24_tiny_6L4H_d256_e5 (the manual's format)."""

from __future__ import annotations

import datetime as dt

from codonlm.config import Config


def make_run_id(cfg: Config, date: dt.date | None = None) -> str:
    date = date or dt.date.today()
    m = cfg.model
    epochs = cfg.train.epochs
    return f"{date.isoformat()}_{cfg.name}_{m.n_layer}L{m.n_head}H_d{m.n_embd}_e{epochs}"
