"""The `codonlm` command. Each subcommand parses arguments and calls the package; no logic lives here.

Progress and status lines go through codonlm.log.log. A bare print() stays only where the text is the
command's product (make-run-id's id, eval-perplexity's CSV without --out; query writes its own) or an
error line for stderr: scripts read stdout, so a status line there would corrupt it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from codonlm.errors import Interrupted, TrainingDiverged, UserError
from codonlm.log import log, log_to, run_log

DEFAULT_CONFIG = "configs/tiny_cpu.yaml"
AMP_HELP = ("bf16 autocast, slightly less exact; faster or slower than fp32 depending on the CPU (native bf16 "
            "helps; without it, 4-5x slower measured); training's 'amp: auto' times both")
AUTO_AMP_HELP = ("auto (default): bf16 autocast where timed faster on this model (a CUDA GPU with bf16: always; "
                 "jobs under 200k tokens on CPU: float32 untimed); true (a bare --amp): bf16; false: float32")


def _amp(text: str) -> bool | str:
    """--amp auto|true|false (a bare --amp is true)."""
    choices = {"auto": "auto", "true": True, "false": False}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"'{text}': expected auto, true or false")
    return choices[text.lower()]


def _add_amp(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amp", nargs="?", const=True, default="auto", type=_amp, metavar="auto|true|false",
                   help=AUTO_AMP_HELP)


def _claim_run(cfg, run_id: str | None, config_path: str | None):
    """(run id, run folder) of a command that starts or continues a run; a new run gets its snapshot."""
    from codonlm.provenance import snapshot
    from codonlm.runid import claim_run

    run_id, new = claim_run(cfg, run_id)
    directory = Path(cfg.outputs.runs_dir) / run_id
    if new:
        snapshot(cfg, directory, config_path)
    return run_id, directory


def cmd_fetch_data(args: argparse.Namespace) -> None:
    from codonlm.config import load_config
    from codonlm.data.fetch import fetch_default_corpus, missing_default_files, write_default_assemblies

    cfg = load_config(args.config)
    dest = args.dest or cfg.data.raw_dir  # the config's data.raw_dir unless --dest says otherwise
    missing = missing_default_files(cfg, dest)
    if args.if_needed and not missing:
        log("[fetch-data] every GenBank file the config names is present; nothing to fetch")
        return
    fetch_default_corpus(dest)
    write_default_assemblies(dest, missing)  # bare FASTA copies of default genomes the config names


def cmd_make_run_id(args: argparse.Namespace) -> None:
    from codonlm.config import load_config
    from codonlm.runid import next_free_run_id

    print(next_free_run_id(load_config(args.config)))


def cmd_prepare(args: argparse.Namespace) -> None:
    from codonlm.config import load_config
    from codonlm.data.prepare import prepare
    from codonlm.provenance import run_lock, timed_stage

    cfg = load_config(args.config)
    if args.datasets:  # one machine's share: only these datasets' NPZs, no run
        report = prepare(cfg, show_progress=not args.quiet, workers=args.workers, datasets=args.datasets)
        log(f"[prepare] datasets ready: {', '.join(f'{k} ({v})' for k, v in report['parts'].items())}; once every "
            f"dataset is prepared, 'codonlm prepare -c {args.config}' merges them")
        return
    run_id, directory = _claim_run(cfg, args.run_id, args.config)
    with run_lock(directory), run_log(directory):
        log(f"[prepare] run {run_id}")
        with timed_stage(directory, "prepare"):
            report = prepare(cfg, run_dir=directory, force=args.force, show_progress=not args.quiet,
                             workers=args.workers)
        s = report["splits"]
        log(
            f"[prepare] {report['processed']}{' (already prepared)' if report['reused'] else ''}: kept "
            f"{report['kept_cds']} CDS; windows train/val/test = "
            f"{s['train']['windows']}/{s['val']['windows']}/{s['test']['windows']}; "
            f"coverage {s['train']['coverage']:.4f}; built at {report['throughput_mb_per_s']} MB/s; "
            f"report: {directory / 'pipeline_prepare.json'}"
        )


def cmd_extract_cds(args: argparse.Namespace) -> None:
    from codonlm.data.extract_fasta import write_cds_fasta
    from codonlm.data.inputs import cli_input_files

    sources = cli_input_files(args.files, args.fasta, args.gff, args.gene_calling)
    stats = write_cds_fasta(sources, args.out, min_len=args.min_len, transl_table=args.transl_table)
    d = stats.as_dict()
    dropped = ", ".join(f"{k} {v}" for k, v in d["dropped"].items() if v) or "none"
    for call in d.get("gene_calling", []):
        log(f"[extract-cds] {call['path']}: {call['called']} genes called by {call['caller']} {call['version']} "
            f"({call['mode']} mode), {call['partial']} partial at contig edges, {call['kept']} kept")
    log(f"[extract-cds] wrote {d['kept']} CDS to {args.out}; dropped {d['dropped_total']} ({dropped})")


def cmd_train(args: argparse.Namespace) -> None:
    from codonlm.config import load_config, parse_config
    from codonlm.model.checkpoint import load_checkpoint
    from codonlm.provenance import run_lock, timed_stage
    from codonlm.train.distributed import agree_on, is_main_rank
    from codonlm.train.loop import train
    from codonlm.train.precision import pick_device

    is_main = is_main_rank()  # under torchrun only rank 0 writes the run folder
    cfg = load_config(args.config) if args.config else None
    if args.resume:  # the checkpoint's run, config and run folder: a resumed run is the same run
        if args.run_id:
            raise UserError("--run-id and --resume exclude each other: a resumed run keeps its checkpoint's id")
        state = load_checkpoint(args.resume)
        run_id = state["run_id"]
        directory = Path(parse_config(state["config"], source=args.resume).outputs.runs_dir) / run_id
    else:
        cfg = cfg or load_config(DEFAULT_CONFIG)
        run_id = agree_on(lambda: _claim_run(cfg, args.run_id, args.config or DEFAULT_CONFIG)[0],
                          pick_device(cfg.train.device).type)
        directory = Path(cfg.outputs.runs_dir) / run_id
        last = Path(cfg.outputs.out_dir) / run_id / "last.pt"
        if last.is_file():
            raise UserError(f"run '{run_id}' already has checkpoints ({last.parent}); continue it with "
                            f"-r {last}, or leave out --run-id to start a new run")
    with (run_lock(directory) if is_main else contextlib.nullcontext(),
          run_log(directory) if is_main else contextlib.nullcontext()):
        with timed_stage(directory if is_main else None, "train"):
            train(cfg, run_id, resume=args.resume)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from codonlm.pipeline import run_pipeline

    return run_pipeline(main, args.config, run_id=args.run_id, resume=args.resume, fresh=args.fresh, stages=args.stages,
                        redo=args.redo, force=args.force, quiet=args.quiet, wait=not args.no_wait)


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ./main.sh (which passes them on to `codonlm pipeline`)."""
    p.add_argument("-c", "--config", help=f"YAML config (default: {DEFAULT_CONFIG}; with -r: the checkpoint's)")
    p.add_argument("-r", "--resume", metavar="CHECKPOINT", help="continue the run of this last.pt")
    p.add_argument("--run-id", help="name the run (new), or continue the run of that name made with this config")
    p.add_argument("--fresh", action="store_true", help="start a new run even if one with this config exists")
    p.add_argument("--stages", metavar="LIST", help="run only these stages (comma-separated)")
    p.add_argument("--redo", metavar="LIST", help="run these stages again even if done (training continues from "
                   "last.pt; start a new run with --fresh to train from scratch)")
    p.add_argument("--force", action="store_true", help="prepare: keep going when the integrity check fails")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (for CI logs)")
    p.add_argument("--no-wait", action="store_true", help="when another process is working on the run, stop "
                   "(exit 2) instead of waiting for it")


