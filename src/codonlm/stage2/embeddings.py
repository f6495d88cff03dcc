"""Gene embeddings: hidden states of a trained run, pooled over each gene's codons.

A gene is tokenised by the one tokenizer as `<BOS_CDS> c1 .. cn`; the hidden state at codon i has read
codons 1..i. Pooling runs over the codon positions only: never the `<BOS_CDS>` (it has seen nothing of
the gene) and never padding.

    mean       average over codons (the manual's default)
    max        element-wise maximum over codons
    last       the state at the last codon, the only one that has read the whole gene
    per-codon  every codon's state (NPZ: `embeddings` [total codons, ...] and `offsets`)

Layers: `final` (default) is the input of the LM head (`ln_final.hook_normalized`), an integer i is the
residual stream after block i (`blocks.{i}.hook_resid_post`), `all` stacks every block and the final one.
They are read with forward hooks on those modules during a plain forward pass, so extraction costs what the
forward does (cProfile of 100 test genes: 99% of extraction time inside the model forward;
`bench/embedding_throughput.py` measured 0.91x-1.20x the bare forward of the same batches on the shared machine).

A gene is read as `codonlm.evaluate.sliding` defines (sliding-window attention by default: each token
computed once; strided windows with `stride`, each codon's state then taken from the first window that gives
it at least block_size - stride tokens of context), with exactly the rows and batches of whole-gene scoring,
so the same forward pass also gives each gene's mean log-likelihood per token (`GeneReading.mean_loglik`,
stored in the NPZ; stage 2's zero-shot score) at the cost of one gather. Rows of all genes are sorted by
width and batched by a token budget, so a batch pads little.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codonlm.data.codons import encode, host_token, internal_stop_count
from codonlm.errors import UserError
from codonlm.io import atomic_path, read_npz, sha256_file
from codonlm.log import log, progress

POOLS = ("mean", "last", "max", "per-codon")
FINAL = "ln_final.hook_normalized"
NPZ_KEYS = ("ids", "embeddings", "run_id", "layer", "pool", "layers")


def hook_names(n_layer: int, layer: str) -> list[str]:
    """run_with_cache names for --layer: final, all, or a block index (negative counts from the end)."""
    if layer == "final":
        return [FINAL]
    if layer == "all":
        return [f"blocks.{i}.hook_resid_post" for i in range(n_layer)] + [FINAL]
    try:
        index = int(layer)
    except ValueError:
        index = None
    if index is None or not -n_layer <= index < n_layer:
        raise UserError(f"--layer {layer}: this model has blocks 0..{n_layer - 1}; use final, all, or 0..{n_layer - 1}")
    return [f"blocks.{index % n_layer}.hook_resid_post"]


@dataclass
class _Pooler:
    """Per-gene accumulators for one pooling mode."""

    pool: str
    n_genes: int
    shape: tuple[int, ...]  # (layers, channels)
    sums: np.ndarray = field(init=False)
    pieces: list[list[tuple[int, np.ndarray]]] = field(init=False)

    def __post_init__(self) -> None:
        fill = -np.inf if self.pool == "max" else 0.0
        self.sums = np.full((self.n_genes, *self.shape), fill, dtype=np.float64)
        self.pieces = [[] for _ in range(self.n_genes)] if self.pool == "per-codon" else []

    def add_batch(self, batch: list[tuple[int, int, int, int]], states, last_positions: np.ndarray) -> None:
        """states [rows, width, layers, channels] (torch) of a batch; row r owns codon positions lo..hi of
        gene g (window from token a); last_positions: each gene's last codon position. Pooled on the whole
        batch at once, not row by row."""
        import torch

        genes = np.array([g for g, _, _, _ in batch])
        first = torch.tensor([lo - a for _, a, lo, _ in batch])
        last = torch.tensor([hi - a for _, a, _, hi in batch])
        if self.pool == "per-codon":
            rows = states.float().cpu().numpy()
            for r, (g, _, lo, _) in enumerate(batch):
                self.pieces[g].append((lo, rows[r, first[r] : last[r] + 1]))
            return
        pos = torch.arange(states.shape[1])
        owned = ((pos >= first[:, None]) & (pos <= last[:, None]))[:, :, None, None]
        if self.pool == "mean":
            np.add.at(self.sums, genes, (states * owned).sum(1).double().cpu().numpy())
        elif self.pool == "max":
            np.maximum.at(self.sums, genes, states.masked_fill(~owned, -torch.inf).amax(1).double().cpu().numpy())
        else:  # last: the row whose window ends at the gene's last codon
            ends = np.flatnonzero(np.array([hi for _, _, _, hi in batch]) == last_positions[genes])
            self.sums[genes[ends]] = states[ends, last[ends]].double().cpu().numpy()

    def result(self, n_codons: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.pool == "per-codon":
            genes = [np.concatenate([p for _, p in sorted(parts, key=lambda t: t[0])]) for parts in self.pieces]
            offsets = np.concatenate([[0], np.cumsum([len(g) for g in genes])]).astype(np.int64)
            return np.concatenate(genes).astype(np.float32), offsets
        if self.pool == "mean":
            return (self.sums / n_codons.reshape(-1, 1, 1)).astype(np.float32), None
        return self.sums.astype(np.float32), None


@dataclass
class GeneReading:
    """What one pass over the genes gives: pooled states (offsets for per-codon), the layer names, and each
    gene's mean log-likelihood per token of `<BOS_CDS> c1..cn <EOS_CDS>` (what `score_genes` gives, = -nll)."""

    vectors: np.ndarray
    offsets: np.ndarray | None
    layers: list[str]
    mean_loglik: np.ndarray


