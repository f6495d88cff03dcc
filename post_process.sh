#!/usr/bin/env bash
# One shareable folder + .tar.gz of a run (the manual's post_process.sh): config, data report,
# metrics, curves, analysis tables and figures, report.html and the Hugging Face export, with a
# manifest of sha256 checksums: ./post_process.sh [RUN_ID] [--out-dir outputs/share] [--checkpoints-dir DIR]
# Without RUN_ID: the latest trained run (newest checkpoint under outputs/checkpoints).
# Writes outputs/share/<RUN_ID>/ and outputs/share/<RUN_ID>.tar.gz.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup_env.sh
exec .venv/bin/codonlm bundle "$@"
