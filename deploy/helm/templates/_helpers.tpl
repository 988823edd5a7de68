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
{{- $inputs := dict "config" (include (print .Template.BasePath "/users/configmap.yaml") .) "auth" .Values.auth "database" .Values.externalDatabase "postgresql" (pick .Values.postgresql "enabled" "database" "username" "password") "tls" .Values.tls }}
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

{{/* --- TLS ------------------------------------------------------------------------------ */}}

{{/* Where the certificates come from: existingSecret, certManager or generated (the default). */}}
{{- define "meshdemo.tls.source" -}}
{{- if .Values.tls.existingSecret }}existingSecret
{{- else if .Values.tls.certManager.enabled }}certManager
{{- else }}generated
{{- end }}
{{- end }}

{{/* Contradictory TLS values fail the render with a message. */}}
{{- define "meshdemo.tls.check" -}}
{{- $tls := .Values.tls }}
{{- if and $tls.mutual (not $tls.enabled) }}
{{- fail "tls.mutual needs tls.enabled: set tls.enabled=true too" }}
{{- end }}
{{- if and $tls.existingSecret $tls.certManager.enabled }}
{{- fail "set one of tls.existingSecret and tls.certManager.enabled, not both" }}
{{- end }}
{{- if and $tls.existingClientSecret (not $tls.existingSecret) }}
{{- fail "tls.existingClientSecret needs tls.existingSecret (the other sources make the client certificate)" }}
{{- end }}
{{- if and $tls.enabled $tls.mutual $tls.existingSecret (not $tls.existingClientSecret) }}
{{- fail "tls.mutual with tls.existingSecret needs tls.existingClientSecret (the clients' certificate)" }}
{{- end }}
{{- $taken := list (int .Values.users.port) }}
{{- if .Values.metrics.enabled }}{{ $taken = append $taken (int .Values.metrics.port) }}{{ end }}
{{- if and $tls.enabled (has (int .Values.users.healthPort) $taken) }}
{{- fail (printf "users.healthPort %v is already the gRPC or the metrics port: pick another" .Values.users.healthPort) }}
{{- end }}
{{- end }}

{{- define "meshdemo.tls.serverSecretName" -}}
{{- default (printf "%s-tls" (include "meshdemo.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{- define "meshdemo.tls.clientSecretName" -}}
{{- default (printf "%s-tls-client" (include "meshdemo.fullname" .)) .Values.tls.existingClientSecret }}
{{- end }}

{{- define "meshdemo.tls.caSecretName" -}}
{{- printf "%s-tls-ca" (include "meshdemo.fullname" .) }}
{{- end }}

{{/* The server certificate's DNS names, as a YAML list: both Services, short and fully
qualified (the clients verify the host of the target they dial), the headless Service's
per-pod names, then tls.extraDnsNames. */}}
{{- define "meshdemo.tls.dnsNames" -}}
{{- $ns := .Release.Namespace }}
{{- $domain := .Values.clusterDomain }}
{{- $headless := include "meshdemo.users.headless" . }}
{{- $names := list }}
{{- range $service := list $headless (printf "%s-users" (include "meshdemo.fullname" .)) }}
{{- $names = concat $names (list $service (printf "%s.%s" $service $ns) (printf "%s.%s.svc" $service $ns) (printf "%s.%s.svc.%s" $service $ns $domain)) }}
{{- end }}
{{- $names = append $names (printf "*.%s.%s.svc.%s" $headless $ns $domain) }}
{{- concat $names .Values.tls.extraDnsNames | uniq | toYaml }}
{{- end }}

{{/* The server certificate's subject: the headless Service's fully qualified name. */}}
{{- define "meshdemo.tls.commonName" -}}
{{- printf "%s.%s.svc.%s" (include "meshdemo.users.headless" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* Mount points: the service's whole Secret directory (never subPath: a renewed Secret must
reach the running pod), and in the clients the CA and, with mutual TLS, their certificate. */}}
{{- define "meshdemo.tls.serverDir" -}}/etc/meshdemo/tls{{- end }}
{{- define "meshdemo.tls.caDir" -}}/etc/meshdemo/tls-ca{{- end }}
{{- define "meshdemo.tls.clientDir" -}}/etc/meshdemo/tls-client{{- end }}

{{/* MESH_TLS_* of a client pod (loadgen, helm test); empty without TLS. */}}
{{- define "meshdemo.tls.clientEnv" -}}
{{- if .Values.tls.enabled }}
- name: MESH_TLS_CA_FILE
  value: {{ include "meshdemo.tls.caDir" . }}/ca.crt
{{- if .Values.tls.mutual }}
- name: MESH_TLS_CLIENT_CERT_FILE
  value: {{ include "meshdemo.tls.clientDir" . }}/tls.crt
- name: MESH_TLS_CLIENT_KEY_FILE
  value: {{ include "meshdemo.tls.clientDir" . }}/tls.key
{{- end }}
{{- end }}
{{- end }}

{{- define "meshdemo.tls.clientMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  mountPath: {{ include "meshdemo.tls.caDir" . }}
  readOnly: true
{{- if .Values.tls.mutual }}
- name: tls-client
  mountPath: {{ include "meshdemo.tls.clientDir" . }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* The clients see only ca.crt of the server's Secret, never its key. */}}
{{- define "meshdemo.tls.clientVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  secret:
    secretName: {{ include "meshdemo.tls.serverSecretName" . }}
    items:
      - key: ca.crt
        path: ca.crt
    defaultMode: 288  # 0440: owner and fsGroup may read
{{- if .Values.tls.mutual }}
- name: tls-client
  secret:
    secretName: {{ include "meshdemo.tls.clientSecretName" . }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
    defaultMode: 288
{{- end }}
{{- end }}
{{- end }}