def read_genes(model, seqs: list[str], layer: str = "final", pool: str = "mean", stride: int | None = None,
               max_tokens: int = 16384, amp: bool = False, show_progress: bool = True,
               hosts: list[int | None] | None = None) -> GeneReading:
    """Embeddings and per-gene log-likelihoods of clean DNA sequences from one forward pass. hosts: each
    sequence's host token id (a host-conditioned model); only codon positions are pooled, and the host
    token's own target is not scored.

    embeddings are [genes, channels] for one layer, [genes, layers, channels] for `all`. amp: bf16 autocast,
    faster only where the CPU has native bf16 (AVX-512 BF16 / AMX); off by default.
    """
    import torch

    from codonlm.evaluate.perplexity import scored_logits
    from codonlm.evaluate.sliding import gene_rows, row_batches, sliding_forward

    if pool not in POOLS:
        raise UserError(f"--pool {pool}: choose one of {', '.join(POOLS)}")
    names = hook_names(model.cfg.n_layer, layer)
    T = model.cfg.block_size
    hosts = [None] * len(seqs) if hosts is None else hosts
    # <BOS_CDS> (<host>) c1..cn <EOS_CDS>
    tokens = [encode(s, add_eos=True, host=h) for s, h in zip(seqs, hosts, strict=True)]
    prefixes = np.array([1 if h is None else 2 for h in hosts], dtype=np.int64)
    n_codons = np.array([t.size - 1 for t in tokens], dtype=np.int64) - prefixes
    pooler = _Pooler(pool, len(seqs), (len(names), model.cfg.n_embd))
    loglik = np.zeros(len(seqs), dtype=np.float64)
    model.eval()
    device = next(model.parameters()).device
    bar = progress(total=int(n_codons.sum()), desc="embed", unit="codon", disable=not show_progress)
    for batch, idx in row_batches(tokens, gene_rows([t.size - 1 for t in tokens], T, stride), max_tokens):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, states = sliding_forward(model, idx.to(device), names)
        picked, targets = scored_logits(logits, batch, tokens)
        logp = torch.log_softmax(picked.float(), -1).gather(-1, targets[:, None])[:, 0].double().cpu().numpy()
        target = np.concatenate([np.arange(lo, hi + 1) for _, _, lo, hi in batch])
        gene = np.repeat([g for g, *_ in batch], [hi - lo + 1 for _, _, lo, hi in batch])
        scored = target >= prefixes[gene]  # not the host token's own target
        np.add.at(loglik, gene[scored], logp[scored])
        # the state at token p predicts target p + 1; codon positions only (never <BOS_CDS> or the host)
        owned = [(g, a, max(lo - 1, int(prefixes[g])), hi - 1) for g, a, lo, hi in batch]
        pooler.add_batch(owned, torch.stack([states[n] for n in names], dim=2).float(), n_codons + prefixes - 1)
        bar.update(sum(hi + 1 - lo for _, _, lo, hi in owned))
    bar.close()
    vectors, offsets = pooler.result(n_codons)
    if len(names) == 1:
        vectors = vectors[:, 0]
    return GeneReading(vectors, offsets, ["final" if n == FINAL else n.split(".")[1] for n in names],
                       loglik / (n_codons + 1))


