#!/usr/bin/env bash
# One-shot pipeline, idempotent like make: ./main.sh [-c CONFIG] [-r CHECKPOINT] [--run-id NAME] [--fresh]
#   [--stages LIST] [--redo LIST] [--force] [-q] [--no-wait]
# Sets up .venv, then runs `codonlm pipeline` (the stages are listed in src/codonlm/pipeline.py).
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'USAGE'
usage: ./main.sh [-c CONFIG] [-r CHECKPOINT] [--run-id NAME] [--fresh] [--stages LIST] [--redo LIST] [--force] [-q]
                 [--no-wait]

Runs the stages of a run in order (STAGES in src/codonlm/pipeline.py: fetch-data, prepare, train,
evaluate, generate-prefix, ...) for a config (default configs/tiny_cpu.yaml).
Re-running the same command continues the same run: finished stages are skipped, an interrupted
training resumes from its last.pt. A changed config starts a new run (a taken id gets a suffix -2, -3, ...).
One writer per run: a second ./main.sh on a run in use waits for it, with a line naming the process.

  -c, --config CONFIG      YAML config (default: configs/tiny_cpu.yaml; with -r: the checkpoint's)
  -r, --resume CHECKPOINT  continue the run of outputs/checkpoints/<RUN_ID>/last.pt
      --run-id NAME        name a new run, or continue the run of that name made with this config
      --fresh              start a new run even if one with this config exists
      --stages LIST        run only these stages, comma-separated (e.g. train,evaluate)
      --redo LIST          run these stages again even if done
      --force              prepare: keep going when the integrity check fails
  -q, --quiet              no progress bars (for CI logs)
      --no-wait            when another process is working on the run, stop (exit 2) instead of waiting
  -h, --help               this help

Log: runs/<RUN_ID>/log.txt; stage stamps: runs/<RUN_ID>/stages/; a summary names each stage as done,
skipped or failed with its time.
USAGE
}
for arg in "$@"; do
  case $arg in -h|--help) usage; exit 0 ;; esac
done

./scripts/setup_env.sh
exec .venv/bin/codonlm pipeline "$@"
