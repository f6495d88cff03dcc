#!/usr/bin/env bash
# The seven analysis steps plus the report for a run that has finished training (the manual's
# "./analysis.sh (motifs, artifacts)"): ./analysis.sh [RUN_ID] [--steps STEP ...] [--force] [--quiet]
# Without RUN_ID: the latest trained run (newest checkpoint under outputs/checkpoints).
# Other options pass through to `codonlm analyze` (--checkpoints-dir, --runs-dir, --device, --seed).
# Writes runs/<RUN_ID>/analysis/<step>/ and runs/<RUN_ID>/report.html.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup_env.sh
exec .venv/bin/codonlm analyze "$@" --report
