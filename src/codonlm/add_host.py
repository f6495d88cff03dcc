"""`codonlm add-host`: a new run whose model knows one more host, trained in minutes on that genome alone.

The base run (host-conditioned: model.condition_on_host) is only read. The new run's config is the base's
with the new genome as its one dataset and its name appended to model.hosts, so the prepared data (the
genome's own train/val/test split by the usual prepare code, GenBank or FASTA through pyrodigal) gives its
genes the new host token. The new token's embedding row starts at the mean of the base's host rows; by
default only that row trains (every other weight frozen, a gradient mask on the row, no weight decay, so
nothing else moves); `full` trains every weight. Training is the ordinary trainer for a bounded number of
steps. runs/<NEW_RUN_ID>/add_host.json holds held-out perplexity on the new genome's test genes: the base
model without a host token and with its best known host, the new run with its token, and the genome's own
unigram and Kneser-Ney 3-gram baselines fitted on its training genes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from codonlm.config import Config, parse_config
from codonlm.data.codons import HOST_OFFSET
from codonlm.data.layout import run_split_path
from codonlm.data.prepare import prepare
from codonlm.errors import UserError
from codonlm.evaluate.heldout import fit_baselines
from codonlm.evaluate.perplexity import perplexity_of, score_genes
from codonlm.io import read_split_genes, write_json
from codonlm.log import log, run_log
from codonlm.model.load import load_model
from codonlm.model.tinygpt import TinyGPT
from codonlm.provenance import run_lock, snapshot
from codonlm.runid import claim_run
from codonlm.train.loop import train

DEFAULT_STEPS = 300
MIN_HELD_OUT_GENES = 10  # test genes below this give no perplexity worth reporting


def new_host_config(base: Config, name: str, gbff: str | None, fasta: str | None, steps: int, full: bool,
                    bf16: bool) -> Config:
    """The new run's config: the base's, one dataset (the new genome), one more host, a bounded training."""
    raw = base.model_dump(mode="json")
    raw["name"] = f"{base.name}_add_{name.replace('.', '-')}"
    raw["model"]["hosts"] = [*base.model.hosts, name]
    entry = {"name": name, "min_len": base.data.datasets[0].min_len}
    entry.update({"gbff": gbff} if gbff is not None else {"fasta": fasta})
    raw["data"]["datasets"] = [entry]
    raw["train"].update(max_steps=steps, amp=bf16, epochs=1, weight_decay=raw["train"]["weight_decay"] if full else 0.0)
    raw["schedule"]["warmup_steps"] = min(base.schedule.warmup_steps, max(1, steps // 10))
    return parse_config(raw, source=f"add-host {name}")


def _check_request(cfg: Config, base_id: str, name: str, steps: int) -> None:
    if not cfg.model.condition_on_host:
        raise UserError(f"run '{base_id}' has no host tokens (trained without model.condition_on_host), so there is "
                        "no host to add beside; train a base run with model.condition_on_host: true")
    if name in cfg.model.hosts:
        raise UserError(f"run '{base_id}' already has host '{name}'; pick another --name "
                        f"(its hosts: {', '.join(cfg.model.hosts)})")
    if steps < 1:
        raise UserError(f"--steps {steps}: give at least 1 training step")


def _check_split(report: dict, name: str) -> None:
    """The new genome must leave enough test genes (and some training genes) for a held-out number."""
    splits = report["datasets"][name]["splits"]
    test, trained = splits["test"]["genes"], splits["train"]["genes"]
    if test < MIN_HELD_OUT_GENES or trained < MIN_HELD_OUT_GENES:
        raise UserError(f"host '{name}': {trained} training and {test} test genes, too few for a held-out split "
                        f"(at least {MIN_HELD_OUT_GENES} each); give a genome with more genes")


def start_from_base(base_weights: dict[str, torch.Tensor], new_row: int, full: bool):
    """A trainer `init`: the base's weights, the new host row at the mean of the base's host rows, and (unless
    full) only that row trainable."""

    def init(model: TinyGPT) -> None:
        old = base_weights["wte.weight"]
        wte = model.wte.weight.detach().clone()
        wte[: old.shape[0]] = old
        wte[new_row] = old[HOST_OFFSET:new_row].mean(0)
        model.load_state_dict({**base_weights, "wte.weight": wte, "lm_head.weight": wte})
        if full:
            return
        for p in model.parameters():
            p.requires_grad_(False)
        model.wte.weight.requires_grad_(True)
        mask = torch.zeros(wte.shape[0], 1)
        mask[new_row] = 1.0
        model.wte.weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))

    return init


def _perplexity(scores) -> float:
    return perplexity_of(float(-np.concatenate([s.logp for s in scores]).mean()))


def held_out_report(base_model: TinyGPT, new_model: TinyGPT, cfg: Config, run_id: str, name: str) -> dict:
    """Perplexity on the new genome's test genes: base (no host token, best known host), new run, baselines."""
    test, trained = (read_split_genes(run_split_path(cfg, run_id, s)) for s in ("test", "train"))
    n = len(test.genes)
    known = {h: _perplexity(score_genes(base_model, test.genes, hosts=[HOST_OFFSET + i] * n))
             for i, h in enumerate(base_model.cfg.hosts)}
    best_known = min(known, key=known.get)
    new_id = HOST_OFFSET + cfg.model.hosts.index(name)
    baselines = fit_baselines(trained.genes, trained.groups, test.genes, test.groups, orders=(3,))
    perplexity = {
        "base_without_host_token": _perplexity(score_genes(base_model, test.genes)),
        "base_best_known_host": known[best_known],
        "new_run_with_host_token": _perplexity(score_genes(new_model, test.genes, hosts=[new_id] * n)),
        "per_genome_unigram": perplexity_of(float(-np.concatenate(baselines["per_genome_unigram"]).mean())),
        "kneser_ney_3": perplexity_of(float(-np.concatenate(baselines["kneser_ney_3"]).mean())),
    }
    return {"test_genes": n, "test_targets": int(sum(g.size - 1 for g in test.genes)), "perplexity": perplexity,
            "base_best_known_host": best_known, "base_perplexity_by_known_host": known}


