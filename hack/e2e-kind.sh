#!/usr/bin/env bash
# kubeshot end to end on kind (needs Docker): `make e2e-kind`.
#
# A thin wrapper: it makes the cluster and the images, then runs the same suite as `make test`
# runs on the node tier, tests/e2e (`pytest -m e2e`), with KUBECONFIG pointing at kind. The suite
# installs the chart, checks it as users do and uninstalls it (see tests/e2e/conftest.py).
#
#  1. a kind cluster whose CNI enforces NetworkPolicies (kindnet from kind >= v0.24, which runs
#     kube-network-policies; or Calico with CNI=calico),
#  2. both images built from this checkout and loaded into the nodes (`kind load`),
#  3. `pytest -m e2e` with KUBECONFIG set to the cluster and KUBESHOT_E2E_VALUES naming the only
#     values the suite must give `helm install` here: the images' names and pull policy.
#
# Environment (all optional):
#   KIND_CLUSTER_NAME  cluster name (kubeshot-e2e)       CNI           kindnet | calico (kindnet)
#   KIND_NODE_IMAGE    node image, e.g. kindest/node:v1.33.1 (kind's default)
#   KEEP_CLUSTER=1     keep the cluster afterwards        REUSE_CLUSTER=1  use an existing cluster
#   SKIP_BUILD=1       do not build the images (they must exist locally, tagged $IMAGE_TAG)
#   IMAGE_TAG          tag of the built images (e2e)      TIMEOUT       seconds for the cluster (300)
#   CALICO_VERSION     Calico release for CNI=calico (v3.29.1)
#   PYTEST_ARGS        extra arguments for pytest (e.g. -x)

set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${KIND_CLUSTER_NAME:-kubeshot-e2e}
CNI=${CNI:-kindnet}
IMAGE_TAG=${IMAGE_TAG:-e2e}
TIMEOUT=${TIMEOUT:-300}
CALICO_VERSION=${CALICO_VERSION:-v3.29.1}
OPERATOR_IMAGE=kubeshot/kubeshot:${IMAGE_TAG}
CAPTURE_IMAGE=kubeshot/capture:${IMAGE_TAG}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kubeshot-e2e.XXXXXX")
CREATED_CLUSTER=0

log() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31mFAIL: %s\033[0m\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required (${2:-install it first})"; }
version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

cleanup() {
  local status=$?
  if [ "$CREATED_CLUSTER" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    log "deleting kind cluster $CLUSTER (KEEP_CLUSTER=1 keeps it)"
    kind delete cluster --name "$CLUSTER" || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

# --- 0. prerequisites ----------------------------------------------------------------------------
for tool in docker kind kubectl helm curl; do need "$tool"; done
[ -x "$ROOT/.venv/bin/pytest" ] || die "no .venv: run make setup (make e2e-kind does)"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"
kind_version=$(kind version | sed -n 's/^kind \(v[0-9][0-9.]*\).*/\1/p')
case "$CNI" in
  kindnet)
    version_at_least "${kind_version#v}" 0.24.0 \
      || die "kind $kind_version: kindnet enforces NetworkPolicies from kind v0.24.0 on (or CNI=calico)"
    ;;
  calico) ;;
  *) die "CNI must be kindnet or calico, not $CNI" ;;
esac

# --- 1. cluster ----------------------------------------------------------------------------------
if [ "${REUSE_CLUSTER:-0}" = 1 ] && kind get clusters | grep -qx "$CLUSTER"; then
  log "reusing kind cluster $CLUSTER"
else
  log "creating kind cluster $CLUSTER (CNI: $CNI)"
  {
    echo "kind: Cluster"
    echo "apiVersion: kind.x-k8s.io/v1alpha4"
    echo "networking:"
    if [ "$CNI" = calico ]; then
      echo "  disableDefaultCNI: true"
      echo "  podSubnet: 192.168.0.0/16"
    fi
    echo "nodes:"
    echo "  - role: control-plane"
    echo "  - role: worker"
  } >"$WORK/kind.yaml"
  node_image=()
  if [ -n "${KIND_NODE_IMAGE:-}" ]; then node_image=(--image "$KIND_NODE_IMAGE"); fi
  kind create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" "${node_image[@]}" --wait "${TIMEOUT}s"
  CREATED_CLUSTER=1
fi
kind export kubeconfig --name "$CLUSTER" --kubeconfig "$WORK/kubeconfig"
export KUBECONFIG="$WORK/kubeconfig"
if [ "$CNI" = calico ]; then
  log "installing Calico $CALICO_VERSION"
  kubectl apply -f "https://raw.githubusercontent.com/projectcalico/calico/${CALICO_VERSION}/manifests/calico.yaml"
  kubectl -n kube-system rollout status daemonset/calico-node --timeout="${TIMEOUT}s"
  kubectl wait --for=condition=Ready nodes --all --timeout="${TIMEOUT}s"
fi

# --- 2. images -----------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building $OPERATOR_IMAGE and $CAPTURE_IMAGE"
  docker build -f "$ROOT/operator/Dockerfile" -t "$OPERATOR_IMAGE" "$ROOT"
  docker build -f "$ROOT/capture-pod/Dockerfile" -t "$CAPTURE_IMAGE" "$ROOT"
fi
log "loading the images into the nodes"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$CAPTURE_IMAGE"

# --- 3. the e2e suite ----------------------------------------------------------------------------
cat >"$WORK/values.yaml" <<EOF
image:
  registry: ""
  repository: kubeshot/kubeshot
  tag: "$IMAGE_TAG"
  pullPolicy: Never
operator:
  captureImage:
    registry: ""
    repository: kubeshot/capture
    tag: "$IMAGE_TAG"
    pullPolicy: Never
EOF
log "pytest -m e2e on kind-$CLUSTER"
cd "$ROOT"
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of arguments
KUBESHOT_E2E_VALUES="$WORK/values.yaml" .venv/bin/pytest -m e2e ${PYTEST_ARGS:-}
