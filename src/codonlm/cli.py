"""The `codonlm` command. Each subcommand parses arguments and calls the package; no logic lives here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from codonlm.errors import UserError


class _Tee:
    """Copy a stream into runs/<RUN_ID>/log.txt (main.sh tees the shell itself and sets CODONLM_TEED)."""

    def __init__(self, stream, log):
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._log.write(text)
        self._log.flush()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def tee_to_run_log(run_directory: Path) -> None:
    if os.environ.get("CODONLM_TEED"):
        return
    log = open(run_directory / "log.txt", "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    sys.stdout = _Tee(sys.stdout, log)
    sys.stderr = _Tee(sys.stderr, log)
    os.environ["CODONLM_TEED"] = "1"


def _resolve_run(cfg, run_id: str | None):
    from codonlm.provenance import run_dir
    from codonlm.runid import make_run_id

    run_id = run_id or make_run_id(cfg)
    return run_id, run_dir(cfg, run_id)


def cmd_fetch_data(args: argparse.Namespace) -> None:
    from codonlm.data.fetch import fetch_default_corpus, missing_default_files

    if args.if_needed:
        from codonlm.config import load_config

        if not missing_default_files(load_config(args.config), args.dest):
            print("[fetch-data] every GenBank file the config names is present; nothing to fetch")
            return
    fetch_default_corpus(args.dest)


def cmd_make_run_id(args: argparse.Namespace) -> None:
    from codonlm.config import load_config
    from codonlm.runid import make_run_id

    print(make_run_id(load_config(args.config)))


def cmd_prepare(args: argparse.Namespace) -> None:
    from codonlm.config import load_config
    from codonlm.data.prepare import prepare
    from codonlm.provenance import snapshot, timed_stage

    cfg = load_config(args.config)
    run_id, directory = _resolve_run(cfg, args.run_id)
    tee_to_run_log(directory)
    snapshot(cfg, directory, args.config)
    print(f"[prepare] run {run_id}")
    with timed_stage(directory, "prepare"):
        report = prepare(cfg, run_dir=directory, force=args.force, show_progress=not args.quiet)
    s = report["splits"]
    print(
        f"[prepare] kept {report['kept_cds']} CDS; windows train/val/test = "
        f"{s['train']['windows']}/{s['val']['windows']}/{s['test']['windows']}; "
        f"coverage {s['train']['coverage']:.4f}; {report['throughput_mb_per_s']} MB/s; "
        f"report: {directory / 'pipeline_prepare.json'}"
    )


def cmd_extract_cds(args: argparse.Namespace) -> None:
    from codonlm.data.extract_fasta import write_cds_fasta

    stats = write_cds_fasta(args.files, args.out, min_len=args.min_len, transl_table=args.transl_table)
    d = stats.as_dict()
    dropped = ", ".join(f"{k} {v}" for k, v in d["dropped"].items() if v) or "none"
    print(f"[extract-cds] wrote {d['kept']} CDS to {args.out}; dropped {d['dropped_total']} ({dropped})",
          file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    from codonlm.config import load_config
    from codonlm.provenance import snapshot, timed_stage
    from codonlm.train.checkpoint import load_checkpoint
    from codonlm.train.loop import train

    cfg = load_config(args.config)
    run_id = args.run_id
    if args.resume:
        run_id = load_checkpoint(args.resume)["run_id"]  # a resumed run keeps its run id
    run_id, directory = _resolve_run(cfg, run_id)
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes the run folder
    if is_main:
        tee_to_run_log(directory)
        if not args.resume:
            snapshot(cfg, directory, args.config)
    with timed_stage(directory if is_main else None, "train"):
        train(cfg, run_id, resume=args.resume)


def cmd_export_hf(args: argparse.Namespace) -> None:
    from codonlm.model.hf_export import export_hf
    from codonlm.model.load import load_model

    model, _, state = load_model(args.run_id, args.checkpoints_dir)
    export_hf(model, args.out_dir, state.get("itos"))
    print(f"[export-hf] wrote a LlamaForCausalLM export of {args.run_id} to {args.out_dir} "
          "(load with transformers.AutoModelForCausalLM.from_pretrained)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from codonlm.evaluate.heldout import evaluate_run

    m = evaluate_run(args.run_id, args.checkpoints_dir, split=args.split, device=args.device, out_dir=args.out_dir,
                     stride=args.stride, amp=args.amp)
    beats = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in m["beats_baselines"].items())
    print(f"[evaluate] {m['run_id']} {m['split']}: perplexity {m['model']['perplexity']:.2f}, top-1 "
          f"{m['model']['top1_accuracy']:.3f}, aa accuracy {m['model']['aa_accuracy']:.3f}; baselines: "
          + ", ".join(f"{k} {v['perplexity']:.2f}" for k, v in m["baselines"].items()) + f"; beats: {beats}")


def cmd_eval_perplexity(args: argparse.Namespace) -> None:
    from codonlm.evaluate.heldout import score_fasta
    from codonlm.io import read_dna_records

    records = read_dna_records(fasta=args.fasta)
    table = score_fasta(args.run_id, records, args.checkpoints_dir, args.device, stride=args.stride, amp=args.amp)
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"[eval-perplexity] {len(table)} sequences scored -> {args.out}")
    else:
        print(table.to_csv(index=False), end="")


def cmd_query(args: argparse.Namespace) -> None:
    from codonlm.evaluate.query import run_query
    from codonlm.io import read_dna_records
    from codonlm.model.load import load_model

    stdin_text = None
    if args.dna is None and args.fasta is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UserError("no input: pass --dna SEQ, --fasta FILE, or pipe DNA on stdin")
        stdin_text = sys.stdin.read()
    records = read_dna_records(args.dna, args.fasta, stdin_text)
    model, _, _ = load_model(args.run_id, args.checkpoints_dir, args.device)
    run_query(model, args.mode, records, top_k=args.top_k, temperature=args.temperature,
              sample_top_k=args.sample_top_k, top_p=args.top_p, seed=args.seed, max_codons=args.max_codons,
              as_json=args.json, amp=args.amp)


def add_query_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", help="run id (uses its best.pt) or a path to a .pt checkpoint")
    p.add_argument("--mode", choices=["next", "generate", "score", "mutate"], default="next")
    p.add_argument("--dna", help="DNA string (ACGT/U, any case, whitespace ignored)")
    p.add_argument("--fasta", help="FASTA file of CDS (else --dna, else stdin)")
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=10, help="next: codons to list")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--sample-top-k", type=int, default=None, help="generate: sample among the k most likely")
    p.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=None, help="generate: nucleus sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-codons", "--max_codons", dest="max_codons", type=int, default=500)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--amp", action="store_true", help="score/mutate under bf16 autocast (about 2x faster on CPU)")
    p.add_argument("--checkpoints-dir", default="outputs/checkpoints")
    p.add_argument("--device", default="cpu")


def _temperatures(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.7,1.0,1.3, got '{text}'"
        ) from None


def add_generate_prefix_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of scripts/eval_generation_prefix.py (and `codonlm generate-prefix`)."""
    p.add_argument("run_id", help="run id under --checkpoints-dir (best.pt, else last.pt) or a .pt path")
    p.add_argument("--checkpoints-dir", default="outputs/checkpoints")
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
        args.run_id, checkpoints_dir=args.checkpoints_dir, processed_dir=args.processed_dir, split=args.split,
        prompt_codons=args.prompt_codons, per_genome=args.per_genome, temperatures=args.temperatures,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, out_dir=args.out_dir, max_codons=args.max_codons,
        length_factor=args.length_factor, end_at_stop=args.end_at_stop, batch_size=args.batch_size,
        device=args.device, show_progress=not args.quiet,
    )  # fmt: skip
    for row in result["summary"]:
        if row["genome"] == "all":
            print(
                f"[gen-prefix] T={row['temperature']}: valid ORF {row['frac_valid_orf']:.3f}, "
                f"ends with stop {row['frac_ends_with_stop']:.3f}, length ratio (median) "
                f"{row['length_ratio_median']:.2f}, codon JS {row['codon_js']:.4f} "
                f"(floor {row['codon_js_floor']:.4f}), identity {row['nearest_identity_mean']:.3f}"
            )
    print(
        f"[gen-prefix] wrote {Path(result['files']['summary.csv']).parent} "
        f"in {result['timings_s']['total']:.0f} s"
    )