def job_precision(model, tokens: list[np.ndarray], amp: bool | str, stride: int | None = None):
    """The Precision of an inference job over `tokens` (`<BOS_CDS> (<host>) c1..cn <EOS_CDS>` arrays) under
    `amp` auto|True|False: scoring (`CodonLM.score`) and embeddings share this one choice (README "Inference
    speed"); it lives here, above both `evaluate` (the forward) and `train` (the decision rule)."""
    import torch

    from codonlm.evaluate.sliding import sample_forward
    from codonlm.train.precision import TIMING_TOKENS, inference_precision

    device = next(model.parameters()).device
    job_tokens = int(sum(t.size for t in tokens))
    forward = sample_forward(model, tokens, stride, TIMING_TOKENS) if tokens else (lambda autocast: 0)
    return inference_precision(amp, torch.device(device), job_tokens, forward)


def embed_genes(model, seqs: list[str], layer: str = "final", pool: str = "mean", stride: int | None = None,
                max_tokens: int = 16384, amp: bool = False, show_progress: bool = True,
                hosts: list[int | None] | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Pooled hidden states of clean DNA sequences: (embeddings, offsets for per-codon else None, layer names)."""
    r = read_genes(model, seqs, layer, pool, stride, max_tokens, amp, show_progress, hosts)
    return r.vectors, r.offsets, r.layers


# --------------------------------------------------------------------------- NPZ files


@dataclass
class EmbeddingFile:
    """The content of an embeddings NPZ."""

    path: Path
    ids: list[str]
    embeddings: np.ndarray
    run_id: str
    layer: str
    pool: str
    layers: list[str]
    offsets: np.ndarray | None = None
    internal_stops: np.ndarray | None = None  # per gene: stop codons before its last codon (None: older files)
    mean_loglik: np.ndarray | None = None  # per gene: the model's mean log-likelihood per token (None: older files)
    meta: dict = field(default_factory=dict)  # checkpoint_sha256, seconds, n_skipped, ...


def save_embeddings(path: str | Path, emb: EmbeddingFile) -> None:
    arrays = {
        "ids": np.array(emb.ids, dtype=str), "embeddings": emb.embeddings, "run_id": np.array(emb.run_id),
        "layer": np.array(emb.layer), "pool": np.array(emb.pool), "layers": np.array(emb.layers, dtype=str),
    }  # fmt: skip
    for name in ("offsets", "internal_stops", "mean_loglik"):
        if getattr(emb, name) is not None:
            arrays[name] = getattr(emb, name)
    arrays.update({f"meta_{k}": np.array(v) for k, v in emb.meta.items()})
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_embeddings(path: str | Path) -> EmbeddingFile:
    """An embeddings NPZ written by extract_embeddings (read without pickle)."""
    path = Path(path)
    arrays = read_npz(path, NPZ_KEYS,
                      "embeddings not found: {path}; make them with 'python -m scripts.extract_embeddings'",
                      "not an embeddings file from extract_embeddings", "re-run extract_embeddings")
    return EmbeddingFile(
        path=path, ids=[str(i) for i in arrays["ids"]], embeddings=arrays["embeddings"],
        run_id=str(arrays["run_id"]), layer=str(arrays["layer"]), pool=str(arrays["pool"]),
        layers=[str(x) for x in arrays["layers"]], offsets=arrays.get("offsets"),
        internal_stops=arrays.get("internal_stops"), mean_loglik=arrays.get("mean_loglik"),
        meta={k.removeprefix("meta_"): arrays[k].item() for k in arrays if k.startswith("meta_")},
    )  # fmt: skip


def extract_embeddings(run_id: str, out: str | Path, ids: list[str], seqs: list[str], layer: str = "final",
                       pool: str = "mean", checkpoints_dir: str | None = None, device: str = "cpu",
                       stride: int | None = None, max_tokens: int = 16384, amp: bool | str = "auto", n_skipped: int = 0,
                       show_progress: bool = True, runs_dir: str | None = None,
                       host: str | list[str] | None = None, host_optional: bool = False) -> EmbeddingFile:
    """Embed clean DNA sequences with a run's model and write the NPZ (ids, run id, layer, pooling); host: their
    genome (one for all, or one each), for a host-conditioned model; host_optional: ignore it for a model
    without host tokens (stage 2 passes every gene's genome whatever the model); amp: auto|True|False
    (`job_precision`), the choice kept in the NPZ's `precision` field."""
    from codonlm.model.load import checkpoint_path, load_model

    if pool not in POOLS:
        raise UserError(f"--pool {pool}: choose one of {', '.join(POOLS)}")
    ckpt = checkpoint_path(run_id, checkpoints_dir, runs_dir)
    model, _, state = load_model(str(ckpt), device=device)
    hook_names(model.cfg.n_layer, layer)  # a bad --layer fails before any work
    hosts = host if isinstance(host, list) else [host] * len(seqs)
    if host_optional and not model.cfg.hosts:
        hosts = [None] * len(seqs)
    host_ids = [host_token(model.cfg, h) for h in hosts]
    t0 = time.perf_counter()
    precision = job_precision(model, [encode(s, add_eos=True, host=h) for s, h in zip(seqs, host_ids, strict=True)],
                              amp, stride)
    log(f"[embeddings] precision {precision.dtype}: {precision.reason}")
    reading = read_genes(model, seqs, layer, pool, stride, max_tokens, precision.amp, show_progress, host_ids)
    vectors, offsets, layers = reading.vectors, reading.offsets, reading.layers
    seconds = time.perf_counter() - t0
    n_codons = sum(len(s) // 3 for s in seqs)
    emb = EmbeddingFile(
        path=Path(out), ids=list(ids), embeddings=vectors, run_id=str(state.get("run_id") or run_id), layer=layer,
        pool=pool, layers=layers, offsets=offsets,
        internal_stops=np.array([internal_stop_count(s) for s in seqs], dtype=np.int32),
        mean_loglik=reading.mean_loglik,
        meta={"checkpoint_sha256": sha256_file(ckpt), "amp": precision.amp, "precision": precision.dtype,
              "precision_reason": precision.reason, "seconds": round(seconds, 3), "n_skipped": n_skipped,
              "n_codons": n_codons, "embeddings_per_s": round(len(seqs) / max(seconds, 1e-9), 2),
              "codons_per_s": round(n_codons / max(seconds, 1e-9), 1)},
    )  # fmt: skip
    save_embeddings(out, emb)
    log(f"[embeddings] {len(ids)} genes ({n_codons} codons) -> {out}: shape {list(vectors.shape)}, layer {layer}, "
        f"pool {pool}; {seconds:.1f} s ({emb.meta['embeddings_per_s']:.1f} genes/s, "
        f"{emb.meta['codons_per_s']:.0f} codons/s)" + (f"; skipped {n_skipped} record(s)" if n_skipped else ""))
    return emb


def one_layer(f, layer: str | None) -> np.ndarray:
    """[genes, channels] of an embeddings file: as stored, or `layer` of a file holding every layer."""
    if f.offsets is not None:
        raise UserError(f"{f.path}: per-codon embeddings; extract with --pool mean, last or max for a classifier")
    if f.embeddings.ndim == 2:
        return f.embeddings
    if layer not in f.layers:
        raise UserError(f"{f.path}: holds every layer ({', '.join(f.layers)}); extract one (--layer final or an "
                        "index) or set the config's layer to one of them")
    return f.embeddings[:, f.layers.index(layer)]