def cmd_export_hf(args: argparse.Namespace) -> None:
    from codonlm.model.hf_export import export_run

    out = export_run(args.run_id, args.out_dir, args.checkpoints_dir, args.runs_dir)
    log(f"[export-hf] wrote {args.run_id} to {out}: LlamaForCausalLM, tokenizer and model card "
        "(AutoModelForCausalLM / AutoTokenizer / pipeline('text-generation') .from_pretrained(OUT_DIR))")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from codonlm.evaluate.heldout import evaluate_run

    m = evaluate_run(args.run_id, args.checkpoints_dir, split=args.split, device=args.device, out_dir=args.out_dir,
                     stride=args.stride, amp=args.amp, runs_dir=args.runs_dir)
    beats = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in m["beats_baselines"].items())
    bare = f" ({m['model_without_host']['perplexity']:.2f} without host tokens)" if "model_without_host" in m else ""
    log(f"[evaluate] {m['run_id']} {m['split']}: perplexity {m['model']['perplexity']:.2f}{bare}, top-1 "
        f"{m['model']['top1_accuracy']:.3f}, aa accuracy {m['model']['aa_accuracy']:.3f}; baselines: "
        + ", ".join(f"{k} {v['perplexity']:.2f}" for k, v in m["baselines"].items()) + f"; beats: {beats}")


def cmd_eval_perplexity(args: argparse.Namespace) -> None:
    from codonlm.api import CodonLM
    from codonlm.io import write_csv

    records = _read_records(args)
    lm = CodonLM.load(args.run_id, args.device, args.checkpoints_dir, args.runs_dir)
    with log_to("stdout" if args.out else "stderr"):  # without --out, stdout carries the table
        table = lm.score(records.pairs(), stride=args.stride, amp=args.amp, checked=True, host=args.host)
    if args.out:
        write_csv(table, args.out)
        log(f"[eval-perplexity] {len(table)} sequences scored -> {args.out}")
    else:
        print(table.to_csv(index=False), end="")


def cmd_query(args: argparse.Namespace) -> None:
    from codonlm.api import CodonLM
    from codonlm.evaluate.query import run_query
    from codonlm.evaluate.variant_table import parse_region, table_format

    region = parse_region(args.region)  # check cheap arguments before reading input or loading the model
    if args.out:
        table_format(args.out)
    stdin_text = None
    if args.dna is None and args.fasta is None and args.csv is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UserError("no input: pass --dna SEQ, --fasta FILE, --csv FILE, or pipe DNA on stdin")
        stdin_text = sys.stdin.read()
    records = _read_records(args, dna=args.dna, stdin_text=stdin_text, stops_table=args.transl_table).pairs()
    lm = CodonLM.load(args.run_id, args.device, args.checkpoints_dir, args.runs_dir, table_id=args.transl_table)
    host = lm.host_id(args.host)
    scan = {"llr": args.llr, "region": region, "kinds": args.only, "out_path": args.out,
            "max_tokens": args.batch_tokens, "heatmaps": args.heatmaps}
    with log_to("stderr"):  # stdout carries the results
        if args.mode == "score":
            amp = lm.inference_amp(records, args.amp, args.stride, args.host)
        elif args.mode == "mutate":
            amp = lm.scan_amp(records, args.amp, args.llr, region, args.host)
        else:
            amp = args.amp is True
        run_query(lm.model, args.mode, records, top_k=args.top_k, temperature=args.temperature,
                  sample_top_k=args.sample_top_k, top_p=args.top_p, seed=args.seed, max_codons=args.max_codons,
                  as_json=args.json, amp=amp, stride=args.stride, table_id=args.transl_table, scan=scan,
                  host=host)


