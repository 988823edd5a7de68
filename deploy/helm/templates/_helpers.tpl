{{/*
Names, labels and the pieces every workload shares. Selectors use only name,
instance and component: the labels that never change between upgrades.
*/}}

{{- define "meshdemo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release name when it contains the chart name, else <release>-<chart>. */}}
{{- define "meshdemo.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "meshdemo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "users"). */}}
{{- define "meshdemo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshdemo.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every label of one component's objects; same argument as selectorLabels. */}}
{{- define "meshdemo.labels" -}}
helm.sh/chart: {{ include "meshdemo.chart" .ctx }}
{{ include "meshdemo.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: meshdemo
{{- end }}

{{/* The release's pods, whatever their component (for NetworkPolicies). */}}
{{- define "meshdemo.releaseSelector" -}}
app.kubernetes.io/name: {{ include "meshdemo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The project image: image.reference when set, else repository:tag (tag defaults to appVersion). */}}
{{- define "meshdemo.image" -}}
{{- if .Values.image.reference }}
{{- .Values.image.reference }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Pod security context of the project image: its numeric non-root user. */}}
{{- define "meshdemo.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context; call with the numeric user id. */}}
{{- define "meshdemo.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Names of the Services and Secrets other templates refer to. */}}
{{- define "meshdemo.users.headless" -}}
{{- printf "%s-users-headless" (include "meshdemo.fullname" .) }}
{{- end }}

{{- define "meshdemo.jaeger.name" -}}
{{- printf "%s-jaeger" (include "meshdemo.fullname" .) }}
{{- end }}

{{- define "meshdemo.postgresql.name" -}}
{{- printf "%s-postgresql" (include "meshdemo.fullname" .) }}
{{- end }}

{{- define "meshdemo.auth.secretName" -}}
{{- default (printf "%s-auth" (include "meshdemo.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "meshdemo.auth.secretKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}jwt-secret{{ end }}
{{- end }}

{{/* The OTLP endpoint, or nothing: with Jaeger off and none given, nothing points at a collector. */}}
{{- define "meshdemo.otlpEndpoint" -}}
{{- if .Values.tracing.otlpEndpoint }}
{{- .Values.tracing.otlpEndpoint }}
{{- else if .Values.jaeger.enabled }}
{{- printf "http://%s:4317" (include "meshdemo.jaeger.name" .) }}
{{- end }}
{{- end }}

{{/* The Secret and key that hold the store URL (MESH_STORE); fails on a contradictory choice. */}}
{{- define "meshdemo.store.secretName" -}}
{{- include "meshdemo.store.check" . }}
{{- if .Values.postgresql.enabled }}
{{- include "meshdemo.postgresql.name" . }}
{{- else if .Values.externalDatabase.existingSecret }}
{{- .Values.externalDatabase.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "meshdemo.fullname" .) }}
{{- end }}
{{- end }}

{{- define "meshdemo.store.secretKey" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.existingSecret }}
{{- .Values.externalDatabase.existingSecretKey }}
{{- else }}url{{ end }}
{{- end }}

{{- define "meshdemo.store.check" -}}
{{- $ext := .Values.externalDatabase }}
{{- if .Values.postgresql.enabled }}
{{- if or $ext.url $ext.existingSecret }}
{{- fail "externalDatabase is set but postgresql.enabled is true: disable postgresql to use an external database" }}
{{- end }}
{{- else if and $ext.url $ext.existingSecret }}
{{- fail "set one of externalDatabase.url and externalDatabase.existingSecret, not both" }}
{{- else if not (or $ext.url $ext.existingSecret) }}
{{- fail "postgresql.enabled is false: set externalDatabase.url or externalDatabase.existingSecret" }}
{{- end }}
{{- end }}

{{/* OTEL_* variables of a process; call with (dict "ctx" $ "service" "meshdemo-loadgen"). */}}
{{- define "meshdemo.otelEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
{{- with include "meshdemo.otlpEndpoint" .ctx }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .ctx.Values.tracing.sampler | quote }}
{{- with .ctx.Values.tracing.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.namespace.name={{ .ctx.Release.Namespace }},k8s.pod.name=$(K8S_POD_NAME),k8s.node.name=$(K8S_NODE_NAME),service.instance.id=$(K8S_POD_NAME)"
{{- end }}

{{/* MESH_AUTH_SECRET from the JWT Secret (clients mint their tokens with it). */}}
{{- define "meshdemo.authSecretEnv" -}}
- name: MESH_AUTH_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "meshdemo.auth.secretName" . }}
      key: {{ include "meshdemo.auth.secretKey" . }}
{{- end }}

{{/* Scheduling keys shared by the workloads; call with the component's values. */}}
{{- define "meshdemo.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* An emptyDir for /tmp: the root file system is read-only. */}}
{{- define "meshdemo.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "meshdemo.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* The checksum that rolls the users pods when their configuration or secret inputs change.
The generated secrets are left out: they are random offline and never change in a cluster. */}}
{{- define "meshdemo.users.checksum" -}}
{{- $inputs := dict "config" (include (print .Template.BasePath "/users/configmap.yaml") .) "auth" .Values.auth "database" .Values.externalDatabase "postgresql" (pick .Values.postgresql "enabled" "database" "username" "password") }}
{{- toJson $inputs | sha256sum }}
{{- end }}

{{/* The headless Service as a client target; call with (dict "ctx" $ "resolver" "k8s"|"dns"). */}}
{{- define "meshdemo.clientTarget" -}}
{{- $ctx := .ctx }}
{{- $host := printf "%s.%s" (include "meshdemo.users.headless" $ctx) $ctx.Release.Namespace }}
{{- if eq .resolver "k8s" }}
{{- printf "k8s:///%s:%v" $host $ctx.Values.users.port }}
{{- else }}
{{- printf "dns:///%s.svc.%s:%v" $host $ctx.Values.clusterDomain $ctx.Values.users.port }}
{{- end }}
{{- end }}
