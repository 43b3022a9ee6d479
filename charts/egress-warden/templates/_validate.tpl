{{/* Stops a render with an actionable message when values contradict each other. */}}
{{- define "egress-warden.validate" -}}
{{- /* As strings: --set gives integers, values files floats, and uniq compares types too. */}}
{{- $ports := list (toString .Values.capture.transparentPort) (toString .Values.capture.dnsPort) (toString .Values.ports.http) (toString .Values.ports.admin) }}
{{- if .Values.ports.socks }}{{ $ports = append $ports (toString .Values.ports.socks) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "capture.transparentPort, capture.dnsPort and ports.* must all differ, got %v" $ports) }}
{{- end }}
{{- if and (eq .Values.onViolation "terminate") (not .Values.termination.killSandbox) }}
{{- fail "onViolation: terminate needs termination.killSandbox: true: the warden exits 77 on a violation, kubelet restarts a native sidecar that exits, and the sandbox would go on with a fresh warden; set killSandbox: true, or onViolation: deny" }}
{{- end }}
{{- if and (not .Values.allowlists.existingConfigMap) (not .Values.allowlists.bundled) (not .Values.allowlists.inline) }}
{{- fail "allowlists: set bundled, inline or existingConfigMap (an empty policy denies everything; use inline: [\"# deny all\"] if that is what you want)" }}
{{- end }}
{{- end }}
