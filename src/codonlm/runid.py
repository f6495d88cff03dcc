"""Run ids like 2026-11-24_tiny_6L4H_d256_e5 (the manual's format), unique: a run never reuses another's.

The manual's form is the stem; when a run with that id exists (its folder under runs/, checkpoints/
or scores/), a new run gets the first free suffix: 2026-11-24_tiny_6L4H_d256_e5-2, -3, ...
Continuing a run (resume, or ./main.sh re-run with the same config) is the only way back into one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from codonlm.config import Config, OutputsConfig, config_sha256, load_yaml, parse_config
from codonlm.errors import UserError


def make_run_id(cfg: Config, date: dt.date | None = None) -> str:
    """The manual's id for a config: date, name, layers, heads, width, epochs."""
    date = date or dt.date.today()
    m = cfg.model
    return f"{date.isoformat()}_{cfg.name}_{m.n_layer}L{m.n_head}H_d{m.n_embd}_e{cfg.train.epochs}"


def run_folders(cfg: Config, run_id: str) -> list[Path]:
    """Every folder a run owns: its run folder, its checkpoints and its scores."""
    o = cfg.outputs
    return [Path(o.runs_dir) / run_id, Path(o.out_dir) / run_id, Path(o.scores_dir) / run_id]


def is_taken(cfg: Config, run_id: str) -> bool:
    return any(p.exists() for p in run_folders(cfg, run_id))


def _candidates(stem: str):
    yield stem
    n = 2
    while True:
        yield f"{stem}-{n}"
        n += 1


def next_free_run_id(cfg: Config, date: dt.date | None = None) -> str:
    """The id a new run of this config would get now (nothing is created)."""
    return next(c for c in _candidates(make_run_id(cfg, date)) if not is_taken(cfg, c))


def same_config(cfg: Config, run_id: str) -> bool:
    """True when runs/<run_id> was made with exactly this config (resolved, defaults filled in)."""
    digest = Path(cfg.outputs.runs_dir) / run_id / "config.sha256"
    return digest.is_file() and digest.read_text().strip() == config_sha256(cfg)


def claim_run(cfg: Config, run_id: str | None = None) -> tuple[str, bool]:
    """The run a command writes into: (run id, whether it is new). The run folder exists afterwards.

    No id: a new run under the first free id, claimed with an exclusive mkdir so two runs started at
    once never share a folder. A given id: a new run of that name, or the same run continued when it
    was made with this very config; a run made with another config is refused.
    """
    runs = Path(cfg.outputs.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    if run_id is not None:
        if not is_taken(cfg, run_id):
            (runs / run_id).mkdir(parents=True, exist_ok=True)
            return run_id, True
        if same_config(cfg, run_id):
            return run_id, False
        raise UserError(f"run '{run_id}' exists and was made with another config ({runs / run_id}/config.yaml); "
                        "pick a new --run-id, or leave it out to start a new run with a fresh id")
    for candidate in _candidates(make_run_id(cfg)):
        if is_taken(cfg, candidate):
            continue
        try:
            (runs / candidate).mkdir()
        except FileExistsError:  # another run claimed it a moment ago
            continue
        return candidate, True
    raise AssertionError("unreachable")


def find_run(cfg: Config) -> str | None:
    """The newest run made with exactly this config, if any: the run ./main.sh continues."""
    runs = Path(cfg.outputs.runs_dir)
    if not runs.is_dir():
        return None
    digest = config_sha256(cfg)
    matches = [p for p in runs.glob("*/config.sha256") if p.read_text().strip() == digest]
    return max(matches, key=lambda p: (p.stat().st_mtime, p.parent.name)).parent.name if matches else None


def locate_run(run_id: str, checkpoints_dir: str | Path | None = None, runs_dir: str | Path | None = None) -> Path:
    """An existing run's checkpoint folder, from its own recorded config (runs/<RUN_ID>/config.yaml): every
    command that reads a run comes here, so a run trained with a custom outputs.out_dir is found without flags.

    runs_dir defaults to outputs.runs_dir's default (runs); checkpoints_dir, when given, overrides the
    recorded out_dir (checkpoints moved elsewhere), and without a run folder it (default outputs/checkpoints)
    is where the run's checkpoints must be. An unknown id is one line listing the runs that exist.
    """
    from codonlm.provenance import unknown_run

    runs = Path(runs_dir or OutputsConfig().runs_dir)
    recorded = runs / run_id / "config.yaml"
    cfg = None
    if recorded.is_file():
        cfg = load_yaml(recorded, parse_config, "the run's config snapshot", "config sections")
    folder = Path(checkpoints_dir or (cfg.outputs.out_dir if cfg else OutputsConfig().out_dir)) / run_id
    if cfg is None and not folder.is_dir():
        if recorded.parent.is_dir():  # the run exists but its snapshot is gone: say so, not "unknown run"
            raise UserError(f"run folder {recorded.parent} lacks its config.yaml (the run's config snapshot), so "
                            f"its checkpoints cannot be found (not in {folder}); restore config.yaml, or pass "
                            f"--checkpoints-dir DIR where {run_id}/best.pt is")
        raise unknown_run(run_id, f"{recorded}, no {folder}", runs)
    return folder


def latest_run(checkpoints_dir: str | Path | None = None, runs_dir: str | Path | None = None) -> str:
    """The trained run whose newest checkpoint (best.pt or last.pt) is the most recent: what `latest` (and a
    missing RUN_ID of ./analysis.sh, post_process.sh) means. Candidates: every run folder under runs_dir (its
    checkpoints where its own config puts them, as `locate_run` finds them) and every run under checkpoints_dir
    (default: the default outputs.out_dir), so a run trained with a custom outputs.out_dir counts too."""
    runs = Path(runs_dir or OutputsConfig().runs_dir)
    default = Path(checkpoints_dir or OutputsConfig().out_dir)
    folders = [p for p in default.iterdir() if p.is_dir()] if default.is_dir() else []
    for run in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
        try:
            folders.append(locate_run(run.name, checkpoints_dir, runs))
        except UserError:  # a run folder with no checkpoints yet (or no config): not a trained run
            continue
    stamps = {}
    for folder in folders:
        times = [p.stat().st_mtime for p in (folder / "best.pt", folder / "last.pt") if p.is_file()]
        if times:
            stamps[folder.name] = max([*times, stamps.get(folder.name, 0.0)])
    if not stamps:
        where = f"{default}" if checkpoints_dir else f"{runs} or {default}"
        raise UserError(f"no trained run under {where} (looking for the latest); train one first (./main.sh) "
                        "or name a run id")
    return max(stamps, key=stamps.get)
