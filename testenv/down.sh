#!/usr/bin/env bash
# Stops the control plane that testenv/up.sh started (pid files in .testenv/run/).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
RUN="${KUBESHOT_TESTENV_RUN:-$ROOT/.testenv/run}"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" "$HERE/controlplane.py" down --dir "$RUN"