def _kinds(text: str) -> list[str]:
    from codonlm.evaluate.variants import KINDS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"'{text}': expected a comma-separated subset of {', '.join(KINDS)}")
    return kinds


def add_query_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", help="run id (uses its best.pt) or a path to a .pt checkpoint")
    p.add_argument("--mode", choices=["next", "generate", "score", "mutate"], default="next")
    _add_host(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dna", help="DNA string (ACGT/U, any case, whitespace ignored)")
    _add_sequence_input(p, source, required=False)
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=10, help="next: codons to list")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--sample-top-k", type=int, default=None, help="generate: sample among the k most likely")
    p.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=None, help="generate: nucleus sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-codons", "--max_codons", dest="max_codons", type=int, default=500)
    p.add_argument("--json", action="store_true", help="machine-readable output (mutate: JSON lines, streamed)")
    p.add_argument("--transl-table", type=_transl_table, default=11, help="NCBI genetic code (default: %(default)s)")
    p.add_argument("--stride", type=int, help="score/mutate: strided windows advancing by this for genes longer "
                   "than block_size (default: sliding-window attention, each token computed once, as evaluate)")
    _add_amp(p)
    m = p.add_argument_group("mutate (every single-codon substitution)")
    m.add_argument("--llr", choices=["exact", "local"], default="exact",
                   help="exact: whole mutant gene vs wild type; local: only the mutated codon's own term (fast)")
    m.add_argument("--region", help="codon positions START-END to scan (1-based, inclusive; END optional)")
    m.add_argument("--only", type=_kinds, help="comma-separated kinds: synonymous, missense, nonsense, stop_loss")
    m.add_argument("--out", help="table file (.csv, .tsv, .jsonl), written with <stem>.summary.json and "
                   "<stem>.<gene>.png heatmaps beside it (default: TSV on stdout)")
    m.add_argument("--heatmaps", type=int, default=20, help="heatmaps for the first N genes (default: %(default)s)")
    m.add_argument("--batch-tokens", type=int, default=8192, help="suffix tokens per batch (bounds memory)")
    add_run_location(p)
    p.add_argument("--device", default="cpu")


def add_run_location(p: argparse.ArgumentParser, runs_dir: bool = True) -> None:
    """--checkpoints-dir (and --runs-dir): by default a run's files are where its own recorded config
    (runs/<RUN_ID>/config.yaml) puts them (codonlm.runid.locate_run)."""
    p.add_argument("--checkpoints-dir", help="where <RUN_ID>/best.pt is (default: the run's outputs.out_dir, "
                   "from runs/<RUN_ID>/config.yaml; else the default outputs.out_dir)")
    if runs_dir:
        p.add_argument("--runs-dir", help="where run folders live (default: runs)")


def _temperatures(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.7,1.0,1.3, got '{text}'"
        ) from None


