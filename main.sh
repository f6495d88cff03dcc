#!/usr/bin/env bash
# One-shot pipeline: ./main.sh [-c CONFIG] [-r CHECKPOINT]
# Sets up .venv, fetches the default corpus when the config needs it, then runs each stage,
# teeing all output into runs/<RUN_ID>/log.txt and timing every stage.
set -euo pipefail
cd "$(dirname "$0")"

CONFIG=configs/tiny_cpu.yaml
RESUME=""
usage() { echo "usage: ./main.sh [-c CONFIG] [-r CHECKPOINT]" >&2; exit 2; }
while getopts "c:r:h" opt; do
  case $opt in
    c) CONFIG=$OPTARG ;;
    r) RESUME=$OPTARG ;;
    *) usage ;;
  esac
done
[ -f "$CONFIG" ] || { echo "main.sh: error: config file not found: $CONFIG (try -c configs/tiny_cpu.yaml)" >&2; exit 2; }
if [ -n "$RESUME" ] && [ ! -f "$RESUME" ]; then
  echo "main.sh: error: checkpoint not found: $RESUME (expected outputs/checkpoints/<RUN_ID>/last.pt)" >&2; exit 2
fi

./scripts/setup_env.sh
CODONLM=.venv/bin/codonlm
RUN_ID=$($CODONLM make-run-id -c "$CONFIG")
if [ -n "$RESUME" ]; then
  # resuming continues the run the checkpoint belongs to
  RUN_ID=$(basename "$(dirname "$RESUME")")
fi
mkdir -p "runs/$RUN_ID"
export CODONLM_TEED=1
exec > >(tee -a "runs/$RUN_ID/log.txt") 2>&1

stage() {
  local name=$1; shift
  local t0=$SECONDS
  echo "=== [$name] $(date -u +%FT%TZ): $*"
  "$@"
  echo "=== [$name] finished in $((SECONDS - t0))s"
}

echo "=== codonlm run $RUN_ID, config $CONFIG, commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
T0=$SECONDS
stage fetch-data $CODONLM fetch-data --if-needed -c "$CONFIG"
if [ -z "$RESUME" ]; then
  stage prepare $CODONLM prepare -c "$CONFIG" --run-id "$RUN_ID"
  stage train $CODONLM train -c "$CONFIG" --run-id "$RUN_ID"
else
  stage train $CODONLM train -c "$CONFIG" --resume "$RESUME"
fi
CKPTS=$(.venv/bin/python -c "from codonlm.config import load_config; print(load_config('$CONFIG').outputs.out_dir)")
stage evaluate $CODONLM evaluate "$RUN_ID" --checkpoints-dir "$CKPTS"
stage generate-prefix $CODONLM generate-prefix "$RUN_ID" --checkpoints-dir "$CKPTS" --quiet
stage analyze $CODONLM analyze "$RUN_ID" --checkpoints-dir "$CKPTS" --quiet --report
echo "=== all stages finished in $((SECONDS - T0))s; outputs in runs/$RUN_ID (report: runs/$RUN_ID/report.html)"
