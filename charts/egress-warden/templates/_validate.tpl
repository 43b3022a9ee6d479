{{/* Stops a render with an actionable message when values contradict each other. */}}
{{- define "egress-warden.validate" -}}
{{- /* As strings: --set gives integers, values files floats, and uniq compares types too. */}}
{{- $ports := list (toString .Values.capture.transparentPort) (toString .Values.capture.dnsPort) (toString .Values.ports.http) (toString .Values.ports.admin) }}
{{- if .Values.ports.socks }}{{ $ports = append $ports (toString .Values.ports.socks) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "capture.transparentPort, capture.dnsPort and ports.* must all differ, got %v" $ports) }}
{{- end }}
{{- if and (not .Values.allowlists.existingConfigMap) (not .Values.allowlists.bundled) (not .Values.allowlists.inline) }}
{{- fail "allowlists: set bundled, inline or existingConfigMap (an empty policy denies everything; use inline: [\"# deny all\"] if that is what you want)" }}
{{- end }}
{{- end }}