def add_generate_prefix_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of scripts/eval_generation_prefix.py (and `codonlm generate-prefix`)."""
    p.add_argument("run_id", help="run id (its best.pt) or a .pt path")
    add_run_location(p)
    p.add_argument("--processed-dir", help="prepared data (default: the run config's data.processed_dir)")
    p.add_argument(
        "--split", default="test", choices=["test", "val"], help="held-out genes to prompt with (default: test)"
    )
    p.add_argument(
        "--prompt-codons", type=int, default=10, help="codons of the real gene given (default: 10)"
    )
    p.add_argument("--per-genome", type=int, default=50, help="held-out genes per genome (default: 50)")
    p.add_argument(
        "--temperatures",
        type=_temperatures,
        default=[0.7, 1.0, 1.3],
        help="sweep, comma-separated (default: 0.7,1.0,1.3)",
    )
    p.add_argument("--top-k", type=int, help="keep the k most likely tokens (default: off)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-codons", type=int, default=1500, help="length cap in codons (default: 1500)")
    p.add_argument(
        "--length-factor", type=float, default=2.0, help="cap at this x the real length (default: 2)"
    )
    p.add_argument(
        "--end-at-stop", action="store_true", help="end at the first stop codon, not only at <EOS_CDS>"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out-dir", help="default: <outputs.scores_dir>/<RUN_ID>/gen_prefix")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_generate_prefix(args: argparse.Namespace) -> None:
    """Prefix generation from parsed arguments; prints the 'all' rows."""
    from codonlm.evaluate.generation import run_prefix_generation

    result = run_prefix_generation(
        args.run_id, checkpoints_dir=args.checkpoints_dir, runs_dir=args.runs_dir, processed_dir=args.processed_dir,
        split=args.split, prompt_codons=args.prompt_codons, per_genome=args.per_genome, temperatures=args.temperatures,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, out_dir=args.out_dir, max_codons=args.max_codons,
        length_factor=args.length_factor, end_at_stop=args.end_at_stop, batch_size=args.batch_size,
        device=args.device, show_progress=not args.quiet,
    )  # fmt: skip
    for row in result["summary"]:
        if row["genome"] == "all":
            log(
                f"[gen-prefix] T={row['temperature']}: valid ORF {row['frac_valid_orf']:.3f}, "
                f"hit length cap {row['frac_hit_cap']:.3f}, ends with stop {row['frac_ends_with_stop']:.3f}, length ratio (median) "
                f"{row['length_ratio_median']:.2f}, codon JS {row['codon_js']:.4f} "
                f"(floor {row['codon_js_floor']:.4f}), identity {row['nearest_identity_mean']:.3f}"
            )
    log(
        f"[gen-prefix] wrote {Path(result['files']['summary.csv']).parent} "
        f"in {result['timings_s']['total']:.0f} s"
    )


def _design_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", help="run id (its best.pt)")
    p.add_argument("--protein", required=True, help="FASTA of proteins (plain or gzipped; a trailing '*' is fine)")
    p.add_argument("--host", required=True, help="one of the run's genomes (dataset names)")
    p.add_argument("--out", help="output folder (default: <runs-dir>/<RUN_ID>/designs/<FILE>_<HOST>)")
    p.add_argument("--beam", type=int, default=1, help="beam width (default 1: greedy)")
    p.add_argument("--samples", type=int, default=0, help="draw N designs per protein instead (default: off)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", help="start codon ATG, GTG or TTG (default: the model picks among the host's)")
    p.add_argument("--avoid", help="restriction enzymes (e.g. EcoRI,BsaI) or DNA sites, comma-separated; "
                   "both strands")
    p.add_argument("--gc", help="GC content bounds LOW-HIGH, e.g. 0.35-0.65")
    p.add_argument("--gc-window", type=int, help="also enforce --gc in every window of this many nt")
    p.add_argument("--max-homopolymer", type=int, help="longest run of one base allowed")
    add_run_location(p)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def cmd_design(args: argparse.Namespace) -> None:
    """Design genes for proteins; exit 2 (after writing every design) when a constraint could not be met."""
    from codonlm.api import CodonLM
    from codonlm.evaluate.constraints import parse_constraints
    from codonlm.evaluate.design import read_protein_records

    parse_constraints(args.avoid, args.gc, args.gc_window, args.max_homopolymer)  # bad options fail first
    read_protein_records(args.protein)
    lm = CodonLM.load(args.run_id, device=args.device, checkpoints_dir=args.checkpoints_dir, runs_dir=args.runs_dir)
    runs = Path(args.runs_dir or lm.cfg.outputs.runs_dir)
    out = Path(args.out) if args.out else runs / str(lm.run_id) / "designs" / f"{Path(args.protein).name.split('.')[0]}_{args.host}"
    table = lm.design(args.protein, args.host, beam=args.beam, samples=args.samples, temperature=args.temperature,
                      seed=args.seed, start=args.start, avoid=args.avoid, gc=args.gc, gc_window=args.gc_window,
                      max_homopolymer=args.max_homopolymer, out_dir=out)
    log(f"[design] {table['id'].nunique()} protein(s), {len(table)} design(s) for {args.host}: {out / 'designs.csv'}, "
        f"{out / 'designs.fasta'}")
    failed = table[table["unsatisfied"] != ""]
    if len(failed):
        raise UserError(f"constraints not satisfied in {len(failed)} design(s), first {failed['id'].iloc[0]}: "
                        f"{failed['unsatisfied'].iloc[0]}; every design is written, see column 'unsatisfied'")


def _design_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", help="run id (its best.pt)")
    p.add_argument("--per-host", type=int, default=30, help="held-out proteins per host (default: 30)")
    p.add_argument("--max-codons", type=int, default=300, help="longest test gene designed (default: 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="default: <runs-dir>/<RUN_ID>/design")
    add_run_location(p)
    p.add_argument("--processed-dir", help="prepared data (default: the run config's data.processed_dir)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def cmd_design_bench(args: argparse.Namespace) -> None:
    from codonlm.api import CodonLM
    from codonlm.evaluate.design_bench import run_design_bench

    lm = CodonLM.load(args.run_id, device=args.device, checkpoints_dir=args.checkpoints_dir, runs_dir=args.runs_dir)
    runs = Path(args.runs_dir or lm.cfg.outputs.runs_dir)
    out = Path(args.out) if args.out else runs / str(lm.run_id) / "design"
    result = run_design_bench(lm.model, lm.design_prompt, lm.cfg, str(lm.run_id), out, runs_dir=runs,
                              processed_dir=args.processed_dir, per_host=args.per_host, max_codons=args.max_codons,
                              seed=args.seed, device=args.device)
    for g in result["goals"]:
        log(f"[design-bench] {g['host']}: {g['model']} vs {g['baseline']}: codon identity "
            f"{'higher' if g['identity_higher'] else 'NOT higher'}, %MinMax DTW {'lower' if g['dtw_lower'] else 'NOT lower'}")
    log(f"[design-bench] wrote {out} in {result['seconds']:.0f} s")


def cmd_analyze(args: argparse.Namespace) -> None:
    """The analysis steps (then the report with --report); exit 2 naming the steps that could not run."""
    from codonlm.analysis.context import load_context
    from codonlm.analysis.runner import analyze, parse_steps
    from codonlm.provenance import run_lock

    steps = parse_steps(args.steps)  # an unknown step name fails before anything loads
    _resolve_latest(args, "analyze")
    ctx = load_context(args.run_id, args.checkpoints_dir, args.runs_dir, device=args.device, seed=args.seed,
                       quiet=args.quiet)
    with run_lock(ctx.run_dir), run_log(ctx.run_dir):
        results = analyze(args.run_id, steps, force=args.force, context=ctx)
        if args.report:
            from codonlm.analysis.report import write_report

            log(f"[analyze] report: {write_report(args.run_id, ctx.run_dir.parent, args.reports_dir)}")
        failed = [n for n, r in results.items() if r.get("status") == "failed"]
        if failed:
            print(f"codonlm analyze: step(s) failed with an error (traceback above): {', '.join(failed)}",
                  file=sys.stderr)
            raise SystemExit(1)
        missing = {n: r["reason"] for n, r in results.items() if r.get("status") == "not run"}
        if missing:
            raise UserError("not run: " + "; ".join(f"{n} ({why})" for n, why in missing.items()))
        log(f"[analyze] {len(results)} step(s) done; outputs in {ctx.run_dir / 'analysis'}")


def cmd_report(args: argparse.Namespace) -> None:
    from codonlm.analysis.report import write_report

    log(f"[report] wrote {write_report(args.run_id, args.runs_dir, args.reports_dir)}")


def cmd_bundle(args: argparse.Namespace) -> None:
    from codonlm.analysis.bundle import bundle_run

    _resolve_latest(args, "bundle")
    folder, archive = bundle_run(args.run_id, out_dir=args.out_dir, checkpoints_dir=args.checkpoints_dir,
                                 runs_dir=args.runs_dir, reports_dir=args.reports_dir)
    log(f"[bundle] {folder} and {archive} (checksums in {folder / 'MANIFEST.sha256'})")


def _add_run_id_or_latest(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", nargs="?", default="latest",
                   help="run id (default: latest, the run with the newest checkpoint: every run under --runs-dir, "
                   "its checkpoints where its config puts them, and under --checkpoints-dir)")


def _resolve_latest(args: argparse.Namespace, command: str) -> str:
    """args.run_id, or the newest trained run when it is 'latest' (the manual's bare ./analysis.sh)."""
    if args.run_id != "latest":
        return args.run_id
    from codonlm.runid import latest_run

    args.run_id = latest_run(args.checkpoints_dir, args.runs_dir)
    log(f"[{command}] run {args.run_id} (the latest trained run)")
    return args.run_id


def _add_analysis(p: argparse.ArgumentParser, runs_dir: str | None = None) -> None:
    p.add_argument("--runs-dir", default=runs_dir,
                   help=f"where run folders live (default: {runs_dir or 'the run config outputs.runs_dir'})")
    p.add_argument("--reports-dir", default="outputs/reports",
                   help="stage-2 results, read from <dir>/<RUN_ID>/stage2 (default: %(default)s)")


def _add_sequence_input(p: argparse.ArgumentParser, source, required: bool = True) -> None:
    """--fasta | --csv (in the mutually exclusive group `source`), the table's columns, --dedupe and
    --skip-invalid: how every command that reads a user's genes takes them (codonlm.data.records)."""
    from codonlm.data.records import DEDUPE

    source.add_argument("--fasta", help="FASTA file of CDS, plain or gzipped" + ("" if required else
                                                                                 " (else --dna, else stdin)"))
    source.add_argument("--csv", help="table of genes (CSV; tab-separated when named .tsv/.tab or when its "
                        "header has tabs), plain or gzipped, e.g. gene_id,value,cds with --id-column gene_id "
                        "--seq-column cds")
    p.add_argument("--id-column", dest="id_column", default="id", help="the table's id column (default: id; "
                   "none: row1, row2, ...)")
    p.add_argument("--seq-column", dest="seq_column", default="seq", help="the table's DNA column (default: seq)")
    p.add_argument("--dedupe", default="error", choices=DEDUPE,
                   help="a repeated id: stop naming it (default) or keep its first record and count the others")
    _add_skip_invalid(p)


def _read_records(args: argparse.Namespace, **text):
    """The user's genes of a command with _add_sequence_input's flags (and `text`: --dna, stdin, the
    genetic code whose internal stops are flagged)."""
    from codonlm.data.records import read_records

    return read_records(args.fasta, args.csv, id_column=args.id_column, seq_column=args.seq_column,
                        dedupe=args.dedupe, skip_invalid=args.skip_invalid, **text)


def _add_host(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="the genome the sequences come from, for a host-conditioned model "
                   "(model.condition_on_host; required there, an unknown name lists the known ones)")


def _add_skip_invalid(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-invalid", "--skip_invalid", dest="skip_invalid", action="store_true",
                   help="skip and count bad records (non-ACGT, length, internal stop codons) instead of stopping "
                   "(default: a bad record stops; internal stops are kept, counted and warned about)")


def _transl_table(text: str) -> int:
    """--transl-table: an NCBI genetic code id that Biopython knows."""
    from Bio.Data import CodonTable

    if text.isdigit() and int(text) in CodonTable.unambiguous_dna_by_id:
        return int(text)
    known = ", ".join(str(i) for i in sorted(CodonTable.unambiguous_dna_by_id))
    raise argparse.ArgumentTypeError(f"'{text}' is not an NCBI genetic code id ({known}; 11 for bacteria and archaea)")


def _add_scoring(p: argparse.ArgumentParser, auto_amp: bool = True) -> None:
    """--stride and --amp; auto_amp: --amp auto|true|false (CodonLM's choice), else the plain switch."""
    p.add_argument("--stride", type=int, help="strided windows advancing by this for genes longer than block_size "
                   "(default: sliding-window attention, each token computed once; 1 = each codon's own window)")
    if auto_amp:
        _add_amp(p)
    else:
        p.add_argument("--amp", action="store_true", help=AMP_HELP)


def _workers(text: str) -> int | str:
    """--workers: a count of processes >= 1, or 'auto'."""
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a number of processes >= 1 or 'auto', got '{text}'")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="YAML config (default: %(default)s)")


# --------------------------------------------------------------------------- stage 2: sequence classifiers


def cmd_extract_embeddings(args: argparse.Namespace) -> None:
    from codonlm.stage2.embeddings import extract_embeddings

    records = _read_records(args)
    extract_embeddings(args.run_id, args.out, records.ids, records.seqs, n_skipped=records.skipped,
                       layer=args.layer, pool=args.pool, checkpoints_dir=args.checkpoints_dir, runs_dir=args.runs_dir,
                       device=args.device, stride=args.stride, max_tokens=args.batch_tokens, amp=args.amp,
                       show_progress=not args.quiet,
                       host=args.host)


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from codonlm.stage2.config import load_classifier_config
    from codonlm.stage2.train import train_from_config

    train_from_config(load_classifier_config(args.config), run_id=args.run_id, show_progress=not args.quiet)


def cmd_train_regressor(args: argparse.Namespace) -> None:
    from codonlm.stage2.config import parse_classifier_config
    from codonlm.stage2.regressors import REGRESSION_MODELS
    from codonlm.stage2.train_regression import train_regression_from_config

    raw = {"task": "regression", "run_id": args.run_id, "train_labels": args.csv, "train_seqs": args.fasta,
           "target_column": args.target, "id_column": args.id_column, "seq_column": args.seq_column,
           "group_column": args.group_column, "transform": args.transform, "dedupe": args.dedupe,
           "skip_invalid": args.skip_invalid, "layer": args.layer, "pool": args.pool, "folds": args.folds,
           "repeats": args.repeats, "seed": args.seed, "bootstrap": args.bootstrap, "kmer_k": args.kmer_k,
           "cai_reference": args.cai_reference, "out_dir": args.out, "checkpoints_dir": args.checkpoints_dir,
           "runs_dir": args.runs_dir}
    if args.models:
        raw["models"] = args.models.split(",")
    elif args.cai_reference:
        raw["models"] = list(REGRESSION_MODELS)
    cfg = parse_classifier_config({k: v for k, v in raw.items() if v is not None}, "train-regressor options")
    train_regression_from_config(cfg, show_progress=not args.quiet)


def cmd_eval_classifier(args: argparse.Namespace) -> None:
    from codonlm.stage2.train import evaluate_saved

    evaluate_saved(args.kind, args.model, args.labels, args.out, embeddings=args.embeddings, seqs=args.seqs,
                   vectorizer=args.vectorizer, label_column=args.label_column, id_column=args.id_column,
                   bootstrap=args.bootstrap, seed=args.seed, seq_column=args.seq_column)


def cmd_stage2(args: argparse.Namespace) -> None:
    from codonlm.stage2.pipeline import run_stage2

    run_stage2(args.run_id, configs_dir=args.configs_dir, checkpoints_dir=args.checkpoints_dir,
               runs_dir=args.runs_dir, processed_dir=args.processed_dir, tasks=args.tasks.split(",") if args.tasks else None,
               show_progress=not args.quiet)


# --------------------------------------------------------------------------- the parser: a table of commands


def _fetch_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", help="destination folder (default: the config's data.raw_dir, data/raw)")
    p.add_argument("--if-needed", action="store_true", help="only when a file the config names is missing")
    _add_config(p)


def _prepare_arguments(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument("--run-id", help="write reports into runs/RUN_ID: a new run, or one this config started "
                   "(default: a new run with a fresh id)")
    p.add_argument("--force", action="store_true", help="keep going when the integrity check fails")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workers", type=_workers, help="processes parsing input files (default: data.prepare_workers)")
    p.add_argument("--datasets", nargs="+", metavar="NAME",
                   help="prepare only these datasets (one machine's share); a plain prepare then merges them")


def _extract_cds_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", help=".gb/.gbk/.gbff files, plain or gzipped")
    p.add_argument("--fasta", nargs="+", default=[], metavar="FILE",
                   help="nucleotide FASTA, one genome per file: genes called with pyrodigal (or with --gff: its sequence)")
    p.add_argument("--gff", nargs="+", default=[], metavar="FILE",
                   help="GFF3 files (one per --fasta file, or with the sequence after ##FASTA): their CDS")
    p.add_argument("--gene-calling", choices=["auto", "single", "meta"], default="auto",
                   help="Prodigal mode for --fasta without --gff (auto: single from 100 kb)")
    p.add_argument("--out", required=True, help="output FASTA path")
    p.add_argument("--min-len", type=int, default=1, help="minimum sense codons (default: %(default)s)")
    p.add_argument("--transl-table", type=int, default=11, help="code when a CDS has no /transl_table")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help=f"YAML config (default: {DEFAULT_CONFIG}; with -r: the checkpoint's)")
    p.add_argument("--run-id", help="name of a new run, or of a run this config started (default: a fresh "
                   "id from the config, with a suffix when taken)")
    p.add_argument("-r", "--resume", help="continue the run of this last.pt (<outputs.out_dir>/<RUN_ID>/last.pt)")


def _pipeline_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Runs the stages of a run in order (codonlm.pipeline.STAGES). The "
                     "same config continues the same run: finished stages are skipped, an interrupted "
                     "training resumes from last.pt; a changed config starts a new run.")
    add_pipeline_arguments(p)


def _export_hf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", help="run id (uses best.pt) or a path to a .pt checkpoint")
    p.add_argument("out_dir")
    add_run_location(p)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id")
    p.add_argument("--split", default="test", choices=["test", "val"])
    add_run_location(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", help="default: runs/<RUN_ID>/evaluate")
    _add_scoring(p, auto_amp=False)


def _eval_perplexity_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id")
    _add_host(p)
    _add_sequence_input(p, p.add_mutually_exclusive_group(required=True))
    p.add_argument("--out", help="CSV path (default: stdout)")
    _add_scoring(p)
    add_run_location(p)
    p.add_argument("--device", default="cpu")


def _analyze_arguments(p: argparse.ArgumentParser) -> None:
    _add_run_id_or_latest(p)
    p.add_argument("--steps", nargs="+", metavar="STEP",
                   help="steps to run, in pipeline order whatever the order given (default: all seven)")
    p.add_argument("--force", action="store_true", help="re-run steps that already finished")
    p.add_argument("--report", action="store_true", help="then write runs/<RUN_ID>/report.html")
    add_run_location(p, runs_dir=False)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of every gene/position draw (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_analysis(p)


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id")
    _add_analysis(p, runs_dir="runs")


def _bundle_arguments(p: argparse.ArgumentParser) -> None:
    _add_run_id_or_latest(p)
    p.add_argument("--out-dir", default="outputs/share", help="bundles go to <dir>/<RUN_ID>[.tar.gz]")
    add_run_location(p, runs_dir=False)
    _add_analysis(p)


def _extract_embeddings_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run_id", "--run-id", dest="run_id", required=True, help="run id (best.pt) or a .pt path")
    _add_host(p)
    _add_sequence_input(p, p.add_mutually_exclusive_group(required=True))
    p.add_argument("--out", required=True, help="output NPZ (ids, embeddings, run_id, layer, pool)")
    p.add_argument("--layer", default="final", help="final (LM-head input, default), all, or a block index")
    p.add_argument("--pool", default="mean", choices=["mean", "last", "max", "per-codon"],
                   help="over the gene's codons, PADs and <BOS_CDS> excluded (default: mean)")
    p.add_argument("--stride", type=int, help="strided windows advancing by this for genes longer than block_size "
                   "(default: sliding-window attention, each token computed once)")
    p.add_argument("--batch-tokens", type=int, default=16384, help="tokens per forward batch (default: 16384)")
    _add_amp(p)
    add_run_location(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_classifier_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="e.g. configs/classifier/probe_aa.yaml")
    p.add_argument("--run_id", "--run-id", dest="run_id", help="fills {run_id} (default: the config's run_id)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_regressor_arguments(p: argparse.ArgumentParser) -> None:
    from codonlm.stage2.regressors import REGRESSION_MODELS

    p.add_argument("--csv", required=True, help="table of genes: gene_id,value,cds (a .tsv is tab-separated)")
    p.add_argument("--target", required=True, help="the numeric column to predict")
    p.add_argument("--fasta", help="the sequences, when the table holds only ids and values")
    p.add_argument("--id-column", dest="id_column", default="id")
    p.add_argument("--seq-column", dest="seq_column", default="seq")
    p.add_argument("--group-column", dest="group_column",
                   help="genes sharing a value stay in one CV fold (default: identical proteins)")
    p.add_argument("--transform", default="none", choices=["none", "log10", "rank"])
    p.add_argument("--dedupe", default="error", choices=["error", "first", "mean"],
                   help="a repeated id: fail (default), keep the first row, or average its values")
    _add_skip_invalid(p)
    p.add_argument("--run_id", "--run-id", dest="run_id", default="latest", help="the model that embeds and scores")
    p.add_argument("--layer", default="final", help="final (default), a block index, or all (layer sweep)")
    p.add_argument("--pool", default="mean", choices=["mean", "last", "max"])
    p.add_argument("--models", help=f"comma-separated subset of {','.join(REGRESSION_MODELS)} (default: all; "
                   "cai_linear and zeroshot_cai only with --cai-reference)")
    p.add_argument("--cai-reference", dest="cai_reference", help="FASTA of reference genes for CAI "
                   "(e.g. the host's ribosomal proteins)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1, help="CV repeated with seeds seed, seed + 1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals")
    p.add_argument("--kmer-k", dest="kmer_k", type=int, default=4)
    add_run_location(p)
    p.add_argument("--out", required=True, help="folder for metrics.json, predictions.csv, plots and models")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _eval_classifier_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", required=True, help="probe (embeddings) or kmer (sequences)")
    p.add_argument("--model", required=True, help="model.skops / <model>.skops / kmer_xgb.json "
                   "(the manual's model.pkl resolves to model.skops; pickles are never loaded)")
    p.add_argument("--labels", required=True, help="CSV with a label column (and 'id' to match features)")
    p.add_argument("--embeddings", help="NPZ from extract_embeddings (--kind probe)")
    p.add_argument("--seqs", help="FASTA, or a table (CSV/TSV) with the --seq-column (--kind kmer; default: the "
                   "labels' own sequence column)")
    p.add_argument("--vectorizer", help="vectorizer.skops beside a k-mer model (--kind kmer)")
    p.add_argument("--out", required=True, help="folder for eval_metrics.json, eval_confusion.png, eval_calibration.png")
    p.add_argument("--label-column", "--label_column", dest="label_column", default="label")
    p.add_argument("--id-column", "--id_column", dest="id_column", default="id")
    p.add_argument("--seq-column", dest="seq_column", default="seq", help="the DNA column of a table of "
                   "sequences (--seqs, or the labels; default: seq)")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)


def _add_host_arguments(p: argparse.ArgumentParser) -> None:
    from codonlm.add_host import DEFAULT_STEPS

    p.add_argument("run_id", help="the base run (host-conditioned: model.condition_on_host); only read")
    p.add_argument("--name", required=True, help="the new host's name (letters, digits, _ . -)")
    genome = p.add_mutually_exclusive_group(required=True)
    genome.add_argument("--gbff", help="the new genome's GenBank file, plain or gzipped")
    genome.add_argument("--fasta", help="the new genome's nucleotide FASTA (genes called with pyrodigal)")
    p.add_argument("--full", action="store_true", help="train every weight (default: only the new host's "
                   "embedding row)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps (default: %(default)s)")
    add_run_location(p)
    p.add_argument("--device", default="cpu")


def cmd_add_host(args: argparse.Namespace) -> None:
    from codonlm.add_host import add_host

    add_host(args.run_id, args.name, gbff=args.gbff, fasta=args.fasta, full=args.full, steps=args.steps,
             checkpoints_dir=args.checkpoints_dir, runs_dir=args.runs_dir, device=args.device)


def _stage2_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id")
    p.add_argument("--configs-dir", default="configs/classifier")
    p.add_argument("--tasks", help="comma-separated subset (default: all ready tasks)")
    p.add_argument("--checkpoints-dir", help="default: each config's, else the run's outputs.out_dir "
                   "(runs/<RUN_ID>/config.yaml)")
    p.add_argument("--runs-dir", help="where run folders live (default: each config's, else runs)")
    p.add_argument("--processed-dir", help="prepared data (default: the run config's data.processed_dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# Every subcommand: name, one-line help, its arguments, what runs it; `codonlm --help` lists them in this order.
COMMANDS = (
    ("fetch-data", "fetch the default real corpus (Debian cct-examples) into data/raw",
     _fetch_data_arguments, cmd_fetch_data),
    ("make-run-id", "print the id a new run of a config gets (YYYY-MM-DD_tiny_6L4H_d256_e5, "
     "with a suffix -2, -3, ... when taken)",
     _add_config, cmd_make_run_id),
    ("prepare", "GenBank -> CDS -> tokens -> windows -> NPZ splits",
     _prepare_arguments, cmd_prepare),
    ("extract-cds", "write the kept CDS of GenBank files as FASTA (to audit extraction)",
     _extract_cds_arguments, cmd_extract_cds),
    ("train", "train TinyGPT on the prepared NPZ windows",
     _train_arguments, cmd_train),
    ("pipeline", "every stage of a run, like make (what ./main.sh runs)",
     _pipeline_arguments, cmd_pipeline),
    ("export-hf", "export a run as a Hugging Face LlamaForCausalLM + tokenizer + card",
     _export_hf_arguments, cmd_export_hf),
    ("evaluate", "held-out metrics + baselines into runs/<RUN_ID>/evaluate/",
     _evaluate_arguments, cmd_evaluate),
    ("eval-perplexity", "score every CDS of a FASTA file (one row per sequence)",
     _eval_perplexity_arguments, cmd_eval_perplexity),
    ("generate-prefix", "prefix generation + gene quality metrics (gen_prefix/)",
     add_generate_prefix_arguments, cmd_generate_prefix),
    ("design", "a coding sequence for each protein of a FASTA in one of the run's genomes, under synthesis "
     "constraints (designs.csv/.fasta)",
     _design_arguments, cmd_design),
    ("design-bench", "redesign held-out proteins of every host by the model and by codon-usage baselines, "
     "compare with the natural genes -> runs/<RUN_ID>/design/",
     _design_bench_arguments, cmd_design_bench),
    ("analyze", "the interpretability analysis (six steps + patching) -> runs/<RUN_ID>/analysis/",
     _analyze_arguments, cmd_analyze),
    ("report", "runs/<RUN_ID>/report.html: one self-contained page per run",
     _report_arguments, cmd_report),
    ("bundle", "a run's artifacts + HF export in one folder and .tar.gz with checksums",
     _bundle_arguments, cmd_bundle),
    ("add-host", "a new run whose host-conditioned model knows one more genome (runs/<NEW_RUN_ID>/add_host.json)",
     _add_host_arguments, cmd_add_host),
    ("query", "next codons, generate, score or mutate a DNA sequence",
     add_query_arguments, cmd_query),
    ("extract-embeddings", "pooled hidden states of a run for FASTA/CSV genes -> NPZ "
     "(= python -m scripts.extract_embeddings)",
     _extract_embeddings_arguments, cmd_extract_embeddings),
    ("train-classifier", "probes and k-mer baselines from a classifier YAML "
     "(= python -m scripts.train_classifier)",
     _train_classifier_arguments, cmd_train_classifier),
    ("train-regressor", "cross-validated regression of a measured gene property from a table "
     "(gene_id,value,cds): probes vs codon-usage baselines",
     _train_regressor_arguments, cmd_train_regressor),
    ("eval-classifier", "score a saved classifier on labelled data "
     "(= python -m scripts.eval_classifier)",
     _eval_classifier_arguments, cmd_eval_classifier),
    ("stage2", "the ready stage-2 classifier tasks for a run -> "
     "outputs/reports/<RUN_ID>/stage2/ (summary.json, compare.csv/png)",
     _stage2_arguments, cmd_stage2),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codonlm", description="Codon-level GPT for prokaryotic CDS.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, add_arguments, run in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (UserError, TrainingDiverged) as exc:
        print(f"codonlm {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:  # training saved last.pt first
        print(f"codonlm {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"codonlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