def add_host(base: str, name: str, gbff: str | None = None, fasta: str | None = None, full: bool = False,
             steps: int = DEFAULT_STEPS, checkpoints_dir: str | None = None, runs_dir: str | None = None,
             device: str = "cpu") -> dict:
    """Make the new run (see the module doc); returns what runs/<NEW_RUN_ID>/add_host.json holds."""
    t0 = time.perf_counter()
    if (gbff is None) == (fasta is None):
        raise UserError("give the new genome as one of --gbff FILE or --fasta FILE")
    base_model, base_cfg, state = load_model(base, checkpoints_dir, device, runs_dir)
    base_id = state.get("run_id", base)
    _check_request(base_cfg, base_id, name, steps)
    bf16 = (state.get("precision") or {}).get("dtype") == "bfloat16"
    cfg = new_host_config(base_cfg, name, gbff, fasta, steps, full, bf16)
    report = prepare(cfg, show_progress=False)  # the shared data cache only: no run folder yet
    _check_split(report, name)
    batches = math.ceil(report["splits"]["train"]["windows"] / cfg.train.batch_size)
    cfg.train.epochs = max(1, math.ceil(steps / max(1, batches // cfg.train.grad_accum_steps)))
    run_id, _ = claim_run(cfg)
    directory = Path(cfg.outputs.runs_dir) / run_id
    snapshot(cfg, directory)
    with run_lock(directory), run_log(directory):
        log(f"[add-host] {run_id}: host '{name}' (token {HOST_OFFSET + len(base_cfg.model.hosts)}) added to "
            f"{base_id}, {'all weights' if full else 'its embedding row only'}, {steps} steps")
        prepare(cfg, run_dir=directory, show_progress=False)
        new_row = HOST_OFFSET + len(base_cfg.model.hosts)
        train(cfg, run_id, init=start_from_base(base_model.state_dict(), new_row, full))
        new_model, _, _ = load_model(run_id, cfg.outputs.out_dir, device, cfg.outputs.runs_dir)
        result = {"run_id": run_id, "base_run_id": base_id, "host": name, "host_token": new_row,
                  "trained": "all weights" if full else "host embedding row", "steps": steps,
                  **held_out_report(base_model, new_model, cfg, run_id, name),
                  "seconds": round(time.perf_counter() - t0, 1)}
        write_json(directory / "add_host.json", result)
        p = result["perplexity"]
        log(f"[add-host] {name} held-out perplexity ({result['test_genes']} test genes): base without host token "
            f"{p['base_without_host_token']:.2f}, base with best known host ({result['base_best_known_host']}) "
            f"{p['base_best_known_host']:.2f}, new run {p['new_run_with_host_token']:.2f}; per-genome unigram "
            f"{p['per_genome_unigram']:.2f}, KN-3 {p['kneser_ney_3']:.2f} -> {directory / 'add_host.json'}")
    return result
