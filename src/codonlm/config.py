"""Typed config schema (the manual's "Config Schema"), YAML loading and one-line validation errors."""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from codonlm.errors import UserError


def _at_least_one(v: int | str) -> int | str:
    if isinstance(v, int) and v < 1:
        raise ValueError("must be >= 1 or 'auto'")
    return v


PositiveIntOrAuto = Annotated[int | Literal["auto"], AfterValidator(_at_least_one)]
"""A count the program may derive itself ('auto'), else at least 1."""

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# A codon window needs room for <BOS_CDS>, at least one codon, <EOS_CDS> and one target.
MIN_BLOCK_SIZE = 8


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    vocab_size: int = Field(68, ge=68, description="token ids: 4 specials + 64 codons (more only pads the embedding)")
    block_size: int = Field(256, ge=MIN_BLOCK_SIZE, description="tokens per window (context length)")
    n_layer: int = Field(6, ge=1, description="transformer blocks")
    n_head: int = Field(4, ge=1, description="attention heads; must divide n_embd, head size even")
    n_embd: int = Field(256, ge=8, description="width of the residual stream")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="training dropout (attention probabilities, residual branches)")
    sep_mask_enabled: bool = Field(True, description="block-diagonal attention: a token sees only its own CDS "
                                   "in a packed window (A/B switch)")
    condition_on_host: bool = Field(False, description="a host token (its dataset's name) after <BOS_CDS> of "
                                    "every gene, so a gene's first codons know their genome; consumers then take "
                                    "--host/host=")
    hosts: list[str] = Field(default_factory=list, description="condition_on_host: the host tokens' names, ids 68.. "
                             "in this order (empty: the dataset names; add-host appends one)")
    host_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="condition_on_host: share of training genes "
                                "read without their host token (chosen per protein, fixed by outputs.seed), so the "
                                "model also reads genes of an unknown genome, given no --host/host=; 0: a host is "
                                "required")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head size n_embd/n_head = {self.n_embd // self.n_head} must be even (rotary embeddings)")
        return self


class DatasetSpec(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="dataset name (genome); unique")
    gbff: str | list[str] | None = Field(None, description="GenBank file(s), plain or gzipped (or give fasta/gff)")
    fasta: str | list[str] | None = Field(None, description="nucleotide FASTA, plain or gzipped, one genome per "
                                          "file: its genes are called with pyrodigal, or read from `gff`")
    gff: str | list[str] | None = Field(None, description="GFF3 file(s) whose CDS features are taken, one per "
                                        "`fasta` file (or with the sequence after ##FASTA)")
    gene_calling: Literal["auto", "single", "meta"] = Field(
        "auto", description="fasta without gff: Prodigal single-genome mode (auto: from 100 kb of contigs) or "
        "metagenome mode")
    min_len: int = Field(30, ge=1, description="minimum CDS length in sense codons (stop excluded)")
    transl_table: int = Field(11, ge=1, description="genetic code when a CDS has no /transl_table")
    domain: str | None = Field(None, description="Bacteria, Archaea ... for stage 2's domain task (default: the "
                               "GenBank lineage; FASTA and GFF3 name none)")

    @model_validator(mode="wrap")
    @classmethod
    def _no_input_is_gbff_missing(cls, data, handler):
        """An entry that names no input file at all also reports gbff as missing, as when it was required
        (so a misspelt 'gbf' is answered with 'rename gbf to gbff')."""
        try:
            return handler(data)
        except ValidationError as err:
            if not isinstance(data, dict) or any(key in data for key in _INPUT_KEYS):
                raise
            details = [{k: e[k] for k in ("type", "loc", "input", "ctx") if k in e} for e in err.errors()]
            missing = {"type": "missing", "loc": ("gbff",), "input": data}
            raise ValidationError.from_exception_data(err.title, [*details, missing]) from None

    @model_validator(mode="after")
    def _one_kind_of_input(self) -> DatasetSpec:
        if (self.gbff is None) == (self.fasta is None and self.gff is None):
            raise ValueError(f"dataset '{self.name}': give either gbff, or fasta (with gff, optionally)")
        if self.gff is not None and self.fasta is not None and len(_listed(self.gff)) != len(_listed(self.fasta)):
            raise ValueError(f"dataset '{self.name}': gff and fasta must list as many files (one FASTA per GFF3)")
        return self

    @property
    def kind(self) -> Literal["gbff", "fasta", "gff"]:
        """What the files are: GenBank, bare FASTA (genes called), or GFF3 (with a FASTA beside it or inside)."""
        return "gbff" if self.gbff is not None else "gff" if self.gff is not None else "fasta"

    @property
    def files(self) -> list[str]:
        """The dataset's main files, one per genome: its GenBank, GFF3 or bare FASTA files."""
        return _listed({"gbff": self.gbff, "gff": self.gff, "fasta": self.fasta}[self.kind])

    @property
    def companions(self) -> list[str | None]:
        """Beside each of `files`: the FASTA of a GFF3 (None when it is embedded, and for other kinds)."""
        if self.kind == "gff" and self.fasta is not None:
            return _listed(self.fasta)
        return [None] * len(self.files)


_INPUT_KEYS = ("gbff", "fasta", "gff")


def _listed(files: str | list[str]) -> list[str]:
    return [files] if isinstance(files, str) else list(files)


class DataConfig(_Section):
    datasets: list[DatasetSpec] = Field(min_length=1, description="the genomes to train on")
    windows_per_seq: PositiveIntOrAuto = Field("auto", description="cap on the windows one gene may fill; auto: "
                                               "as many as it needs (full coverage)")
    val_frac: float = Field(0.05, ge=0.0, lt=1.0, description="share of genes in validation (split by protein)")
    test_frac: float = Field(0.05, ge=0.0, lt=1.0, description="share of genes held out for evaluation")
    split_by: Literal["protein", "cluster"] = Field(
        "protein", description="protein: identical proteins never straddle train/val/test; cluster: MMseqs2 "
        "clusters of similar proteins (cluster_identity, cluster_coverage) go whole to one split")
    cluster_identity: float = Field(0.5, gt=0.0, le=1.0, description="split_by cluster: minimum sequence identity "
                                    "that puts two proteins in one cluster")
    cluster_coverage: float = Field(0.8, gt=0.0, le=1.0, description="split_by cluster: minimum alignment "
                                    "coverage of both proteins")
    pack_mode: Literal["multi", "single"] = Field("multi", description="multi: genes joined by <SEP> in a "
                                                  "window; single: one gene per window (A/B switch)")
    raw_dir: str = Field("data/raw", description="where fetch-data puts the default corpus")
    processed_dir: str = Field("data/processed", description="prepared windows, one folder per data key")
    prepare_workers: PositiveIntOrAuto = Field("auto", description="processes parsing input files in prepare; "
                                                   "auto = every core (one for small corpora)")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_frac + self.test_frac >= 1.0:
            raise ValueError(f"val_frac + test_frac = {self.val_frac + self.test_frac} leaves no training data")
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset names must be unique; repeated: {', '.join(dupes)}")
        return self


class TrainConfig(_Section):
    batch_size: int = Field(32, ge=1, description="windows per micro-batch (per process under torchrun)")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(3e-4, gt=0.0, description="peak learning rate")
    weight_decay: float = Field(0.1, ge=0.0, description="decoupled weight decay (matrices only)")
    epochs: PositiveIntOrAuto = Field(5, description="passes over the training windows; auto: "
                                      "tokens_per_param x parameters worth of tokens")
    tokens_per_param: float = Field(20.0, gt=0.0, description="used when epochs is 'auto'")
    max_steps: int | None = Field(None, ge=1, description="optional hard cap on optimizer steps")
    optimizer: Literal["adamw", "adafactor"] = Field("adamw", description="A/B switch; adafactor wants lr ~1e-2")
    amp: bool | Literal["auto"] = Field(
        "auto", description="auto: CUDA bf16 where supported, CPU bf16 only when timed clearly faster than fp32 "
        "on this model at start (runs/<RUN_ID>/precision.json), MPS autocast with fallback; true/false pin bf16 "
        "autocast on or off")
    use_checkpoint: bool = Field(False, description="activation checkpointing: less memory, more compute")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy label smoothing")
    grad_clip: float = Field(1.0, ge=0.0, description="gradient norm clip (0: off)")
    max_nonfinite_steps: int = Field(5, ge=1, description="consecutive non-finite losses before stopping")
    checkpoint_every: int = Field(200, ge=0, description="optimizer steps between mid-epoch last.pt (0: epoch ends only)")
    checkpoint_minutes: float = Field(10.0, ge=0.0, description="minutes of wall time after which a mid-epoch "
                                      "last.pt is also written (0: off); Ctrl-C/SIGTERM save last.pt too")
    log_every: int = Field(10, ge=1, description="optimizer steps between curves.csv rows (mean train loss since the last)")
    eval_every: int = Field(50, ge=0, description="steps between validations on a fixed subset (0: epoch ends only)")
    eval_windows: int = Field(256, ge=1, description="windows in that fixed validation subset")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: cuda, else mps, else cpu")


class ScheduleConfig(_Section):
    scheduler: Literal["cosine", "plateau"] = Field("cosine", description="cosine: warmup then decay to min_lr; "
                                                    "plateau: warmup, then halve lr on a stalled val loss (A/B switch)")
    warmup_steps: int = Field(100, ge=0, description="linear warmup, optimizer steps")
    min_lr: float = Field(3e-5, ge=0.0, description="floor of the learning rate")
    plateau_patience: int = Field(1, ge=1, description="plateau: halve lr after this many epochs in a row "
                                  "without a better val loss")
    early_stop_patience: int = Field(3, ge=1, description="epochs without a better val loss before stopping")


class SystemConfig(_Section):
    compile: bool = Field(False, description="torch.compile the model (pays on GPUs; first step is slow)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode")
    matmul_precision: Literal["highest", "high", "medium"] = Field(
        "high", description="torch.set_float32_matmul_precision (high: TF32 on GPUs)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: read in the training process)")
    pin_memory: bool = Field(False, description="page-locked batches (faster host-to-GPU copies)")
    prefetch_factor: int | None = Field(None, ge=1, description="batches each worker reads ahead (workers > 0)")
    persistent_workers: bool = Field(False, description="keep workers between epochs (workers > 0)")
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: all cores")


class OutputsConfig(_Section):
    out_dir: str = Field("outputs/checkpoints", description="checkpoints: <out_dir>/<RUN_ID>/best.pt, last.pt")
    scores_dir: str = Field("outputs/scores", description="curves and generation: <scores_dir>/<RUN_ID>/")
    runs_dir: str = Field("runs", description="run folders: <runs_dir>/<RUN_ID>/ (log, config, reports)")
    log_csv: str = Field("curves.csv", description="training curves file name under scores_dir/<RUN_ID>/")
    seed: int = Field(1337, description="seeds the split, the window order, init and sampling")
    itos_path: str = Field("data/processed/itos.json", description="copy of the vocabulary (id -> token)")
    saliency_window: int = Field(32, ge=1, description="analyze_saliency: codons before the predicted token")
    saliency_top: int = Field(20, ge=1, description="analyze_saliency: top positions per gene for motifs")


class Config(_Section):
    name: str = Field("tiny", pattern=r"^[A-Za-z0-9_-]+$", description="prefix of the run id")
    model: ModelConfig = ModelConfig()
    data: DataConfig
    train: TrainConfig = TrainConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    system: SystemConfig = SystemConfig()
    outputs: OutputsConfig = OutputsConfig()

    @model_validator(mode="after")
    def _min_lr_not_above_lr(self) -> Config:
        if self.schedule.min_lr > self.train.lr:
            raise ValueError(f"schedule.min_lr ({self.schedule.min_lr}) exceeds train.lr ({self.train.lr})")
        return self

    @model_validator(mode="after")
    def _a_host_token_per_dataset(self) -> Config:
        """condition_on_host: hosts default to the dataset names, every dataset has one, and the vocabulary
        grows to hold them (ids 68 + index)."""
        m = self.model
        if not m.condition_on_host:
            if m.hosts or m.host_dropout:
                raise ValueError("model.hosts or model.host_dropout is set but model.condition_on_host is false; "
                                 "set it true or drop them")
            return self
        if not m.hosts:
            m.hosts = [d.name for d in self.data.datasets]
        missing = [d.name for d in self.data.datasets if d.name not in m.hosts]
        if missing or len(set(m.hosts)) != len(m.hosts):
            raise ValueError(f"model.hosts must name every dataset once (missing: {', '.join(missing) or 'none'})")
        if 68 + len(m.hosts) > 256:
            raise ValueError(f"{len(m.hosts)} hosts: at most 188 (token ids are stored as uint8)")
        m.vocab_size = max(m.vocab_size, 68 + len(m.hosts))
        return self


KEY_ALIASES = {  # names other trainers and habits use -> our key (suggested only where the schema has it)
    **dict.fromkeys(("learning_rate", "max_lr", "peak_lr", "lr_max"), "lr"),
    **dict.fromkeys(("min_learning_rate", "lr_min", "final_lr"), "min_lr"),
    **dict.fromkeys(("n_epochs", "num_epochs", "max_epochs", "epoch"), "epochs"),
    **dict.fromkeys(("max_iters", "num_steps", "total_steps"), "max_steps"),
    **dict.fromkeys(("warmup", "warmup_iters", "num_warmup_steps"), "warmup_steps"),
    **dict.fromkeys(("bs", "batch", "micro_batch_size"), "batch_size"),
    **dict.fromkeys(("gradient_accumulation_steps", "grad_accum", "accumulation_steps"), "grad_accum_steps"),
    **dict.fromkeys(("wd",), "weight_decay"),
    **dict.fromkeys(("patience",), "early_stop_patience"),
    **dict.fromkeys(("lr_scheduler", "lr_schedule"), "scheduler"),
    **dict.fromkeys(("precision", "mixed_precision", "bf16", "fp16"), "amp"),
    **dict.fromkeys(("n_layers", "num_layers", "layers"), "n_layer"),
    **dict.fromkeys(("n_heads", "num_heads", "heads"), "n_head"),
    **dict.fromkeys(("d_model", "n_embed", "hidden_size", "emb_dim", "embed_dim"), "n_embd"),
    **dict.fromkeys(("context_length", "seq_len", "max_seq_len", "ctx_len", "context"), "block_size"),
    **dict.fromkeys(("gbf", "gbk", "gb", "genbank", "genbank_file", "gbk_file"), "gbff"),
    **dict.fromkeys(("random_seed",), "seed"),
    **dict.fromkeys(("workers", "dataloader_workers"), "num_workers"),
}


def _section_type(annotation) -> type[BaseModel] | None:
    """The section model a field holds (itself, or the items of a list of sections), else None."""
    import typing

    inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _sections(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """`model` and every section below it, each with its key path ('data.datasets[].' for list items)."""
    found = [(prefix, model)]
    for name, field in model.model_fields.items():
        if (inner := _section_type(field.annotation)) is not None:
            is_list = inner is not field.annotation
            found += _sections(inner, f"{prefix}{name}{'[]' if is_list else ''}.")
    return found


def _section_for(loc: tuple, root: type[BaseModel]) -> type[BaseModel]:
    model = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        model = _section_type(field.annotation) or model
    return model


def suggest_key(key: str, section: type[BaseModel], root: type[BaseModel]) -> str | None:
    """The valid key a user most likely meant by `key` in `section`: a known alias, the same name in
    another section (as its dotted path), else the closest spelling here, else anywhere in the schema."""
    typed = key.strip().lower().replace("-", "_")
    wanted = KEY_ALIASES.get(typed, typed)
    everywhere = _sections(root)
    if wanted in section.model_fields:
        return wanted
    elsewhere = [f"{path}{wanted}" for path, model in everywhere if wanted in model.model_fields]
    if elsewhere:
        return elsewhere[0]
    if match := difflib.get_close_matches(typed, list(section.model_fields), n=1, cutoff=0.6):
        return match[0]
    paths = {name: f"{path}{name}" for path, model in everywhere for name in model.model_fields}
    match = difflib.get_close_matches(typed, list(paths), n=1, cutoff=0.75)
    return paths[match[0]] if match else None


def _config_loc(loc: tuple) -> tuple:
    """`loc` without the union-member parts pydantic appends (e.g. 'int', "literal['auto']"): not config keys."""
    return tuple(p for p in loc if not (isinstance(p, str) and (p in ("int", "str", "float", "bool")
                                                                 or "[" in p or "-" in p)))


def _unknown_key_message(loc: tuple, errors: list[dict], root: type[BaseModel]) -> str:
    """'unknown config key ...' with the key meant (and, when that key is required, that renaming fixes
    the 'Field required' pydantic also reports), or the valid keys of the section."""
    section = _section_for(loc, root)
    where = ".".join(str(p) for p in loc)
    meant = suggest_key(str(loc[-1]), section, root)
    if meant is None:
        return f"unknown config key '{where}'; valid keys there: {', '.join(section.model_fields)}"
    missing = any(e["type"] == "missing" and _config_loc(e["loc"]) == (*loc[:-1], meant) for e in errors)
    required = f" ({meant} is required: rename {loc[-1]} to {meant})" if missing else ""
    return f"unknown config key '{where}'; did you mean '{meant}'?{required}"


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel] | None = None) -> str:
    """One line: the first problem (an unknown key before the rest: a typo causes the others), where it
    is, and the key meant for typos (keys of `root`, default the run config)."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _config_loc(first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{source}: {_unknown_key_message(loc, errors, root or Config)}"
    where = ".".join(str(p) for p in loc) or "<top level>"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    got_txt = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
    return f"{source}: invalid value for '{where}': {msg}{got_txt}"


def load_yaml(path: str | Path, parse: Callable[[dict, str], T], missing_hint: str, expected: str) -> T:
    """`parse(mapping, source)` of the YAML mapping in `path`; one-line UserErrors for a missing file,
    bad syntax or a non-mapping (`missing_hint` and `expected` say what the user should pass)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path} ({missing_hint})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{line} is not valid YAML; fix the syntax and retry") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of {expected}")
    return parse(raw, str(path))


