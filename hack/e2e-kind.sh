#!/usr/bin/env bash
# kubeshot end to end on kind (needs Docker): `make e2e-kind`.
#
#  1. a kind cluster whose CNI enforces NetworkPolicies (kindnet from kind >= v0.24, which runs
#     kube-network-policies; or Calico with CNI=calico),
#  2. both images built from this checkout and loaded into the nodes (`kind load`),
#  3. `helm install` of charts/kubeshot (the gateway serving HTTPS with a throw-away certificate),
#  4. the CaptureJobs of examples/ applied; each must reach Succeeded, and its artifact is
#     downloaded through the gateway and checked against the sha256 in its status,
#  5. a synchronous capture through the gateway's POST /v1/screenshot,
#  6. proof that capture pods cannot reach private addresses or the metadata IP: a CaptureJob for
#     169.254.169.254 fails with BlockedByPolicy (the egress guard), and a probe pod carrying the
#     capture pods' labels (so the operator's NetworkPolicy applies to it) cannot connect to the
#     metadata IP, the API server's node address or the gateway's API port, while the gateway's
#     upload port and the internet stay reachable (so the refusals are the policy, not a broken
#     network).
#
# Environment (all optional):
#   KIND_CLUSTER_NAME  cluster name (kubeshot-e2e)       CNI           kindnet | calico (kindnet)
#   KIND_NODE_IMAGE    node image, e.g. kindest/node:v1.33.1 (kind's default)
#   KEEP_CLUSTER=1     keep the cluster afterwards        REUSE_CLUSTER=1  use an existing cluster
#   SKIP_BUILD=1       do not build the images (they must exist locally, tagged $IMAGE_TAG)
#   IMAGE_TAG          tag of the built images (e2e)      TIMEOUT       seconds per wait (300)
#   CALICO_VERSION     Calico release for CNI=calico (v3.29.1)
#   EXPECT_SUCCEEDED   example CaptureJobs that must succeed (all CaptureJobs in examples/)

set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${KIND_CLUSTER_NAME:-kubeshot-e2e}
CNI=${CNI:-kindnet}
IMAGE_TAG=${IMAGE_TAG:-e2e}
TIMEOUT=${TIMEOUT:-300}
CALICO_VERSION=${CALICO_VERSION:-v3.29.1}
RELEASE=kubeshot
SYSTEM_NS=kubeshot
CAPTURE_NS=kubeshot-e2e
OPERATOR_IMAGE=kubeshot/kubeshot:${IMAGE_TAG}
CAPTURE_IMAGE=kubeshot/capture:${IMAGE_TAG}
CONTEXT=kind-${CLUSTER}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kubeshot-e2e.XXXXXX")
PORT_FORWARD_PID=""
CREATED_CLUSTER=0

log() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31mFAIL: %s\033[0m\n' "$*" >&2; exit 1; }
k() { kubectl --context "$CONTEXT" "$@"; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is required (${2:-install it first})"
}

version_at_least() {  # version_at_least HAVE WANT
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

diagnose() {
  log "diagnostics"
  k get nodes -o wide || true
  k get pods -A -o wide || true
  k -n "$CAPTURE_NS" get capturejobs,screenshotpolicies,networkpolicies -o wide || true
  k -n "$CAPTURE_NS" get capturejobs -o yaml || true
  k -n "$CAPTURE_NS" get events --sort-by=.lastTimestamp || true
  k -n "$SYSTEM_NS" logs deployment/"$RELEASE"-operator --tail=200 || true
  k -n "$SYSTEM_NS" logs deployment/"$RELEASE"-gateway --tail=200 || true
}

cleanup() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    diagnose
  fi
  if [ -n "$PORT_FORWARD_PID" ]; then
    kill "$PORT_FORWARD_PID" 2>/dev/null || true
  fi
  if [ "$CREATED_CLUSTER" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    log "deleting kind cluster $CLUSTER (KEEP_CLUSTER=1 keeps it)"
    kind delete cluster --name "$CLUSTER" || true
  fi
  rm -rf "$WORK"
  if [ "$status" -eq 0 ]; then
    log "e2e-kind passed"
  fi
  exit "$status"
}
trap cleanup EXIT

# --- 0. prerequisites ----------------------------------------------------------------------------
for tool in docker kind kubectl helm curl openssl python3; do
  need "$tool"
done
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
  config=$WORK/kind.yaml
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
  } >"$config"
  node_image=()
  if [ -n "${KIND_NODE_IMAGE:-}" ]; then
    node_image=(--image "$KIND_NODE_IMAGE")
  fi
  kind create cluster --name "$CLUSTER" --config "$config" "${node_image[@]}" --wait "${TIMEOUT}s"
  CREATED_CLUSTER=1
  if [ "$CNI" = calico ]; then
    log "installing Calico $CALICO_VERSION"
    k apply -f "https://raw.githubusercontent.com/projectcalico/calico/${CALICO_VERSION}/manifests/calico.yaml"
    k -n kube-system rollout status daemonset/calico-node --timeout="${TIMEOUT}s"
    k wait --for=condition=Ready nodes --all --timeout="${TIMEOUT}s"
  fi
fi

# --- 2. images -----------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building $OPERATOR_IMAGE and $CAPTURE_IMAGE"
  docker build -f "$ROOT/operator/Dockerfile" -t "$OPERATOR_IMAGE" "$ROOT"
  docker build -f "$ROOT/capture-pod/Dockerfile" -t "$CAPTURE_IMAGE" "$ROOT"
fi
log "loading the images into the nodes"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$CAPTURE_IMAGE"

# --- 3. helm install -----------------------------------------------------------------------------
log "installing the chart"
k create namespace "$SYSTEM_NS" --dry-run=client -o yaml | k apply -f -
k create namespace "$CAPTURE_NS" --dry-run=client -o yaml | k apply -f -
# Capture pods must meet the restricted Pod Security Standard: enforce it where they run.
k label namespace "$CAPTURE_NS" --overwrite \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted
k label namespace "$SYSTEM_NS" --overwrite pod-security.kubernetes.io/enforce=restricted

gateway_host=$RELEASE-gateway.$SYSTEM_NS.svc
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=$gateway_host" \
  -addext "subjectAltName=DNS:$gateway_host,DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
k -n "$SYSTEM_NS" create secret tls kubeshot-e2e-tls --cert="$WORK/tls.crt" --key="$WORK/tls.key" \
  --dry-run=client -o yaml | k apply -f -

cat >"$WORK/values.yaml" <<EOF
image:
  registry: ""
  repository: kubeshot/kubeshot
  tag: "$IMAGE_TAG"
  pullPolicy: Never
operator:
  verbose: true
  captureImage:
    registry: ""
    repository: kubeshot/capture
    tag: "$IMAGE_TAG"
    pullPolicy: Never
gateway:
  tls:
    enabled: true
    secretName: kubeshot-e2e-tls
  persistence:
    size: 1Gi
defaultPolicy:
  namespaces: [$CAPTURE_NS]
EOF
helm upgrade --install "$RELEASE" "$ROOT/charts/kubeshot" --kube-context "$CONTEXT" \
  --namespace "$SYSTEM_NS" -f "$WORK/values.yaml" --wait --timeout "${TIMEOUT}s"
k -n "$SYSTEM_NS" rollout status deployment/"$RELEASE"-operator --timeout="${TIMEOUT}s"
k -n "$SYSTEM_NS" rollout status deployment/"$RELEASE"-gateway --timeout="${TIMEOUT}s"

# --- 4. the examples -----------------------------------------------------------------------------
log "applying examples/ in $CAPTURE_NS (policies first: a job whose policy is missing fails)"
mapfile -t policy_files < <(grep -l '^kind: ScreenshotPolicy' "$ROOT"/examples/*.yaml)
for file in "${policy_files[@]}"; do
  k -n "$CAPTURE_NS" apply -f "$file"
done
k -n "$CAPTURE_NS" wait --for=condition=Ready screenshotpolicy --all --timeout="${TIMEOUT}s"
k -n "$CAPTURE_NS" apply -f "$ROOT/examples/"
mapfile -t jobs < <(k -n "$CAPTURE_NS" get capturejobs -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
[ "${#jobs[@]}" -gt 0 ] || die "examples/ created no CaptureJob"
read -r -a expected <<<"${EXPECT_SUCCEEDED:-${jobs[*]}}"

phase_of() { k -n "$CAPTURE_NS" get capturejob "$1" -o jsonpath='{.status.phase}' 2>/dev/null || true; }
wait_finished() {  # wait_finished JOB → prints the final phase
  local deadline=$((SECONDS + TIMEOUT)) phase
  while [ "$SECONDS" -lt "$deadline" ]; do
    phase=$(phase_of "$1")
    case "$phase" in
      Succeeded | Failed) echo "$phase"; return 0 ;;
    esac
    sleep 2
  done
  echo "Timeout"
}

token=$(k -n "$SYSTEM_NS" get secret "$RELEASE"-auth -o jsonpath='{.data.token}' | base64 -d)
[ -n "$token" ] || die "no token in Secret $RELEASE-auth"
local_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
k -n "$SYSTEM_NS" port-forward service/"$RELEASE"-gateway "$local_port":443 >"$WORK/port-forward.log" 2>&1 &
PORT_FORWARD_PID=$!
gateway=https://127.0.0.1:$local_port
for _ in $(seq 1 30); do
  if curl -fsS --cacert "$WORK/tls.crt" "$gateway/healthz" >/dev/null 2>&1; then
    break
  fi
  sleep 1
done
curl -fsS --cacert "$WORK/tls.crt" "$gateway/healthz" >/dev/null || die "gateway not reachable through port-forward"
api() { curl -fsS --cacert "$WORK/tls.crt" -H "Authorization: Bearer $token" "$@"; }

for job in "${expected[@]}"; do
  log "waiting for CaptureJob $job"
  phase=$(wait_finished "$job")
  [ "$phase" = Succeeded ] \
    || die "CaptureJob $job ended $phase: $(k -n "$CAPTURE_NS" get capturejob "$job" -o jsonpath='{.status.failure}')"
  url=$(k -n "$CAPTURE_NS" get capturejob "$job" -o jsonpath='{.status.result.url}')
  sha=$(k -n "$CAPTURE_NS" get capturejob "$job" -o jsonpath='{.status.result.sha256}')
  if [ -z "$url" ] || [ -z "$sha" ]; then
    die "CaptureJob $job has no result url/sha256"
  fi
  path=/${url#*://*/}
  log "downloading $job's artifact through the gateway ($path)"
  api -o "$WORK/$job.artifact" "$gateway$path"
  got=$(openssl dgst -sha256 -r "$WORK/$job.artifact" | cut -d' ' -f1)
  [ "$got" = "$sha" ] || die "artifact of $job: sha256 $got, status says $sha"
  echo "$job: $(wc -c <"$WORK/$job.artifact") bytes, sha256 $sha"
done

# --- 5. a synchronous capture through the gateway ------------------------------------------------
log "POST /v1/screenshot through the gateway"
api -H 'Content-Type: application/json' -d '{"url": "https://example.com", "format": "png"}' \
  -o "$WORK/sync.png" "$gateway/v1/screenshot"
[ "$(head -c 8 "$WORK/sync.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] \
  || die "POST /v1/screenshot did not return a PNG"
status=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$WORK/tls.crt" \
  -H 'Content-Type: application/json' -d '{"url": "https://example.com"}' "$gateway/v1/screenshot")
[ "$status" = 401 ] || die "a request without a token got $status, not 401"

# --- 6. capture pods cannot reach private addresses or the metadata IP ---------------------------
log "a CaptureJob for the metadata IP is refused by the egress guard"
k -n "$CAPTURE_NS" apply -f - <<EOF
apiVersion: kubeshot.dev/v1alpha1
kind: CaptureJob
metadata:
  name: e2e-metadata
spec:
  url: http://169.254.169.254/latest/meta-data/
  format: png
EOF
phase=$(wait_finished e2e-metadata)
reason=$(k -n "$CAPTURE_NS" get capturejob e2e-metadata -o jsonpath='{.status.failure.reason}')
if [ "$phase" != Failed ] || [ "$reason" != BlockedByPolicy ]; then
  die "the metadata-IP capture ended $phase ($reason), not Failed (BlockedByPolicy)"
fi

log "the NetworkPolicy of the default policy confines a pod with the capture labels"
node_ip=$(k get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')
gateway_pod_ip=$(k -n "$SYSTEM_NS" get pods -l app.kubernetes.io/component=gateway \
  -o jsonpath='{.items[0].status.podIP}')
upload_port=$(k -n "$SYSTEM_NS" get service "$RELEASE"-gateway -o jsonpath='{.spec.ports[?(@.name=="upload")].port}')
# TARGET=expect: "open" must connect, "blocked" must not.
targets="169.254.169.254:80=blocked $node_ip:6443=blocked $gateway_pod_ip:8080=blocked"
targets="$targets $gateway_pod_ip:$upload_port=open example.com:443=open"
probe_script='
import socket, sys
failed = 0
for item in sys.argv[1:]:
    target, expect = item.split("=")
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        got = "open"
    except OSError:
        got = "blocked"
    ok = got == expect
    failed += not ok
    mark = "" if ok else "  <-- WRONG"
    print(f"{target}: {got} (expected {expect}){mark}", flush=True)
sys.exit(1 if failed else 0)
'
python3 - "$CAPTURE_IMAGE" "$probe_script" "$targets" >"$WORK/probe.json" <<'PY'
import json, sys
image, script, targets = sys.argv[1], sys.argv[2], sys.argv[3].split()
restricted = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
labels = {  # what the operator puts on the capture pods of the policy `default`
    "app.kubernetes.io/name": "kubeshot",
    "app.kubernetes.io/component": "capture",
    "app.kubernetes.io/managed-by": "kubeshot-operator",
    "kubeshot.dev/policy": "default",
}
print(json.dumps({
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "e2e-egress-probe", "labels": labels},
    "spec": {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "probe",
            "image": image,
            "imagePullPolicy": "Never",
            "command": ["python", "-c", script, *targets],
            "securityContext": restricted,
        }],
    },
}))
PY
k -n "$CAPTURE_NS" delete pod e2e-egress-probe --ignore-not-found --wait
k -n "$CAPTURE_NS" apply -f "$WORK/probe.json"
deadline=$((SECONDS + TIMEOUT))
while :; do
  probe_phase=$(k -n "$CAPTURE_NS" get pod e2e-egress-probe -o jsonpath='{.status.phase}')
  case "$probe_phase" in
    Succeeded | Failed) break ;;
  esac
  [ "$SECONDS" -lt "$deadline" ] || die "the egress probe pod did not finish"
  sleep 2
done
k -n "$CAPTURE_NS" logs e2e-egress-probe
if [ "$probe_phase" != Succeeded ]; then
  die "capture-pod egress is not confined as expected (CNI $CNI; with kindnet the kernel needs nft_queue, else try CNI=calico)"
fi
k -n "$CAPTURE_NS" delete pod e2e-egress-probe --wait=false
