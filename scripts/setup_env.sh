#!/usr/bin/env bash
# Creates .venv and installs codonlm with pinned dependencies; idempotent (stamp keyed on pyproject).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
# MMseqs2 (data.split_by: cluster, evaluate's identity bins): Debian's package, when this user can install it
if ! command -v mmseqs >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  echo "[setup] installing mmseqs2 (apt) for homology-aware splits"
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmseqs2 >/dev/null; } \
    || echo "[setup] could not install mmseqs2; data.split_by: cluster will say how to install it"
fi
stamp_key=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -f .venv/.setup-stamp ] && [ "$(cat .venv/.setup-stamp)" = "$stamp_key" ]; then
  exit 0
fi
echo "[setup] creating .venv and installing codonlm (one time)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "$stamp_key" > .venv/.setup-stamp
