#!/usr/bin/env bash
# Starts the test control plane (etcd, kube-apiserver, kube-controller-manager) in the background,
# applies crds/ and prints the kubeconfig path. Same launcher as the pytest fixtures
# (testenv/controlplane.py); state, logs and pid files live in .testenv/run/. Stop: testenv/down.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
RUN="${KUBESHOT_TESTENV_RUN:-$ROOT/.testenv/run}"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

say() { printf 'testenv: %s\n' "$*" >&2; }

mkdir -p "$RUN"
if [[ -f "$RUN/supervisor.pid" ]] && kill -0 "$(cat "$RUN/supervisor.pid")" 2>/dev/null && [[ -f "$RUN/state.json" ]]; then
  say "already running (stop it with testenv/down.sh)"
else
  "$HERE/build.sh" >/dev/null  # fast when built; honours KUBESHOT_TESTENV_BIN
  say "starting etcd, kube-apiserver, kube-controller-manager (logs: $RUN/logs/)"
  # setsid: its own session, so closing this terminal does not stop it; down.sh does.
  setsid "$PYTHON" "$HERE/controlplane.py" serve --dir "$RUN" >"$RUN/supervisor.log" 2>&1 </dev/null &
  supervisor=$!
  until [[ -f "$RUN/state.json" ]]; do
    if ! kill -0 "$supervisor" 2>/dev/null; then
      say "the control plane failed to start:"
      cat "$RUN/supervisor.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  say "$(head -n1 "$RUN/supervisor.log")"
fi

KUBECTL="$("$HERE/build.sh" --print-bin-dir)/kubectl"
shopt -s nullglob
crds=("$ROOT"/crds/*.yaml)
if ((${#crds[@]})); then
  for crd in "${crds[@]}"; do args+=(-f "$crd"); done
  "$KUBECTL" --kubeconfig "$RUN/kubeconfig" apply --server-side "${args[@]}" >&2
  "$KUBECTL" --kubeconfig "$RUN/kubeconfig" wait --for=condition=Established --timeout=60s "${args[@]}" >/dev/null
else
  say "no CRDs in crds/ yet (make crds)"
fi
say "ready; try: export KUBECONFIG=$RUN/kubeconfig; kubectl get crds   (kubectl, helm: $(dirname "$KUBECTL"))"
echo "$RUN/kubeconfig"
