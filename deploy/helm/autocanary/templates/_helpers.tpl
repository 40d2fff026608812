{{- define "autocanary.labels" -}}
app.kubernetes.io/name: autocanary
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: autocanary
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "autocanary.selector" -}}
app.kubernetes.io/name: autocanary
app.kubernetes.io/component: daemon
{{- end -}}

{{- /* Deployment names per namespace, from the config's rollouts (canary default <stable>-canary). */ -}}
{{- define "autocanary.deploymentsByNamespace" -}}
{{- $config := .Values.config | fromYaml -}}
{{- $byNamespace := dict -}}
{{- range $config.rollouts -}}
{{- $names := get $byNamespace .namespace | default list -}}
{{- $names = append $names .stable -}}
{{- $names = append $names (.canary | default (printf "%s-canary" .stable)) -}}
{{- $_ := set $byNamespace .namespace $names -}}
{{- end -}}
{{- toYaml $byNamespace -}}
{{- end -}}

{{- /* Service names per namespace that blue/green rollouts switch (activeService, previewService). */ -}}
{{- define "autocanary.servicesByNamespace" -}}
{{- $config := .Values.config | fromYaml -}}
{{- $byNamespace := dict -}}
{{- range $config.rollouts -}}
{{- if .blueGreen -}}
{{- $names := get $byNamespace .namespace | default list -}}
{{- $names = append $names .blueGreen.activeService -}}
{{- $names = append $names .blueGreen.previewService -}}
{{- $_ := set $byNamespace .namespace $names -}}
{{- end -}}
{{- end -}}
{{- toYaml $byNamespace -}}
{{- end -}}

{{- /* HTTPRoute names per namespace that gateway rollouts set the weights of (gateway.httpRoute). */ -}}
{{- define "autocanary.routesByNamespace" -}}
{{- $config := .Values.config | fromYaml -}}
{{- $byNamespace := dict -}}
{{- range $config.rollouts -}}
{{- if .gateway -}}
{{- $namespace := .gateway.namespace | default .namespace -}}
{{- $names := get $byNamespace $namespace | default list -}}
{{- $names = append $names .gateway.httpRoute -}}
{{- $_ := set $byNamespace $namespace $names -}}
{{- end -}}
{{- end -}}
{{- toYaml $byNamespace -}}
{{- end -}}

{{- /* State ConfigMap names per namespace: <canary>.autocanary-state (canary default <stable>-canary). */ -}}
{{- define "autocanary.statesByNamespace" -}}
{{- $config := .Values.config | fromYaml -}}
{{- $byNamespace := dict -}}
{{- range $config.rollouts -}}
{{- $names := get $byNamespace .namespace | default list -}}
{{- $names = append $names (printf "%s.autocanary-state" (.canary | default (printf "%s-canary" .stable))) -}}
{{- $_ := set $byNamespace .namespace $names -}}
{{- end -}}
{{- toYaml $byNamespace -}}
{{- end -}}