OVERRIDES_ENV = "CODONLM_CONFIG_OVERRIDES"
"""Names a YAML file merged over every run config `load_config` reads (tests, quick experiments)."""


def merge_overrides(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in: mappings key by key, anything else (lists too) replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        both_mappings = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_overrides(merged[key], value) if both_mappings else value
    return merged


def config_overrides() -> tuple[str, dict] | None:
    """(path, mapping) of the overrides file named by CODONLM_CONFIG_OVERRIDES, or None when unset."""
    path = os.environ.get(OVERRIDES_ENV)
    if not path:
        return None
    return path, load_yaml(path, lambda raw, _source: raw, f"{OVERRIDES_ENV} names it; fix the path or unset it",
                           "config sections to merge over the config (model, data, train, ...)")


def load_config(path: str | Path) -> Config:
    """The config in `path`, with CODONLM_CONFIG_OVERRIDES merged over it when set (the run's snapshot,
    config.yaml, then holds the merged result, and provenance.json names the overrides file)."""

    def parse(raw: dict, source: str) -> Config:
        if overrides := config_overrides():
            raw = merge_overrides(raw, overrides[1])
            source = f"{source} + {OVERRIDES_ENV}={overrides[0]}"
        return parse_config(raw, source=source)

    return load_yaml(path, parse, "pass -c configs/tiny_cpu.yaml or another YAML",
                     "config sections (model, data, train, ...)")


def validate(model: type[M], raw: dict, source: str) -> M:
    """`raw` as a `model`, or a one-line UserError naming `source` and the first problem."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source, root=model)) from None


def parse_config(raw: dict, source: str = "<config>") -> Config:
    return validate(Config, raw, source)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_sha256(cfg: Config) -> str:
    """Hash of the resolved config (defaults filled in), so equal settings hash equal."""
    return hashlib.sha256(config_to_yaml(cfg).encode()).hexdigest()


def _type_name(annotation) -> str:
    """'int', 'int or null', "'multi' or 'single'", "int >= 1 or 'auto'" for the reference table."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return "int >= 1 or 'auto'" if annotation is PositiveIntOrAuto else _type_name(args[0])
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
    """' >= 1', ' in [0, 1)' ... from a field's constraints, for the reference table."""
    marks = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in field.metadata
             if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")}  # annotated_types.Ge(ge=...) and friends
    low = f"[{marks['Ge']}" if "Ge" in marks else f"({marks['Gt']}" if "Gt" in marks else None
    high = f"{marks['Le']}]" if "Le" in marks else f"{marks['Lt']})" if "Lt" in marks else None
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {low[1:]}"
    return f" {'<=' if high[-1] == ']' else '<'} {high[:-1]}" if high else ""


def _reference_row(key: str, field, type_text: str | None = None) -> str:
    default = "required" if field.is_required() else field.get_default(call_default_factory=True)
    meaning = (field.description or "").replace("|", "\\|").replace("<", "&lt;")  # <SEP> is not an HTML tag
    return f"| `{key}` | {type_text or _type_name(field.annotation) + _bounds(field)} | `{default}` | {meaning} |"


def config_reference_markdown() -> str:
    """The config reference table (README) generated from the schema, so the docs cannot drift."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, top in Config.model_fields.items():
        model = top.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            lines.append(_reference_row(section, top))
            continue
        for name, field in model.model_fields.items():
            if (section, name) != ("data", "datasets"):
                lines.append(_reference_row(f"{section}.{name}", field))
                continue
            lines.append(_reference_row("data.datasets[]", field, "list of {name, gbff or fasta/gff, gene_calling, "
                                        "min_len, transl_table, domain}, at least one"))
            lines += [_reference_row(f"data.datasets[].{n}", f) for n, f in DatasetSpec.model_fields.items()]
    return "\n".join(lines) + "\n"
