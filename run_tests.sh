#!/usr/bin/env bash
# Test command: sets up .venv, fetches the default corpus (integration tests use it), installs
# chromium when missing (the report test), runs pytest.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup_env.sh
.venv/bin/codonlm fetch-data --if-needed -c configs/tiny_cpu.yaml
# the report test renders runs/<RUN_ID>/report.html in headless Chromium (Debian's package)
if ! command -v chromium >/dev/null 2>&1; then
  echo "[tests] installing chromium (apt) for the report test"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
exec .venv/bin/python -m pytest -q "$@"
