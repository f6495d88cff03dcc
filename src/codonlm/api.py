"""`CodonLM`: a trained codon model from a notebook, the same code path as the command line.

    from codonlm import CodonLM
    lm = CodonLM.load("2026-12-02_tiny_4L4H_d128_e1")     # a run id, a run folder, a .pt, or an HF export
    lm.score(["ATGAAACGCATTAGCACCACCATTACCACCACCATCACCATTACCACAGGTAACGGTGCGGGCTGA"])

Every method takes sequences as one DNA string, a list of strings, a {id: DNA} dict, (id, DNA) pairs, a
FASTA path (plain or gzipped), a pandas Series / DataFrame (`seq_column`, ids from `id_column` or the
index) or Biopython SeqRecords; RNA and lowercase are accepted. Results are numpy arrays and pandas
DataFrames. The CLI's `query`, `eval-perplexity` and `extract-embeddings` call the functions these
methods call, so a notebook and the shell give the same numbers (tested).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from codonlm.config import Config
from codonlm.data.codons import EOS, as_codon_ids, clean_sequences, encode, gene_start, host_token
from codonlm.errors import UserError
from codonlm.model.tinygpt import HookSpec, NamesFilter, TinyGPT

Sequences = Any  # str | Path | list | dict | pandas | SeqRecord(s): see `as_records`


def as_records(seqs: Sequences, id_column: str = "id", seq_column: str = "seq") -> list[tuple[str, str]]:
    """(id, DNA as given) pairs of any of the accepted inputs; ids seq1, seq2, ... where none are given."""
    if isinstance(seqs, (str, os.PathLike)):
        text = str(seqs)
        looks_like_dna = isinstance(seqs, str) and set(text.upper()) <= set("ACGTU \n\r\t")
        if not looks_like_dna:
            from codonlm.data.records import is_table, read_sequences
            from codonlm.io import read_fasta

            if not is_table(text):
                return read_fasta(text)
            ids, raw, _, _ = read_sequences(csv=text, id_column=id_column, seq_column=seq_column)
            return list(zip(ids, raw, strict=True))
        return [("seq1", text)]
    if isinstance(seqs, pd.DataFrame):
        if seq_column not in seqs.columns:
            raise UserError(f"the DataFrame has no '{seq_column}' column; pass seq_column=")
        ids = seqs[id_column] if id_column in seqs.columns else seqs.index
        return [(str(i), str(s)) for i, s in zip(ids, seqs[seq_column], strict=True)]
    if isinstance(seqs, pd.Series):
        return [(str(i), str(s)) for i, s in seqs.items()]
    if isinstance(seqs, dict):
        return [(str(i), str(s)) for i, s in seqs.items()]
    if hasattr(seqs, "seq") and hasattr(seqs, "id"):  # one Bio.SeqRecord
        return [(str(seqs.id), str(seqs.seq))]
    records = []
    for n, item in enumerate(seqs, 1):
        if isinstance(item, tuple) and len(item) == 2:
            records.append((str(item[0]), str(item[1])))
        elif hasattr(item, "seq") and hasattr(item, "id"):
            records.append((str(item.id), str(item.seq)))
        else:
            records.append((f"seq{n}", str(item)))
    return records


class CodonLM:
    """A trained TinyGPT with its config: score, embed, predict, generate, scan, and hook into it."""

    def __init__(self, model: TinyGPT, cfg: Config | None = None, source: str = "", run_id: str | None = None,
                 table_id: int = 11):
        self.model = model.eval()
        self.cfg = cfg
        self.source = source
        self.run_id = run_id
        self.table_id = table_id
        self._hosts: dict = {}  # design: host references built so far
        self._auto_precision = None  # amp auto: the measured choice (Precision), made once per CodonLM
        self.runs_dir: str | Path | None = None  # where the run's folder is, when not cfg.outputs.runs_dir

    def __repr__(self) -> str:
        c = self.model.cfg
        return (f"CodonLM({self.run_id or self.source!r}: {c.n_layer} layers, {c.n_head} heads, d{c.n_embd}, "
                f"context {c.block_size}, {self.model.num_params():,} params)")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hosts(self) -> list[str]:
        """The run's host names (model.condition_on_host), in token order; [] for a model without host tokens."""
        return list(self.model.cfg.hosts)

    def host_id(self, host: str | None) -> int | None:
        """The token id of `host` (None for a model without host tokens); an unknown host, or none given to a
        host-conditioned model, is a UserError listing the known hosts."""
        return host_token(self.model.cfg, host)

    # ---- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, what: str | Path, device: str = "cpu", checkpoints_dir: str | None = None,
             runs_dir: str | Path | None = None, table_id: int = 11) -> CodonLM:
        """A run id, a run folder (runs/<RUN_ID>), a checkpoint (.pt) or a Hugging Face export folder."""
        path = Path(what)
        if path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            from codonlm.model.hf_export import load_hf_export

            return cls(load_hf_export(path).to(device), source=str(path), table_id=table_id)
        from codonlm.model.load import checkpoint_path, load_model

        run_id, runs = str(what), runs_dir
        if path.is_dir() and (path / "config.yaml").is_file():  # a run folder: runs/<RUN_ID>
            run_id, runs = path.name, path.parent
        checkpoint = checkpoint_path(run_id, checkpoints_dir, None if runs is None else str(runs))
        model, cfg, state = load_model(str(checkpoint), device=device)
        lm = cls(model, cfg, source=str(checkpoint), run_id=state.get("run_id"), table_id=table_id)
        lm.runs_dir = runs
        return lm

    # ---- inputs ----------------------------------------------------------------------------------

    def records(self, seqs: Sequences, skip_invalid: bool = False, checked: bool = False,
                **columns) -> list[tuple[str, str]]:
        """Clean (id, DNA) pairs: bad records a one-line UserError (or skipped), internal stops flagged.
        checked: `seqs` are (id, DNA) pairs the caller has already cleaned (the CLI reads and checks its
        input before loading the model, so bad input fails fast)."""
        if checked:
            return list(seqs)
        raw = as_records(seqs, **columns)
        if not raw:
            raise UserError("no sequences given")
        ids, dna, _ = clean_sequences([i for i, _ in raw], [s for _, s in raw], "input", skip_invalid,
                                      stops_table=self.table_id)
        return list(zip(ids, dna, strict=True))

    def tokens(self, seq: str, eos: bool = False, host: str | None = None) -> torch.Tensor:
        """[1, T] token ids of one clean DNA sequence: `<BOS_CDS> (<host>) c1 .. cn` (+ `<EOS_CDS>`); "" gives
        the tokens every gene starts with (where decoding starts)."""
        start = self.host_id(host)
        if seq == "":
            ids = np.append(gene_start(start), [EOS] * eos)
        else:
            ((_, dna),) = self.records(seq)
            ids = encode(dna, add_bos=True, add_eos=eos, host=start)
        return torch.from_numpy(ids.astype(np.int64))[None].to(self.device)

    def inference_amp(self, records: list[tuple[str, str]], amp: bool | str = "auto", stride: int | None = None,
                      host: str | None = None, what: str = "score") -> bool:
        """Whether an inference job over clean `records` runs under bf16 autocast: `amp` True/False pins it;
        "auto" measures once per CodonLM (`stage2.embeddings.job_precision`; a small CPU job is float32 untimed
        and not remembered). The choice and its reason are logged in one line, unless it is a small CPU job's
        untimed float32 (nothing was chosen: the line would only crowd a one-line answer or error)."""
        from codonlm.stage2.embeddings import job_precision

        def choose():
            host_id = self.host_id(host)
            tokens = [encode(dna, add_bos=True, add_eos=True, host=host_id) for _, dna in records]
            return job_precision(self.model, tokens, amp, stride)

        return self._settle_amp(amp, what, choose)

    def scan_amp(self, records: list[tuple[str, str]], amp: bool | str = "auto", llr: str = "exact",
                 region: tuple[int, int] | None = None, host: str | None = None) -> bool:
        """`inference_amp` for a variant scan of clean `records`: the job is the scan's forward tokens
        (`scan_work_tokens`), the timed batch one real scan batch of the longest gene (`timing_forward`)."""
        from codonlm.evaluate.variant_table import scan_positions
        from codonlm.evaluate.variants import VariantScanner, scan_work_tokens
        from codonlm.train.precision import TIMING_TOKENS, inference_precision

        def choose():
            genes = [as_codon_ids(dna).astype(np.uint8) for _, dna in records]
            work = sum(scan_work_tokens(g.size, scan_positions(name, g.size, region), llr)
                       for (name, _), g in zip(records, genes, strict=True))
            scanner = VariantScanner(self.model, host=self.host_id(host))
            forward = scanner.timing_forward(max(genes, key=len), TIMING_TOKENS)
            return inference_precision(amp, self.device, work, forward)

        return self._settle_amp(amp, "mutate", choose)

    def _settle_amp(self, amp: bool | str, what: str, choose: Callable[[], Any]) -> bool:
        """`choose()`'s Precision, or under "auto" the one this CodonLM measured before; logged and remembered
        as `inference_amp` says."""
        from codonlm.log import log

        if amp == "auto" and self._auto_precision is not None:
            return self._auto_precision.amp
        precision = choose()
        if precision.measurement is not None or precision.amp or self.device.type != "cpu":
            log(f"[{what}] precision {precision.dtype}: {precision.reason}")
        if amp == "auto" and (precision.measurement is not None or self.device.type != "cpu"):
            self._auto_precision = precision
        return precision.amp

    # ---- the user-facing measures -------------------------------------------------------------------

    def score(self, seqs: Sequences, stride: int | None = None, per_codon: bool = False,
              skip_invalid: bool = False, amp: bool | str = "auto", checked: bool = False,
              host: str | None = None) -> pd.DataFrame:
        """One row per gene (whole `<BOS_CDS> codons <EOS_CDS>`): n_codons, internal_stops, log_likelihood,
        nll (mean per target), perplexity; with per_codon, a column of per-target log-probability arrays.
        host: the genome the genes come from (required by a host-conditioned model, see `hosts`).
        amp: "auto" (bf16 where measured faster, `inference_amp`), True (bf16 autocast) or False (float32)."""
        from codonlm.evaluate.query import score

        host_id = self.host_id(host)
        records = self.records(seqs, skip_invalid, checked)
        rows = score(self.model, records, stride=stride, amp=self.inference_amp(records, amp, stride, host),
                     table_id=self.table_id, host=host_id)
        table = pd.DataFrame(rows)
        if per_codon:
            table["per_codon_log_likelihood"] = [np.asarray(v) for v in table.per_codon_log_likelihood]
            return table
        return table.drop(columns="per_codon_log_likelihood")

    def embed(self, seqs: Sequences, layer: str | int = "final", pool: str = "mean", stride: int | None = None,
              skip_invalid: bool = False, host: str | None = None, amp: bool | str = "auto") -> np.ndarray:
        """Pooled hidden states, [genes, channels] ([genes, layers, channels] for layer="all"; per-codon
        pooling gives a list of [codons, channels] arrays); codon positions only, never BOS or host.
        amp: as in `score`."""
        from codonlm.stage2.embeddings import embed_genes

        host_id = self.host_id(host)
        recs = self.records(seqs, skip_invalid)
        vectors, offsets, _ = embed_genes(self.model, [d for _, d in recs], str(layer), pool, stride,
                                          amp=self.inference_amp(recs, amp, stride, host, "embed"),
                                          show_progress=False, hosts=[host_id] * len(recs))
        if offsets is not None:
            return [vectors[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        return vectors

    def next_codons(self, prefix: str, k: int = 10, host: str | None = None) -> pd.DataFrame:
        """The k most likely next tokens after a gene's first codons: token, probability, amino_acid."""
        from codonlm.evaluate.query import next_codons

        host_id = self.host_id(host)
        ((_, dna),) = self.records(prefix)
        return pd.DataFrame(next_codons(self.model, dna, k, self.table_id, host_id))

    def generate(self, prefix: Sequences, max_codons: int = 500, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, host: str | None = None) -> pd.DataFrame:
        """Continue each prompt until a stop codon then `<EOS_CDS>`, or max_codons: id, dna, protein, ..."""
        from codonlm.evaluate.query import generate_rows

        host_id = self.host_id(host)
        return pd.DataFrame(generate_rows(self.model, self.records(prefix), max_codons, temperature, top_k, top_p,
                                          seed, self.table_id, host_id))

    def design_prompt(self, host: str) -> list[int]:
        """The tokens every designed gene of `host` starts from: the one place design takes its prompt."""
        return [int(t) for t in self.tokens("", host=host if self.hosts else None)[0]]

    def design(self, proteins: Sequences, host: str, beam: int = 1, samples: int = 0, temperature: float = 1.0,
               seed: int = 0, start: str | None = None, avoid: list[str] | str | None = None, gc: str | None = None,
               gc_window: int | None = None, max_homopolymer: int | None = None,
               out_dir: str | Path | None = None, runs_dir: str | Path | None = None) -> pd.DataFrame:
        """A coding sequence for each protein in host `host` (one of the run's genomes): synonym-constrained
        decoding (greedy; `beam` > 1: beam search; `samples` N: N draws at `temperature`), repaired by
        DnaChisel for the constraints given (`codonlm.evaluate.constraints`), each translated back and
        checked. One row per design: dna, log_likelihood_per_codon, cai, csi, gc, gc3, cfd, minmax_mean,
        minmax_dtw, unsatisfied (constraints it still breaks), ...; with out_dir, designs.csv/.fasta there."""
        from codonlm.evaluate.constraints import parse_constraints
        from codonlm.evaluate.design import DesignSettings, design_records, load_host, read_protein_records

        constraints = parse_constraints(avoid, gc, gc_window, max_homopolymer)
        one_protein = isinstance(proteins, str) and proteins.replace("*", "").replace(" ", "").isalpha()
        if one_protein:
            records = [("protein1", proteins)]
        elif isinstance(proteins, (str, os.PathLike)):  # a FASTA file
            records = read_protein_records(proteins)
        else:
            records = as_records(proteins)
        if self.cfg is None or self.run_id is None:
            raise UserError("design needs a trained run (its genomes are the hosts); load a run, not an export")
        key = (host, str(runs_dir or self.runs_dir))
        if key not in self._hosts:
            self._hosts[key] = load_host(self.cfg, self.run_id, host, runs_dir or self.runs_dir)
        settings = DesignSettings(beam, samples, temperature, seed, start, constraints or None)
        return design_records(self.model, self.design_prompt(host), records, self._hosts[key], settings,
                              None if out_dir is None else Path(out_dir), device=self.device)

    def scan_variants(self, seq: Sequences, llr: str = "exact", region: tuple[int, int] | None = None,
                      kinds: list[str] | None = None, stride: int | None = None, host: str | None = None,
                      amp: bool | str = "auto") -> pd.DataFrame:
        """Every single-codon substitution's log-likelihood ratio (exact: whole-gene rescoring; local).
        amp: "auto" (bf16 where measured faster, `scan_amp`), True (bf16 autocast) or False (float32)."""
        import io

        from codonlm.evaluate.variant_table import scan_records

        host_id = self.host_id(host)
        records = self.records(seq)
        buffer = io.StringIO()
        scan_records(self.model, records, stream=buffer, fmt="tsv", llr=llr, region=region, kinds=kinds,
                     stride=stride, table_id=self.table_id, show_progress=False, host=host_id,
                     amp=self.scan_amp(records, amp, llr, region, host))
        buffer.seek(0)
        return pd.read_csv(buffer, sep="\t")

    def fit_probe(self, seqs: Sequences, y, layer: str | int = "final", pool: str = "mean",
                  models: list[str] | None = None, groups=None, transform: str = "none", folds: int = 5,
                  repeats: int = 1, seed: int = 0, bootstrap: int = 1000, kmer_k: int = 4,
                  cai_reference: str | None = None, skip_invalid: bool = False, host: str | None = None) -> dict:
        """Cross-validated regression of a measured property `y` (one value per sequence) on this model's
        embeddings, beside the baselines: what `task: regression` configs run (`codonlm.stage2.regression`).

        Returns {"metrics": DataFrame (one row per model: spearman, pearson, r2 and their 95% CIs),
        "models", "layers" (layer="all": every layer's ridge probe), "chosen_layers", "predictions"}.
        Folds keep identical proteins (or equal `groups` values) together. host: the genes' genome, for a
        host-conditioned model.
        """
        from codonlm.stage2.embeddings import read_genes
        from codonlm.stage2.regression import (
            RegressionSet,
            cai_scores,
            evaluate_models,
            mean_loglik,
            protein_groups,
            transform_target,
        )
        from codonlm.stage2.regressors import CAI_MODELS, DEFAULT_REGRESSION_MODELS, feature_source

        host_id = self.host_id(host)
        raw = as_records(seqs)
        values = np.asarray(y, dtype=np.float64).ravel()
        if len(values) != len(raw):
            raise UserError(f"{len(values)} target values for {len(raw)} sequences; give one value per sequence")
        if not np.isfinite(values).all():
            raise UserError(f"target value {int(np.flatnonzero(~np.isfinite(values))[0])} is missing or not finite")
        kept = self.records(raw, skip_invalid)
        rows = np.array([i for i, (name, _) in enumerate(raw) if name in {k for k, _ in kept}], dtype=np.int64)
        ids, dna = [k for k, _ in kept], [d for _, d in kept]
        models = models or list(DEFAULT_REGRESSION_MODELS) + (list(CAI_MODELS) if cai_reference else [])
        data = RegressionSet(ids=ids, y=transform_target(values[rows], transform, "y"), seqs=dna,
                             groups=protein_groups(dna, self.table_id) if groups is None else
                             np.asarray(groups, dtype=str)[rows], source="fit_probe")
        if any(feature_source(m) == "embedding" for m in models):  # one pass: embeddings and log-likelihoods
            reading = read_genes(self.model, dna, str(layer), pool, show_progress=False, hosts=[host_id] * len(dna))
            data.embeddings, data.layers = reading.vectors, reading.layers
            data.scores["mean_loglik"] = reading.mean_loglik
        elif "zeroshot_loglik" in models:
            data.scores["mean_loglik"] = mean_loglik(self.model, ids, dna, None if host is None else [host] * len(dna))
        if cai_reference:
            data.scores["cai"] = cai_scores(dna, cai_reference)
        result = evaluate_models(data, models, folds, repeats, seed, bootstrap, kmer_k)
        table = pd.DataFrame({m: {k: v[k] for k in ("spearman", "pearson", "r2")} |
                              {f"{k}_ci_{e}": (v[f"{k}_ci"] or [None, None])[j] for k in ("spearman", "pearson", "r2")
                               for j, e in enumerate(("low", "high"))} for m, v in result["models"].items()}).T
        predictions = pd.DataFrame({"id": ids, "target": data.y, "fold": result["fold"],
                                    **{m: p.mean(0) for m, p in result["predictions"].items()}})
        return {"metrics": table, "models": result["models"], "layers": result["layers"],
                "chosen_layers": result["chosen_layers"], "predictions": predictions}

    # ---- interpretability ---------------------------------------------------------------------------

    def _as_tokens(self, seq: str | torch.Tensor, host: str | None = None) -> torch.Tensor:
        if isinstance(seq, torch.Tensor):
            return (seq if seq.dim() == 2 else seq[None]).to(self.device)
        return self.tokens(seq, host=host)

    def run_with_cache(self, seq: str | torch.Tensor, names_filter: NamesFilter = None,
                       fwd_hooks: Iterable[HookSpec] = (), host: str | None = None,
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and activations by hook name (`hook_names()`) for one DNA sequence (position p of
        `tokens(seq, host=host)`: codon i at i, or i + 1 behind a host token) or a token batch."""
        return self.model.run_with_cache(self._as_tokens(seq, host), names_filter=names_filter, fwd_hooks=fwd_hooks)

    def run_with_hooks(self, seq: str | torch.Tensor, fwd_hooks: Iterable[HookSpec],
                       host: str | None = None) -> torch.Tensor:
        """Logits with `(name, fn)` hooks in place; fn(activation, hook) may return a replacement."""
        with torch.no_grad():
            return self.model.run_with_hooks(self._as_tokens(seq, host), fwd_hooks)

    def hook_names(self) -> list[str]:
        return self.model.hook_names()
