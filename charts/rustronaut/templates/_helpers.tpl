{{/* Name of the operator's objects (ServiceAccount, ClusterRole, Deployment, Lease). The
operator's code (operator/src/rbac.rs) uses the same fixed name, so it is not templated. */}}
{{- define "rustronaut.name" -}}rustronaut-operator{{- end -}}

{{/* The webhook's Service and MutatingWebhookConfiguration: fixed names too, because the
operator's flags default to them and its RBAC (rbac::WEBHOOK_CONFIG) names the latter. */}}
{{- define "rustronaut.webhook" -}}rustronaut-webhook{{- end -}}
{{- define "rustronaut.webhookConfig" -}}rustronaut-sidecar-injector{{- end -}}

{{- define "rustronaut.labels" -}}
app.kubernetes.io/name: rustronaut-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: rustronaut
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "rustronaut.selector" -}}
app.kubernetes.io/name: rustronaut-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rustronaut.tag" -}}{{ default .Chart.AppVersion .tag }}{{- end -}}
