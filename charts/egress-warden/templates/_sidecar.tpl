{{/*
Named templates to include in your own pod spec (see the chart README):

  metadata:
    labels:      {{- include "egress-warden.podLabels" . | nindent 6 }}
    annotations: {{- include "egress-warden.podAnnotations" . | nindent 6 }}
  spec:
    {{- include "egress-warden.podSpec" . | nindent 4 }}
    initContainers: {{- include "egress-warden.initContainers" . | nindent 6 }}
    containers: [ your sandbox container(s) ]
    volumes: {{- include "egress-warden.volumes" . | nindent 6 }}

initContainers holds, in order: the capture init container (installs the rules, NET_ADMIN
only) and the warden as a native sidecar (restartPolicy: Always, Kubernetes >= 1.29), whose
startup probe holds the sandbox back until capture is proven.
*/}}

{{/* Pod-level fields: a shared process namespace, so the warden can kill the sandbox. */}}
{{- define "egress-warden.podSpec" -}}
shareProcessNamespace: {{ .Values.termination.killSandbox }}
{{- end }}

{{/* Labels for the pod template (the PodMonitor selects on them). */}}
{{- define "egress-warden.podLabels" -}}
egress-warden.io/sidecar: "true"
{{- end }}

{{/* Annotations for the pod template: the allowlists checksum, and scrape hints unless a
PodMonitor scrapes the pods (both would scrape every pod twice). */}}
{{- define "egress-warden.podAnnotations" -}}
checksum/egress-warden-allowlists: {{ include "egress-warden.allowlistsChecksum" . }}
{{- if and .Values.metrics.annotations (not .Values.metrics.podMonitor.enabled) }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.admin | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The hardened security context shared by the warden's containers (root for its capabilities). */}}
{{- define "egress-warden.securityContext" -}}
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The capture flags, identical for init and sidecar: the rules and the listeners agree. */}}
{{- define "egress-warden.captureArgs" -}}
- --transparent-port={{ .Values.capture.transparentPort }}
- --dns-port={{ .Values.capture.dnsPort }}
- --mark={{ .Values.capture.mark }}
{{- end }}

{{/* initContainers: the capture init container, then the warden sidecar. */}}
{{- define "egress-warden.initContainers" -}}
- name: egress-warden-init
  image: {{ include "egress-warden.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - init
    {{- include "egress-warden.captureArgs" . | nindent 4 }}
    - --admin-port={{ .Values.ports.admin }}
  securityContext:
    {{- include "egress-warden.securityContext" . | nindent 4 }}
    capabilities:
      drop: [ALL]
      add: [NET_ADMIN]
  resources:
    {{- toYaml .Values.initResources | nindent 4 }}
  terminationMessagePolicy: FallbackToLogsOnError
- name: egress-warden
  image: {{ include "egress-warden.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  restartPolicy: Always
  args:
    - serve
    - --capture=verify
    {{- include "egress-warden.captureArgs" . | nindent 4 }}
    - --allowlist=/etc/egress-warden/allowlists
    - --http-listen=127.0.0.1:{{ .Values.ports.http }}
    - --socks-listen={{ if .Values.ports.socks }}127.0.0.1:{{ .Values.ports.socks }}{{ else }}off{{ end }}
    - --admin-listen=0.0.0.0:{{ .Values.ports.admin }}
    - --on-violation={{ .Values.onViolation }}
    - --termination-drain={{ .Values.terminationDrain }}
    - --audit-log=-
    - --summary-file=/run/egress-warden/summary.json
    - --ready-file=/run/egress-warden/ready.json
    - --termination-message-path=/dev/termination-log
    - --dns-deny-rcode={{ .Values.dns.denyRcode }}
    - --dns-types={{ join "," .Values.dns.types }}
    - --dns-rate={{ .Values.dns.rate }}
    {{- with .Values.dns.upstream }}
    - --dns-upstream={{ . }}
    {{- end }}
    {{- if .Values.dns.denialIsViolation }}
    - --dns-denial-is-violation
    {{- end }}
    {{- if .Values.termination.killSandbox }}
    - --terminate-pid-namespace
    {{- end }}
    {{- if .Values.malformedIsViolation }}
    - --malformed-is-violation
    {{- end }}
    {{- with .Values.maxUploadBytes }}
    - --max-upload-bytes={{ . }}
    {{- end }}
  env:
    - name: EGRESS_WARDEN_RUN_ID
      valueFrom:
        fieldRef:
          fieldPath: {{ .Values.runId.fieldPath }}
  ports:
    - name: ew-metrics
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /readyz
      port: ew-metrics
    periodSeconds: 1
    failureThreshold: 60
  readinessProbe:
    httpGet:
      path: /readyz
      port: ew-metrics
    periodSeconds: 5
  livenessProbe:
    httpGet:
      path: /healthz
      port: ew-metrics
    periodSeconds: 10
  securityContext:
    {{- include "egress-warden.securityContext" . | nindent 4 }}
    capabilities:
      drop: [ALL]
      add:
        - NET_ADMIN
        {{- if .Values.termination.killSandbox }}
        - KILL
        {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  volumeMounts:
    - name: egress-warden-allowlists
      mountPath: /etc/egress-warden/allowlists
      readOnly: true
    - name: egress-warden-run
      mountPath: /run/egress-warden
  terminationMessagePath: /dev/termination-log
  terminationMessagePolicy: FallbackToLogsOnError
{{- end }}

{{/* Volumes the warden's containers mount. */}}
{{- define "egress-warden.volumes" -}}
- name: egress-warden-allowlists
  configMap:
    name: {{ include "egress-warden.allowlistsConfigMap" . }}
- name: egress-warden-run
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- end }}
