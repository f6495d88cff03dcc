"""The classifier config (configs/classifier/*.yaml): which files, which models, where the results go.

`task: regression` makes the same file a regression config (`RegressionConfig`: a numeric target column,
k-fold CV grouped by protein, probes against codon-usage baselines; `codonlm.stage2.regression`).

Paths may hold `{run_id}` and `{data_dir}`; `run_id: latest` means the newest trained run under
`checkpoints_dir`. With `train_*` only, one seeded stratified split (`test_size`, `seed`) serves every model;
with `test_*` the declared files are the test set (TSTR: train_* synthetic, test_* real; TRTS the reverse).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from codonlm.config import load_yaml, validate
from codonlm.errors import UserError
from codonlm.runid import latest_run
from codonlm.stage2.classifiers import KMER_MODELS, MODELS, PROBE_MODELS
from codonlm.stage2.regressors import CAI_MODELS, DEFAULT_REGRESSION_MODELS, REGRESSION_MODELS, feature_source

ModelName = Literal["probe_logreg", "probe_svm", "mlp", "kmer_logreg", "kmer_svm", "kmer_xgb"]
Paths = str | list[str]
PATH_KEYS = ("train_labels", "train_embeddings", "train_seqs", "test_labels", "test_embeddings", "test_seqs",
             "out_dir", "data_dir", "samples", "processed_dir", "cai_reference", "zero_shot_scores")


class _TaskConfig(BaseModel):
    """What classifier and regression configs share: no unknown keys, a models list without repeats, paths."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("models", check_fields=False)
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a model is listed twice")
        return v

    def as_list(self, key: str) -> list[str]:
        value = getattr(self, key)
        return [] if value is None else [value] if isinstance(value, str) else list(value)


class ClassifierConfig(_TaskConfig):

    task: Literal["classification"] = "classification"
    description: str = ""
    run_id: str = Field("latest", description="run whose model and data the paths refer to; latest = newest")
    checkpoints_dir: str | None = None  # default: the run's own outputs.out_dir (runs/<RUN_ID>/config.yaml)
    runs_dir: str | None = None  # where run folders live (default: runs)
    # ready tasks: build the labelled held-out genes (and generated genes) of the run into data_dir first
    build_from_run: list[Literal["heldout", "generated"]] = []
    data_dir: str = "outputs/reports/{run_id}/stage2/data"
    processed_dir: str | None = None  # default: the run config's data.processed_dir
    heldout_per_genome: int | None = Field(None, ge=1, description="seeded cap per genome and split")
    samples: str = "outputs/scores/{run_id}/gen_prefix/samples.csv"
    temperature: float = Field(1.0, gt=0, description="generated genes of this sampling temperature")
    layer: str = "final"
    pool: Literal["mean", "last", "max"] = "mean"

    train_labels: Paths
    train_embeddings: Paths | None = None
    train_seqs: Paths | None = None  # default: train_labels when it has a 'seq' column
    test_labels: Paths | None = None
    test_embeddings: Paths | None = None
    test_seqs: Paths | None = None
    label_column: str = "label"
    id_column: str = "id"
    seq_column: str = "seq"  # the DNA column of a table of sequences (*_seqs, or the labels themselves)
    group_column: str | None = None  # genes sharing a value stay on one side of the seeded split

    models: list[ModelName] = Field(default_factory=lambda: list(MODELS), min_length=1)
    kmer_k: int = Field(4, ge=1, le=8)
    test_size: float = Field(0.25, gt=0, lt=1)
    max_per_class: int | None = Field(None, ge=2, description="seeded draw of at most this many per class")
    seed: int = 0
    bootstrap: int = Field(1000, ge=0)
    out_dir: str

    @property
    def probes(self) -> list[str]:
        return [m for m in self.models if m in PROBE_MODELS]

    @property
    def kmers(self) -> list[str]:
        return [m for m in self.models if m in KMER_MODELS]


RegressionModelName = Literal[REGRESSION_MODELS]  # type: ignore[valid-type]


