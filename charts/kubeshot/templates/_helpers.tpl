{{/*
Names, labels, images and checks shared by every template. Bad combinations of values fail here,
with a message that says what to change, rather than producing manifests that fail later.
*/}}

{{- define "kubeshot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release name when it contains the chart name; at most 40 characters. */}}
{{- define "kubeshot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- if gt (len .Values.fullnameOverride) 40 -}}
{{- fail (printf "fullnameOverride %q is longer than 40 characters" .Values.fullnameOverride) -}}
{{- end -}}
{{- .Values.fullnameOverride | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubeshot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of everything the chart creates. */}}
{{- define "kubeshot.labels" -}}
helm.sh/chart: {{ include "kubeshot.chart" . }}
{{ include "kubeshot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeshot
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kubeshot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeshot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Component labels: (dict "root" $ "component" "gateway") */}}
{{- define "kubeshot.componentLabels" -}}
{{ include "kubeshot.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kubeshot.componentSelectorLabels" -}}
{{ include "kubeshot.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A component's selector labels as JSON: (dict "root" $ "component" "gateway"). The operator
lets capture pods reach these pods (uploads to the gateway, warm pods' assignments from the
operator). */}}
{{- define "kubeshot.componentSelectorLabelsJson" -}}
{{- include "kubeshot.componentSelectorLabels" . | fromYaml | toJson -}}
{{- end -}}

{{/* An image reference: (dict "image" .Values.image "root" $) */}}
{{- define "kubeshot.image" -}}
{{- $image := .image -}}
{{- $repository := required "an image repository is required (image.repository, operator.captureImage.repository)" $image.repository -}}
{{- $ref := $repository -}}
{{- if $image.registry -}}
{{- $ref = printf "%s/%s" $image.registry $repository -}}
{{- end -}}
{{- $tag := default .root.Chart.AppVersion $image.tag -}}
{{- if $image.digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" $image.digest) -}}
{{- fail (printf "image digest %q is not sha256:<64 hex digits>" $image.digest) -}}
{{- end -}}
{{- printf "%s:%s@%s" $ref $tag $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref $tag -}}
{{- end -}}
{{- end -}}

{{- define "kubeshot.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "kubeshot.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubeshot.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (printf "%s-gateway" (include "kubeshot.fullname" .)) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubeshot.gateway.name" -}}
{{- printf "%s-gateway" (include "kubeshot.fullname" .) -}}
{{- end -}}

{{- define "kubeshot.operator.name" -}}
{{- printf "%s-operator" (include "kubeshot.fullname" .) -}}
{{- end -}}

{{- define "kubeshot.authSecretName" -}}
{{- default (printf "%s-auth" (include "kubeshot.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "kubeshot.gateway.tlsSecretName" -}}
{{- default (printf "%s-gateway-tls" (include "kubeshot.fullname" .)) .Values.gateway.tls.secretName -}}
{{- end -}}

{{- define "kubeshot.gateway.servicePort" -}}
{{- if .Values.gateway.service.port -}}
{{- .Values.gateway.service.port -}}
{{- else if .Values.gateway.tls.enabled -}}
443
{{- else -}}
80
{{- end -}}
{{- end -}}

{{- define "kubeshot.gateway.claimName" -}}
{{- default (printf "%s-results" (include "kubeshot.fullname" .)) .Values.gateway.persistence.existingClaim -}}
{{- end -}}

{{/* The upload endpoint capture pods PUT artifacts to (the operator's KUBESHOT_OPERATOR_UPLOAD_URL). */}}
{{- define "kubeshot.uploadUrl" -}}
{{- printf "http://%s.%s.svc:%d/v1/internal/uploads" (include "kubeshot.gateway.name" .) .Release.Namespace (int .Values.gateway.uploadPort) -}}
{{- end -}}

{{/* Where warm capture pods ask the operator for their job (KUBESHOT_OPERATOR_ASSIGNMENT_URL). */}}
{{- define "kubeshot.assignmentUrl" -}}
{{- printf "http://%s.%s.svc:%d/v1/assignments" (include "kubeshot.operator.name" .) .Release.Namespace (int .Values.operator.assignmentPort) -}}
{{- end -}}

{{/*
The result store, as the gateway and the operator both read it (one StoreSettings): the gateway
keeps artifacts there, the operator mints each capture pod's presigned upload to it. Credentials
are files from the mounted Secret (kubeshot.store.volumeMounts), never values in the environment.
*/}}
{{- define "kubeshot.store.env" -}}
{{- $store := .Values.gateway.store -}}
- name: KUBESHOT_STORE
  value: {{ $store.type | quote }}
{{- if eq $store.type "s3" }}
{{- $s3 := $store.s3 }}
- name: KUBESHOT_STORE_DOWNLOAD
  value: {{ $store.download | quote }}
- name: KUBESHOT_S3_BUCKET
  value: {{ $s3.bucket | quote }}
- name: KUBESHOT_S3_PREFIX
  value: {{ $s3.prefix | quote }}
- name: KUBESHOT_S3_REGION
  value: {{ $s3.region | quote }}
{{- with $s3.endpoint }}
- name: KUBESHOT_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- if $s3.credentialsSecret }}
- name: KUBESHOT_S3_ACCESS_KEY_ID_FILE
  value: /etc/kubeshot/s3/accessKeyId
- name: KUBESHOT_S3_SECRET_ACCESS_KEY_FILE
  value: /etc/kubeshot/s3/secretAccessKey
{{- end }}
{{- with $s3.peers }}
- name: KUBESHOT_S3_NETWORK_PEERS
  value: {{ . | toJson | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "kubeshot.store.volumeMounts" -}}
{{- if and (eq .Values.gateway.store.type "s3") .Values.gateway.store.s3.credentialsSecret }}
- name: s3-credentials
  mountPath: /etc/kubeshot/s3
  readOnly: true
{{- end }}
{{- end -}}

{{- define "kubeshot.store.volumes" -}}
{{- if and (eq .Values.gateway.store.type "s3") .Values.gateway.store.s3.credentialsSecret }}
- name: s3-credentials
  secret:
    secretName: {{ .Values.gateway.store.s3.credentialsSecret }}
    defaultMode: 0440
    items:
      - key: accessKeyId
        path: accessKeyId
      - key: secretAccessKey
        path: secretAccessKey
{{- end }}
{{- end -}}

{{/* The Lease that elects the active operator replica (in the release namespace). */}}
{{- define "kubeshot.operator.lease" -}}
{{- printf "%s-operator" (include "kubeshot.fullname" .) -}}
{{- end -}}

{{/* Namespaces that get the default ScreenshotPolicy. */}}
{{- define "kubeshot.defaultPolicyNamespaces" -}}
{{- $namespaces := .Values.defaultPolicy.namespaces | default (list .Release.Namespace) -}}
{{- toJson $namespaces -}}
{{- end -}}

{{/*
What the egress guard refuses by address whatever the port (private, loopback, link-local, CGNAT,
cloud metadata and every other special-purpose range, with their NAT64 forms): the
ranges kubeshot.api.networks.unreachable_networks(block_private_networks=True) returns, which the
operator's capture-pod NetworkPolicies except too. tests/cluster/chart/test_chart_render.py fails
when these lists drift from that table.
*/}}
{{- define "kubeshot.unreachableIPv4" -}}
["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "168.63.129.16/32", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16", "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/3"]
{{- end -}}
{{- define "kubeshot.unreachableIPv6" -}}
["::/96", "::ffff:0:0:0/96", "64:ff9b::/104", "64:ff9b::a00:0/104", "64:ff9b::6440:0/106", "64:ff9b::7f00:0/104", "64:ff9b::a83f:8110/128", "64:ff9b::a9fe:0/112", "64:ff9b::ac10:0/108", "64:ff9b::c000:0/120", "64:ff9b::c000:200/120", "64:ff9b::c01f:c400/120", "64:ff9b::c034:c100/120", "64:ff9b::c058:6300/120", "64:ff9b::c0a8:0/112", "64:ff9b::c0af:3000/120", "64:ff9b::c612:0/111", "64:ff9b::c633:6400/120", "64:ff9b::cb00:7100/120", "64:ff9b::e000:0/99", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20", "4000::/2", "8000::/1"]
{{- end -}}

{{/* The restricted Pod Security Standard, for every container the chart runs. */}}
{{- define "kubeshot.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kubeshot.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Spread replicas across nodes unless the user says otherwise: (dict "root" $ "component" "x" "values" .Values.x) */}}
{{- define "kubeshot.topologySpread" -}}
{{- if .values.topologySpreadConstraints -}}
{{- toYaml .values.topologySpreadConstraints -}}
{{- else -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "kubeshot.componentSelectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
{{- end -}}
{{- end -}}

{{/* Checks of combinations the schema cannot express. Included once, by NOTES.txt and the Deployments. */}}
{{- define "kubeshot.validate" -}}
{{- $gw := .Values.gateway -}}
{{- if and $gw.tls.certManager.enabled (not $gw.tls.enabled) -}}
{{- fail "gateway.tls.certManager.enabled needs gateway.tls.enabled: the gateway must serve the certificate cert-manager issues" -}}
{{- end -}}
{{- if and $gw.tls.certManager.enabled (not $gw.tls.certManager.issuerRef.name) -}}
{{- fail "gateway.tls.certManager.issuerRef.name is required with gateway.tls.certManager.enabled" -}}
{{- end -}}
{{- if and $gw.ingress.enabled (not $gw.ingress.host) -}}
{{- fail "gateway.ingress.host is required with gateway.ingress.enabled" -}}
{{- end -}}
{{- if eq (int $gw.port) (int $gw.uploadPort) -}}
{{- fail "gateway.port and gateway.uploadPort must differ: the upload port is reachable by capture pods only" -}}
{{- end -}}
{{- if has (int $gw.metricsPort) (list (int $gw.port) (int $gw.uploadPort)) -}}
{{- fail "gateway.metricsPort must differ from gateway.port and gateway.uploadPort: /metrics has a port of its own, off the callers' Service" -}}
{{- end -}}
{{- if eq (int .Values.operator.metricsPort) (int .Values.operator.assignmentPort) -}}
{{- fail "operator.metricsPort and operator.assignmentPort must differ: the operator listens on both, and capture pods may reach the assignment port only" -}}
{{- end -}}
{{- if and $gw.autoscaling.enabled $gw.keda.enabled -}}
{{- fail "gateway.autoscaling and gateway.keda both scale the gateway: enable one (KEDA makes its own HorizontalPodAutoscaler)" -}}
{{- end -}}
{{- if and $gw.autoscaling.enabled (gt (int $gw.autoscaling.minReplicas) (int $gw.autoscaling.maxReplicas)) -}}
{{- fail "gateway.autoscaling.minReplicas is larger than gateway.autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and $gw.keda.enabled (gt (int $gw.keda.minReplicaCount) (int $gw.keda.maxReplicaCount)) -}}
{{- fail "gateway.keda.minReplicaCount is larger than gateway.keda.maxReplicaCount" -}}
{{- end -}}
{{- if and $gw.autoscaling.enabled (not (dig "requests" "cpu" "" $gw.resources)) -}}
{{- fail "gateway.autoscaling targets a share of the CPU request: set gateway.resources.requests.cpu" -}}
{{- end -}}
{{- if and (eq $gw.backend "kubernetes") (or $gw.keda.enabled (and $gw.autoscaling.enabled (gt (int $gw.autoscaling.queueDepthPerPod) 0))) -}}
{{- fail "gateway.keda and gateway.autoscaling.queueDepthPerPod scale on kubeshot_queue_depth, the local backend's queue: with backend kubernetes captures wait in the operator, per policy, and more gateways do not drain them (scale on CPU instead)" -}}
{{- end -}}
{{- if and $gw.keda.enabled (not $gw.keda.serverAddress) -}}
{{- fail "gateway.keda.serverAddress is required with gateway.keda.enabled: the Prometheus KEDA queries for kubeshot_queue_depth" -}}
{{- end -}}
{{- if and (eq $gw.store.type "s3") .Values.operator.enabled (not $gw.store.s3.peers) (not (regexMatch "^https?://([0-9.]+|\\[[0-9a-fA-F:.]+\\])(:[0-9]+)?(/.*)?$" $gw.store.s3.endpoint)) -}}
{{- fail "gateway.store.s3.peers is required unless gateway.store.s3.endpoint is an IP address: capture pods upload straight to the bucket, and their NetworkPolicy opens only these peers (for example an ipBlock of the S3 server's addresses)" -}}
{{- end -}}
{{- if and (not $gw.httpsOnly) (or $gw.ingress.enabled (eq $gw.service.type "LoadBalancer")) -}}
{{- fail "gateway.httpsOnly=false with an Ingress or LoadBalancer would accept tokens over plain HTTP; keep httpsOnly and terminate TLS (gateway.tls or the Ingress with trustedProxies)" -}}
{{- end -}}
{{- end -}}
