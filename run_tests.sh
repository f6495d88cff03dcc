#!/usr/bin/env bash
# Test command: sets up .venv, fetches the default corpus (integration tests use it), runs pytest.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup_env.sh
.venv/bin/codonlm fetch-data --if-needed -c configs/tiny_cpu.yaml
exec .venv/bin/python -m pytest -q "$@"