def _add_scoring(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stride", type=int, help="window advance for genes longer than block_size "
                   "(default block_size/4; 1 = every codon with the full window as context)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast: about 2x faster on CPU, slightly less exact")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default="configs/tiny_cpu.yaml", help="YAML config (default: %(default)s)")


# --------------------------------------------------------------------------- stage 2: sequence classifiers


def cmd_extract_embeddings(args: argparse.Namespace) -> None:
    from codonlm.stage2.embeddings import embed_file

    embed_file(args.run_id, args.out, fasta=args.fasta, csv=args.csv, skip_invalid=args.skip_invalid,
               layer=args.layer, pool=args.pool, checkpoints_dir=args.checkpoints_dir, device=args.device,
               stride=args.stride, max_tokens=args.batch_tokens, amp=args.amp, show_progress=not args.quiet)


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from codonlm.stage2.config import load_classifier_config
    from codonlm.stage2.train import train_from_config

    train_from_config(load_classifier_config(args.config), run_id=args.run_id, show_progress=not args.quiet)


def cmd_eval_classifier(args: argparse.Namespace) -> None:
    from codonlm.stage2.train import evaluate_saved

    evaluate_saved(args.kind, args.model, args.labels, args.out, embeddings=args.embeddings, seqs=args.seqs,
                   vectorizer=args.vectorizer, label_column=args.label_column, id_column=args.id_column,
                   bootstrap=args.bootstrap, seed=args.seed)


