"""post_process.sh: a run's shareable artifacts in one folder and one .tar.gz, with sha256 checksums.

    <out_dir>/<RUN_ID>/            the run folder (config, data report, evaluate/, analysis/, report.html, log)
                     scores/       training curve and prefix generation (outputs/scores/<RUN_ID>)
                     stage2/       stage-2 classifier results, when they exist
                     hf_model/     the model as a Hugging Face LlamaForCausalLM (codonlm export-hf)
                     MANIFEST.sha256  `sha256sum -c MANIFEST.sha256` checks every file
                     manifest.json    the same with sizes, where each file came from, and what was missing
    <out_dir>/<RUN_ID>.tar.gz      the folder as one archive

The folder is built beside its final place and swapped in whole, and the archive is written to a
temporary name first, so an interrupted run leaves the previous bundle intact.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from codonlm.io import atomic_path, read_json, sha256_file, write_json
from codonlm.log import log


def _copy_tree(src: Path, dst: Path) -> int:
    """Copy the files under src (hidden temp files skipped); returns how many."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*"), dirs_exist_ok=True)
    return sum(1 for p in dst.rglob("*") if p.is_file())


def write_manifest(folder: Path, sources: dict[str, str], missing: list[str], extra: dict) -> int:
    """MANIFEST.sha256 (sha256sum format) and manifest.json over every file in folder; returns the count."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in ("MANIFEST.sha256", "manifest.json"))
    entries = []
    for p in files:
        rel = p.relative_to(folder).as_posix()
        top = rel.split("/", 1)[0] if "/" in rel else ""
        entries.append({"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p),
                        "source": sources.get(top, sources[""])})
    (folder / "MANIFEST.sha256").write_text("".join(f"{e['sha256']}  {e['path']}\n" for e in entries))
    write_json(folder / "manifest.json", {**extra, "files": entries, "missing": missing})
    return len(entries)


def _swap_in(staging: Path, final: Path) -> None:
    """Replace `final` by `staging` with two renames (the old bundle stays until the new one is complete)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def bundle_run(run_id: str, out_dir: str | Path = "outputs/share", checkpoints_dir: str | None = None,
               runs_dir: str | Path | None = None, reports_dir: str | Path = "outputs/reports") -> tuple[Path, Path]:
    """Gather a finished run into <out_dir>/<RUN_ID>/ and <out_dir>/<RUN_ID>.tar.gz; returns both paths."""
    from codonlm.analysis.context import load_context
    from codonlm.analysis.report import write_report
    from codonlm.model.checkpoint import load_checkpoint
    from codonlm.model.hf_export import export_hf

    ctx = load_context(run_id, checkpoints_dir, runs_dir)
    write_report(run_id, ctx.run_dir.parent, reports_dir)  # the report reflects what is there now
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{run_id}.tmp-"))
    try:
        scores = Path(ctx.cfg.outputs.scores_dir) / run_id
        stage2 = Path(reports_dir) / run_id
        sources = {"": str(ctx.run_dir), "scores": str(scores), "stage2": str(stage2),
                   "hf_model": f"codonlm export-hf {run_id} (from {ctx.checkpoint})"}
        _copy_tree(ctx.run_dir, staging)
        missing = [f"{name}: not run yet ({path})" for name, path in
                   (("evaluate", ctx.run_dir / "evaluate"), ("analysis", ctx.run_dir / "analysis"))
                   if not path.is_dir()]
        for name, src in (("scores", scores), ("stage2", stage2)):
            if src.is_dir():
                _copy_tree(src, staging / name)
            else:
                missing.append(f"{name}: not found ({src})")
        export_hf(ctx.model, staging / "hf_model", load_checkpoint(ctx.checkpoint).get("itos"))
        n = write_manifest(staging, sources, missing, {
            "run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checkpoint": str(ctx.checkpoint), "checkpoint_sha256": sha256_file(ctx.checkpoint),
            "analysis_steps": {p.parent.name: (read_json(p) or {}).get("status")
                               for p in sorted((ctx.run_dir / "analysis").glob("*/summary.json"))}})
        final = out_dir / run_id
        _swap_in(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    archive = out_dir / f"{run_id}.tar.gz"
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(final, arcname=run_id)
    log(f"[bundle] {n} files, checksums in MANIFEST.sha256" + (f"; missing: {'; '.join(missing)}" if missing else ""))
    return final, archive
