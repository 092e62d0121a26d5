{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "pdserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name; components append -router, -prefill… so it stays ≤ 40. */}}
{{- define "pdserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* (dict "ctx" $ "component" "router") → <fullname>-router */}}
{{- define "pdserve.componentName" -}}
{{- printf "%s-%s" (include "pdserve.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pdserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pdserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pdserve.rayHeadAddress" -}}
{{- printf "%s:%d" (include "pdserve.componentName" (dict "ctx" . "component" "ray-head")) (int .Values.ray.ports.gcs) -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------- */}}

{{/* The release's pods: what the NetworkPolicies select by. */}}
{{- define "pdserve.instanceLabels" -}}
app.kubernetes.io/name: {{ include "pdserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pdserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pdserve.instanceLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pdserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* (dict "ctx" $ "component" "router") */}}
{{- define "pdserve.selectorLabels" -}}
{{ include "pdserve.instanceLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pdserve.componentLabels" -}}
{{ include "pdserve.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image ------------------------------------------------------------------------------ */}}

{{- define "pdserve.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "pdserve.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Security: the restricted Pod Security Standard ---------------------------------------- */}}

{{- define "pdserve.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.securityContext.runAsUser }}
  runAsGroup: {{ .Values.securityContext.runAsGroup }}
  fsGroup: {{ .Values.securityContext.fsGroup }}
  fsGroupChangePolicy: OnRootMismatch
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "pdserve.containerSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.securityContext.runAsUser }}
  runAsGroup: {{ .Values.securityContext.runAsGroup }}
  allowPrivilegeEscalation: false
  privileged: false
  readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/*
What every pdserve pod spec shares: no API token (the controller overrides it), no service
links — a Service named <release>-router would otherwise put PDSERVE_ROUTER_PORT=tcp://… into
the environment, which the router's settings (env prefix PDSERVE_ROUTER_) would read as its port.
*/}}
{{- define "pdserve.podCommon" -}}
enableServiceLinks: false
automountServiceAccountToken: false
serviceAccountName: {{ include "pdserve.serviceAccountName" . }}
{{ include "pdserve.podSecurityContext" . }}
{{- include "pdserve.imagePullSecrets" . }}
{{- end -}}

{{/* Writable paths under a read-only root: /tmp and the home directory (caches, Ray). */}}
{{- define "pdserve.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- end -}}

{{- define "pdserve.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/pdserve
{{- end -}}

{{- define "pdserve.homeEnv" -}}
- name: HOME
  value: /home/pdserve
- name: XDG_CACHE_HOME
  value: /home/pdserve/.cache
- name: TRITON_CACHE_DIR
  value: /home/pdserve/.cache/triton
{{- end -}}

{{/* Secrets → environment (always secretKeyRef) -------------------------------------------- */}}

{{- define "pdserve.redisSecretName" -}}
{{- if .Values.redis.internal.enabled -}}
{{- include "pdserve.componentName" (dict "ctx" . "component" "redis-url") -}}
{{- else if .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret -}}
{{- else -}}
{{- include "pdserve.componentName" (dict "ctx" . "component" "redis-url") -}}
{{- end -}}
{{- end -}}

{{- define "pdserve.redisSecretKey" -}}
{{- if or .Values.redis.internal.enabled (not .Values.redis.external.existingSecret) -}}
url
{{- else -}}
{{- .Values.redis.external.existingSecretKey -}}
{{- end -}}
{{- end -}}

{{- define "pdserve.redisEnv" -}}
- name: PDSERVE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pdserve.redisSecretName" . }}
      key: {{ include "pdserve.redisSecretKey" . }}
{{- end -}}

{{- define "pdserve.internalTokenEnv" -}}
{{- with .Values.auth.internal.existingSecret -}}
- name: PDSERVE_INTERNAL_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.auth.internal.key }}
{{- end -}}
{{- end -}}

{{/* Ray's token auth: shared by the head and every worker, or explicitly off. */}}
{{- define "pdserve.rayAuthEnv" -}}
{{- if .Values.ray.auth.existingSecret -}}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.ray.auth.existingSecret }}
      key: {{ .Values.ray.auth.key }}
{{- else -}}
- name: RAY_AUTH_MODE
  value: disabled
{{- end }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- end -}}

{{/*
(dict "ctx" $ "configMap" <name> "file" <key> "tls" (list <edge>…)) → the /etc/pdserve volume:
the component's config file, for a TLS Redis its CA at redis-tls/<key>, and the Secrets of the
TLS edges named in "tls" that are on (one projected volume: no nested mounts).
*/}}
{{- define "pdserve.configVolume" -}}
- name: config
  projected:
    sources:
      - configMap:
          name: {{ .configMap }}
          items:
            - {key: {{ .file }}, path: {{ .file }}}
      {{- include "pdserve.tlsSources" (dict "ctx" .ctx "edges" (.tls | default list)) | nindent 6 }}
      {{- with .ctx.Values.redis.external.tls.caSecret }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $.ctx.Values.redis.external.tls.caKey }}
              path: {{ printf "redis-tls/%s" $.ctx.Values.redis.external.tls.caKey }}
      {{- end }}
{{- end -}}

{{/* TLS from Secrets (values `tls`) ------------------------------------------------------ */}}

{{/* (dict "ctx" $ "edge" "public"|"internal") → the keys of its Secret that are mounted. */}}
{{- define "pdserve.tlsKeys" -}}
{{- if or (eq .edge "internal") (index .ctx.Values.tls .edge).requireClientCert -}}
tls.crt tls.key ca.crt
{{- else -}}
tls.crt tls.key
{{- end -}}
{{- end -}}

{{/* (dict "ctx" $ "edges" (list …)) → projected sources: each edge's Secret at tls/<edge>/. */}}
{{- define "pdserve.tlsSources" -}}
{{- range $edge := .edges }}
{{- with (index $.ctx.Values.tls $edge).secretName }}
- secret:
    name: {{ . }}
    items:
      {{- range $key := splitList " " (include "pdserve.tlsKeys" (dict "ctx" $.ctx "edge" $edge)) }}
      - {key: {{ $key }}, path: {{ printf "tls/%s/%s" $edge $key }}}
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
(dict "ctx" $ "edge" …) → the edge's config section (pdserve/tls.py TLSConfig) at the mounted
paths; empty when the edge is off. The internal one is mTLS on every side.
*/}}
{{- define "pdserve.tlsSection" -}}
{{- if (index .ctx.Values.tls .edge).secretName -}}
{{- $dir := printf "/etc/pdserve/tls/%s" .edge -}}
cert_file: {{ $dir }}/tls.crt
key_file: {{ $dir }}/tls.key
{{- if contains "ca.crt" (include "pdserve.tlsKeys" .) }}
ca_file: {{ $dir }}/ca.crt
require_client_cert: true
{{- end }}
{{- with (index .ctx.Values.tls .edge).serverName }}
server_name: {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* (dict "ctx" $ "edge" …) → the port a pod serving that edge is probed on: the plaintext
health port when the edge is TLS, else its gRPC port ("port"). */}}
{{- define "pdserve.probePort" -}}
{{- if (index .ctx.Values.tls .edge).secretName -}}
{{- .ctx.Values.ports.health -}}
{{- else -}}
{{- .port -}}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy peers ------------------------------------------------------------ */}}

{{/* (dict "ctx" $ "components" (list …)) → a `from` entry: those pods of this release. */}}
{{- define "pdserve.peer" -}}
- podSelector:
    matchExpressions:
      - {key: app.kubernetes.io/name, operator: In, values: [{{ include "pdserve.name" .ctx | quote }}]}
      - {key: app.kubernetes.io/instance, operator: In, values: [{{ .ctx.Release.Name | quote }}]}
      - {key: app.kubernetes.io/component, operator: In, values: {{ toJson .components }}}
{{- end -}}
{{/* A `from` entry: the Prometheus pods (networkPolicy.metrics*Selector). */}}
{{- define "pdserve.metricsPeer" -}}
{{- $np := .Values.networkPolicy -}}
- namespaceSelector:{{ if $np.metricsNamespaceSelector }}{{ toYaml $np.metricsNamespaceSelector | nindent 4 }}{{ else }} {}{{ end }}
  podSelector:{{ if $np.metricsPodSelector }}{{ toYaml $np.metricsPodSelector | nindent 4 }}{{ else }} {}{{ end }}
{{- end -}}

{{/* Probes --------------------------------------------------------------------------- */}}

{{/* (dict "probe" <values probe> "port" <int>) */}}
{{- define "pdserve.probe" -}}
{{- if eq .probe.type "grpc" -}}
grpc:
  port: {{ .port }}
  service: {{ .probe.service | quote }}
{{- else -}}
tcpSocket:
  port: {{ .port }}
{{- end }}
initialDelaySeconds: {{ .probe.initialDelaySeconds | default 0 }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
successThreshold: 1
{{- end -}}

{{/* (dict "probes" <values probes> "port" <int>) */}}
{{- define "pdserve.probes" -}}
startupProbe:
  {{- include "pdserve.probe" (dict "probe" .probes.startup "port" .port) | nindent 2 }}
readinessProbe:
  {{- include "pdserve.probe" (dict "probe" .probes.readiness "port" .port) | nindent 2 }}
livenessProbe:
  {{- include "pdserve.probe" (dict "probe" .probes.liveness "port" .port) | nindent 2 }}
{{- end -}}

{{/* Pool sizes --------------------------------------------------------------------------- */}}

{{/*
(dict "ctx" $ "pool" "prefill"|"decode") → the pool's replicas. With pools.ratio P:D and
pools.total N, prefill gets round(N·P/(P+D)) with a half rounded down, i.e.
(2·N·P + P + D − 1) div (2·(P+D)), clamped to 1 … N−1; decode gets the rest
(pdserve/config.py split_ratio).
*/}}
{{- define "pdserve.poolReplicas" -}}
{{- $pools := .ctx.Values.pools -}}
{{- if $pools.ratio -}}
{{- $ratio := toString $pools.ratio -}}
{{- if not (regexMatch "^[0-9]+:[0-9]+$" $ratio) -}}
{{- fail (printf "pools.ratio: expected prefill:decode in whole numbers, e.g. \"1:3\"; got %q" $ratio) -}}
{{- end -}}
{{- $parts := splitList ":" $ratio -}}
{{- $p := atoi (index $parts 0) -}}
{{- $d := atoi (index $parts 1) -}}
{{- if or (lt $p 1) (lt $d 1) -}}
{{- fail (printf "pools.ratio: both sides must be ≥ 1 (e.g. \"1:3\"); got %q" $ratio) -}}
{{- end -}}
{{- if not $pools.total -}}
{{- fail (printf "pools.total: needed with pools.ratio %q (the number of workers to split)" $ratio) -}}
{{- end -}}
{{- $n := int $pools.total -}}
{{- if lt $n 2 -}}
{{- fail (printf "pools.total: a ratio needs ≥ 2 workers (1 of each); got %d" $n) -}}
{{- end -}}
{{- $prefill := div (sub (add (mul 2 $n $p) $p $d) 1) (mul 2 (add $p $d)) -}}
{{- $prefill = min (max $prefill 1) (sub $n 1) -}}
{{- if eq .pool "prefill" -}}{{ $prefill }}{{- else -}}{{ sub $n $prefill }}{{- end -}}
{{- else -}}
{{- if $pools.total -}}
{{- fail "pools.total: needs pools.ratio to split it by (e.g. \"1:3\")" -}}
{{- end -}}
{{- index .ctx.Values .pool "replicas" | int -}}
{{- end -}}
{{- end -}}

{{/* Checks that no schema can express, run once by the router's template. */}}
{{- define "pdserve.validate" -}}
{{- $redis := .Values.redis -}}
{{- if $redis.internal.enabled -}}
{{- if or $redis.external.url $redis.external.existingSecret -}}
{{- fail "redis: give redis.external.url/existingSecret or redis.internal.enabled=true, not both" -}}
{{- end -}}
{{- else -}}
{{- if and (not $redis.external.url) (not $redis.external.existingSecret) -}}
{{- fail "redis.external.url or redis.external.existingSecret is required (a Secret holding the Redis URL); set redis.internal.enabled=true for an evaluation Redis in the chart" -}}
{{- end -}}
{{- if and $redis.external.url $redis.external.existingSecret -}}
{{- fail "redis.external: give url or existingSecret, not both" -}}
{{- end -}}
{{- if regexMatch "^rediss?://[^/]*@" $redis.external.url -}}
{{- fail "redis.external.url carries credentials: put the URL in a Secret and name it in redis.external.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- range $pool := list "prefill" "decode" -}}
{{- $v := index $.Values $pool -}}
{{- if le (int $v.terminationGracePeriodSeconds) (int $v.drainTimeoutSeconds) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must exceed %s.drainTimeoutSeconds (%d): the preStop drain runs inside the grace period" $pool (int $v.terminationGracePeriodSeconds) $pool (int $v.drainTimeoutSeconds)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.keda.enabled .Values.controller.enabled .Values.controller.apply -}}
{{- fail "keda.enabled and controller.apply both size the pools: choose one" -}}
{{- end -}}
{{- if gt (int .Values.ray.ports.minWorker) (int .Values.ray.ports.maxWorker) -}}
{{- fail "ray.ports.minWorker must not exceed ray.ports.maxWorker" -}}
{{- end -}}
{{- end -}}