class RegressionConfig(_TaskConfig):
    """A regression task: the run/embedding keys of ClassifierConfig, a numeric target and CV settings."""

    task: Literal["regression"]
    description: str = ""
    run_id: str = Field("latest", description="run whose model embeds the genes and scores them")
    checkpoints_dir: str | None = None  # default: the run's own outputs.out_dir (runs/<RUN_ID>/config.yaml)
    runs_dir: str | None = None  # where run folders live (default: runs)
    build_from_run: list[Literal["heldout"]] = []
    data_dir: str = "outputs/reports/{run_id}/stage2/data"
    processed_dir: str | None = None
    heldout_per_genome: int | None = Field(None, ge=1)
    samples: str = "outputs/scores/{run_id}/gen_prefix/samples.csv"  # prompt genes stay in the held-out draw
    layer: str = Field("final", description="final, a block index, or all (layer sweep chosen by inner CV)")
    pool: Literal["mean", "last", "max"] = "mean"

    train_labels: Paths
    train_embeddings: Paths | None = None  # default: embedded with the run's model into out_dir
    train_seqs: Paths | None = None  # default: the labels' seq column
    target_column: str = "target"
    transform: Literal["none", "log10", "rank"] = "none"
    id_column: str = "id"
    seq_column: str = "seq"
    skip_invalid: bool = False  # drop (and count) records that are not a clean CDS instead of failing
    dedupe: Literal["error", "first", "mean"] = "error"  # a repeated id: fail, keep its first row, average it
    group_column: str | None = None  # default: identical proteins form a group
    cai_reference: str | None = None  # FASTA of reference genes (e.g. the host's ribosomal proteins)
    zero_shot_scores: str | None = None  # CSV id, cai, mean_loglik (the ready tasks build it); default: computed

    models: list[RegressionModelName] = Field(default_factory=lambda: list(DEFAULT_REGRESSION_MODELS), min_length=1,
                                              description="default: all but the CAI ones (they need cai_reference)")
    kmer_k: int = Field(4, ge=1, le=4)
    folds: int = Field(5, ge=2)
    repeats: int = Field(1, ge=1, description="CV repeated with seeds seed, seed + 1, ...")
    seed: int = 0
    bootstrap: int = Field(1000, ge=0)
    out_dir: str

    @property
    def needs_model(self) -> bool:
        """Whether the run's model must embed or score the genes (no embeddings or scores given)."""
        probes = any(feature_source(m) == "embedding" for m in self.models)
        return (probes and not self.train_embeddings) or ("zeroshot_loglik" in self.models
                                                          and not self.zero_shot_scores)


def parse_classifier_config(raw: dict, source: str = "<classifier config>") -> ClassifierConfig | RegressionConfig:
    if isinstance(raw, dict) and raw.get("task") == "regression":
        reg = validate(RegressionConfig, raw, source)
        cai = [m for m in reg.models if m in CAI_MODELS]
        if cai and not (reg.cai_reference or reg.zero_shot_scores):
            raise UserError(f"{source}: models {', '.join(cai)} need cai_reference (a FASTA of reference genes, "
                            "e.g. the host's ribosomal proteins); set it or drop them")
        return reg
    cfg = validate(ClassifierConfig, raw, source)
    if cfg.probes and not cfg.train_embeddings:
        raise UserError(f"{source}: models {', '.join(cfg.probes)} read embeddings; set train_embeddings")
    if cfg.test_labels is None and (cfg.test_embeddings or cfg.test_seqs):
        raise UserError(f"{source}: test_embeddings/test_seqs need test_labels")
    if cfg.test_labels is not None and cfg.probes and not cfg.test_embeddings:
        raise UserError(f"{source}: models {', '.join(cfg.probes)} read embeddings; set test_embeddings")
    return cfg


def load_classifier_config(path: str | Path) -> ClassifierConfig | RegressionConfig:
    return load_yaml(path, parse_classifier_config,
                     "pass --config configs/classifier/probe_aa.yaml or another classifier YAML",
                     "classifier settings (train_labels, models, out_dir, ...)")


def resolve_paths(cfg: ClassifierConfig | RegressionConfig, run_id: str | None = None):
    """A copy with `{run_id}` and `{data_dir}` filled in (run_id: the argument, else the config's; latest
    resolved only when a path or build_from_run needs it)."""
    run = run_id or cfg.run_id
    keys = [k for k in PATH_KEYS if k in type(cfg).model_fields]
    templated = [p for k in keys if k not in ("data_dir", "samples") for p in cfg.as_list(k)]
    needs_run = bool(cfg.build_from_run) or any("{run_id}" in p or "{data_dir}" in p for p in templated)
    needs_run |= isinstance(cfg, RegressionConfig) and cfg.needs_model
    if needs_run and run == "latest":
        run = latest_run(cfg.checkpoints_dir, cfg.runs_dir)
    data_dir = cfg.data_dir.replace("{run_id}", run)
    updates: dict = {"run_id": run, "data_dir": data_dir}
    for key in keys:
        value = getattr(cfg, key)
        if key == "data_dir" or value is None:
            continue
        fill = [p.replace("{run_id}", run).replace("{data_dir}", data_dir) for p in cfg.as_list(key)]
        updates[key] = fill[0] if isinstance(value, str) else fill
    return cfg.model_copy(update=updates)
