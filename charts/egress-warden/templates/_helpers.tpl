{{/* The chart name, truncated to 63 characters because some Kubernetes name fields are limited to this. */}}
{{- define "egress-warden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-qualified name, truncated to 63 characters for the same reason. */}}
{{- define "egress-warden.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "egress-warden.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels of every resource of the chart. */}}
{{- define "egress-warden.labels" -}}
helm.sh/chart: {{ include "egress-warden.chart" . }}
{{ include "egress-warden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels. */}}
{{- define "egress-warden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "egress-warden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The warden image reference. */}}
{{- define "egress-warden.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The ConfigMap holding the allowlists (rendered by the chart, or an existing one). */}}
{{- define "egress-warden.allowlistsConfigMap" -}}
{{- default (printf "%s-allowlists" (include "egress-warden.fullname" .)) .Values.allowlists.existingConfigMap }}
{{- end }}

{{/* The allowlists' data, keyed by file name: bundled lists, then the inline rules. */}}
{{- define "egress-warden.allowlistsData" -}}
{{- range .Values.allowlists.bundled }}
{{- $file := printf "files/allowlists/%s.txt" . }}
{{- $text := $.Files.Get $file }}
{{- if not $text }}{{ fail (printf "allowlists.bundled: no bundled list %q (%s)" . $file) }}{{ end }}
{{ . }}.txt: |
{{ $text | trimSuffix "\n" | indent 2 }}
{{- end }}
{{- with .Values.allowlists.inline }}
inline.txt: |
  # From the chart values (allowlists.inline).
{{- range . }}
  {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* A checksum of the allowlists, so a change to them rolls the pods that include the sidecar. */}}
{{- define "egress-warden.allowlistsChecksum" -}}
{{- if .Values.allowlists.existingConfigMap }}
{{- .Values.allowlists.existingConfigMap | sha256sum }}
{{- else }}
{{- include "egress-warden.allowlistsData" . | sha256sum }}
{{- end }}
{{- end }}
