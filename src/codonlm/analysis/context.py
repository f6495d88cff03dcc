"""What every analysis step gets: the run, its config, the trained model, a random-init twin, its data."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from codonlm.config import Config
from codonlm.data.codons import CODON_OFFSET, HOST_OFFSET, PAD, dataset_hosts, gene_start, with_host
from codonlm.io import SplitGenes, read_split_genes
from codonlm.model.tinygpt import TinyGPT
from codonlm.provenance import list_runs  # noqa: F401 - kept importable from here


def is_codon(tokens):
    """True at codon tokens, not at special or host tokens (numpy arrays and torch tensors)."""
    return (tokens >= CODON_OFFSET) & (tokens < HOST_OFFSET)


def first_codon_position(model_cfg) -> int:
    """Token position of codon 1 in a gene as this model reads it: after `<BOS_CDS>` and, on a
    host-conditioned run, its host token (`gene_start`)."""
    return len(gene_start(HOST_OFFSET if model_cfg.hosts else None))


@dataclass
class AnalysisContext:
    """A loaded run. Steps read from it and write only into `out_dir(step)`."""

    run_id: str
    run_dir: Path
    cfg: Config
    model: TinyGPT  # trained, eval mode
    checkpoint: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    quiet: bool = False
    _splits: dict[str, SplitGenes] = field(default_factory=dict, repr=False)

    @cached_property
    def random_model(self) -> TinyGPT:
        """The same architecture with a seeded random initialisation: the 'what is free' control."""
        torch.manual_seed(self.seed)
        model = TinyGPT(self.cfg.model).to(self.device).eval()
        return model

    def models(self) -> dict[str, TinyGPT]:
        """{'trained': ..., 'random_init': ...}: loop over this to report both."""
        return {"trained": self.model, "random_init": self.random_model}

    def split_path(self, name: str) -> Path:
        """The run's own prepared split NPZ ('train', 'val', 'test'), checked against the run's record."""
        from codonlm.data.layout import run_split_path

        return run_split_path(self.cfg, self.run_id, name, runs_dir=self.run_dir.parent)

    def split(self, name: str) -> SplitGenes:
        """The genes of the run's prepared split ('train', 'val', 'test')."""
        if name not in self._splits:
            self._splits[name] = read_split_genes(self.split_path(name))
        return self._splits[name]

    @property
    def host_shift(self) -> int:
        """Tokens a host-conditioned run reads before codon 1 beyond `<BOS_CDS>` (1, else 0): codon k of a
        stored gene (token k) is token k + host_shift of what the model reads (`model_genes`)."""
        return first_codon_position(self.cfg.model) - 1

    def gene_hosts(self, split: str, picked: Sequence[int]) -> list[int | None] | None:
        """The host token of each gene `picked` of a split (its genome's, i.e. its dataset's) on a
        host-conditioned run; None on a run without host tokens (what score_genes' `hosts` takes)."""
        genes = self.split(split)
        return dataset_hosts(self.cfg.model.hosts, genes.dataset_names, genes.groups[list(picked)])

    def model_genes(self, split: str, picked: Sequence[int]) -> list[np.ndarray]:
        """Genes `picked` of a split as the model reads them: on a host-conditioned run with their host
        token after `<BOS_CDS>`, as it trained; the stored genes otherwise."""
        genes, hosts = self.split(split), self.gene_hosts(split, picked)
        if hosts is None:
            return [genes.genes[g] for g in picked]
        return [with_host(genes.genes[g], h) for g, h in zip(picked, hosts, strict=True)]

    def out_dir(self, step: str) -> Path:
        path = self.run_dir / "analysis" / step
        path.mkdir(parents=True, exist_ok=True)
        return path

    def table_id(self, dataset: str) -> int:
        """The genetic code of a dataset (its config's transl_table; 11 when unknown)."""
        for spec in self.cfg.data.datasets:
            if spec.name == dataset:
                return spec.transl_table
        return 11

    def sample_genes(self, split: str, per_dataset: int, max_codons: int | None = None,
                     salt: int = 0) -> list[int]:
        """A seeded draw of up to `per_dataset` gene indices of each dataset (sorted), optionally
        only genes of at most `max_codons` codons; the same call gives the same genes."""
        genes = self.split(split)
        rng = np.random.default_rng([self.seed, salt])
        picked: list[int] = []
        for d in range(len(genes.dataset_names)):
            idx = genes.of_dataset(d)
            if max_codons is not None:
                idx = [g for g in idx if len(genes.genes[g]) - 2 <= max_codons]
            if len(idx) > per_dataset:
                idx = sorted(rng.choice(idx, size=per_dataset, replace=False).tolist())
            picked += idx
        return picked

    def progress(self, iterable: Iterable, desc: str, total: int | None = None, unit: str = "batch"):
        """A step's progress bar (off when quiet or under CODONLM_QUIET)."""
        from codonlm.log import progress

        return progress(iterable, desc=desc, total=total, unit=unit, disable=self.quiet, leave=False)

    def gene_batches(self, genes: Sequence[np.ndarray], batch_size: int = 32,
                     desc: str = "") -> Iterator[tuple[list[int], torch.Tensor]]:
        """Genes as padded [B, W] token batches, shortest first, each cut to block_size + 1 tokens.

        Feed `idx[:, :-1]` to the model; `idx[:, 1:]` are the targets (a gene of up to block_size - 1
        codons keeps its <EOS_CDS> target). Yields (positions of the batch's genes in `genes`, idx).
        Padding sits after each gene, so with the causal mask it changes none of the gene's outputs.
        """
        limit = self.cfg.model.block_size + 1
        order = sorted(range(len(genes)), key=lambda g: len(genes[g]))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for chunk in self.progress(chunks, desc=desc, total=len(chunks)):
            width = min(limit, max(len(genes[g]) for g in chunk))
            idx = torch.full((len(chunk), width), PAD, dtype=torch.long)
            for row, g in enumerate(chunk):
                piece = np.asarray(genes[g][:width], dtype=np.int64)
                idx[row, : piece.size] = torch.from_numpy(piece)
            yield chunk, idx.to(self.device)


def load_context(run_id: str, checkpoints_dir: str | None = None, runs_dir: str | Path | None = None,
                 device: str = "cpu", seed: int = 0, quiet: bool = False) -> AnalysisContext:
    """Load a finished run for analysis (model.load: one-line UserErrors for an unknown run, a run
    without best.pt, a diverged checkpoint)."""
    from codonlm.model.load import checkpoint_path, load_model

    best = checkpoint_path(run_id, checkpoints_dir, runs_dir)
    model, cfg, state = load_model(str(best), device=device)
    run_dir = Path(runs_dir or cfg.outputs.runs_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    return AnalysisContext(run_id=run_id, run_dir=run_dir, cfg=cfg, model=model, checkpoint=best,
                           device=torch.device(device), seed=seed, quiet=quiet)