def cmd_stage2(args: argparse.Namespace) -> None:
    from codonlm.stage2.pipeline import run_stage2

    run_stage2(args.run_id, configs_dir=args.configs_dir, checkpoints_dir=args.checkpoints_dir,
               processed_dir=args.processed_dir, tasks=args.tasks.split(",") if args.tasks else None,
               show_progress=not args.quiet)


def add_stage2_commands(sub) -> None:
    """extract-embeddings, train-classifier, eval-classifier (the manual's scripts.*) and stage2."""
    p = sub.add_parser("extract-embeddings", help="pooled hidden states of a run for FASTA/CSV genes -> NPZ "
                       "(= python -m scripts.extract_embeddings)")
    p.add_argument("--run_id", "--run-id", dest="run_id", required=True, help="run id (best.pt) or a .pt path")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--fasta", help="FASTA of CDS (DNA, length a multiple of 3)")
    source.add_argument("--csv", help="CSV with a 'seq' column (and 'id' when present)")
    p.add_argument("--out", required=True, help="output NPZ (ids, embeddings, run_id, layer, pool)")
    p.add_argument("--layer", default="final", help="final (LM-head input, default), all, or a block index")
    p.add_argument("--pool", default="mean", choices=["mean", "last", "max", "per-codon"],
                   help="over the gene's codons, PADs and <BOS_CDS> excluded (default: mean)")
    p.add_argument("--skip-invalid", "--skip_invalid", dest="skip_invalid", action="store_true",
                   help="skip and count bad records instead of stopping")
    p.add_argument("--stride", type=int, help="window advance for genes longer than block_size (default block/2)")
    p.add_argument("--batch-tokens", type=int, default=16384, help="tokens per forward batch (default: 16384)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (faster only with native bf16 CPUs or GPUs)")
    p.add_argument("--checkpoints-dir", default="outputs/checkpoints")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract_embeddings)

    p = sub.add_parser("train-classifier", help="probes and k-mer baselines from a classifier YAML "
                       "(= python -m scripts.train_classifier)")
    p.add_argument("--config", required=True, help="e.g. configs/classifier/probe_aa.yaml")
    p.add_argument("--run_id", "--run-id", dest="run_id", help="fills {run_id} (default: the config's run_id)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("eval-classifier", help="score a saved classifier on labelled data "
                       "(= python -m scripts.eval_classifier)")
    p.add_argument("--kind", required=True, help="probe (embeddings) or kmer (sequences)")
    p.add_argument("--model", required=True, help="model.skops / <model>.skops / kmer_xgb.json "
                   "(the manual's model.pkl resolves to model.skops; pickles are never loaded)")
    p.add_argument("--labels", required=True, help="CSV with a label column (and 'id' to match features)")
    p.add_argument("--embeddings", help="NPZ from extract_embeddings (--kind probe)")
    p.add_argument("--seqs", help="FASTA or CSV with 'seq' (--kind kmer; default: the labels' seq column)")
    p.add_argument("--vectorizer", help="vectorizer.skops beside a k-mer model (--kind kmer)")
    p.add_argument("--out", required=True, help="folder for eval_metrics.json, eval_confusion.png, eval_calibration.png")
    p.add_argument("--label-column", "--label_column", dest="label_column", default="label")
    p.add_argument("--id-column", "--id_column", dest="id_column", default="id")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_eval_classifier)

    p = sub.add_parser("stage2", help="the ready stage-2 classifier tasks for a run -> "
                       "outputs/reports/<RUN_ID>/stage2/ (summary.json, compare.csv/png)")
    p.add_argument("run_id")
    p.add_argument("--configs-dir", default="configs/classifier")
    p.add_argument("--tasks", help="comma-separated subset (default: all ready tasks)")
    p.add_argument("--checkpoints-dir", help="default: each config's (outputs/checkpoints)")
    p.add_argument("--processed-dir", help="prepared data (default: the run config's data.processed_dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_stage2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codonlm", description="Codon-level GPT for prokaryotic CDS.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("fetch-data", help="fetch the default real corpus (Debian cct-examples) into data/raw")
    p.add_argument("--dest", default="data/raw")
    p.add_argument("--if-needed", action="store_true", help="only when a file the config names is missing")
    _add_config(p)
    p.set_defaults(func=cmd_fetch_data)

    p = sub.add_parser("make-run-id", help="print the run id for a config (YYYY-MM-DD_tiny_6L4H_d256_e5)")
    _add_config(p)
    p.set_defaults(func=cmd_make_run_id)

    p = sub.add_parser("prepare", help="GenBank -> CDS -> tokens -> windows -> NPZ splits")
    _add_config(p)
    p.add_argument("--run-id", help="write reports into runs/RUN_ID (default: from the config)")
    p.add_argument("--force", action="store_true", help="keep going when the integrity check fails")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("extract-cds", help="write the kept CDS of GenBank files as FASTA (to audit extraction)")
    p.add_argument("files", nargs="+", help=".gb/.gbk/.gbff files, plain or gzipped")
    p.add_argument("--out", required=True, help="output FASTA path")
    p.add_argument("--min-len", type=int, default=1, help="minimum sense codons (default: %(default)s)")
    p.add_argument("--transl-table", type=int, default=11, help="code when a CDS has no /transl_table")
    p.set_defaults(func=cmd_extract_cds)

    p = sub.add_parser("train", help="train TinyGPT on the prepared NPZ windows")
    _add_config(p)
    p.add_argument("--run-id", help="run id (default: from the config)")
    p.add_argument("-r", "--resume", help="continue from outputs/checkpoints/<RUN_ID>/last.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export-hf", help="export a run's model as a Hugging Face LlamaForCausalLM")
    p.add_argument("run_id", help="run id (uses best.pt) or a path to a .pt checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--checkpoints-dir", default="outputs/checkpoints")
    p.set_defaults(func=cmd_export_hf)

    p = sub.add_parser("evaluate", help="held-out metrics + baselines into runs/<RUN_ID>/evaluate/")
    p.add_argument("run_id")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--checkpoints-dir", default="outputs/checkpoints")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", help="default: runs/<RUN_ID>/evaluate")
    _add_scoring(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("eval-perplexity", help="score every CDS of a FASTA file (one row per sequence)")
    p.add_argument("run_id")
    p.add_argument("--fasta", required=True)
    p.add_argument("--out", help="CSV path (default: stdout)")
    _add_scoring(p)
    p.add_argument("--checkpoints-dir", default="outputs/checkpoints")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_eval_perplexity)

    p = sub.add_parser("generate-prefix", help="prefix generation + gene quality metrics (gen_prefix/)")
    add_generate_prefix_arguments(p)
    p.set_defaults(func=cmd_generate_prefix)

    p = sub.add_parser("query", help="next codons, generate, score or mutate a DNA sequence")
    add_query_arguments(p)
    p.set_defaults(func=cmd_query)

    add_stage2_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"codonlm {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"codonlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
