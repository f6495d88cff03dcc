#!/usr/bin/env bash
# One shareable folder + .tar.gz of a run (the manual's post_process.sh): config, data report,
# metrics, curves, analysis tables and figures, report.html and the Hugging Face export, with a
# manifest of sha256 checksums: ./post_process.sh RUN_ID [--out-dir outputs/share] [--checkpoints-dir DIR]
# Writes outputs/share/<RUN_ID>/ and outputs/share/<RUN_ID>.tar.gz.
set -euo pipefail
cd "$(dirname "$0")"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: ./post_process.sh RUN_ID [--out-dir DIR] [--checkpoints-dir DIR]" >&2
  exit 2
fi
./scripts/setup_env.sh
exec .venv/bin/codonlm bundle "$@"
