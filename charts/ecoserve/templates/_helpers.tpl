{{- define "ecoserve.labels" -}}
app.kubernetes.io/name: ecoserve-operator
app.kubernetes.io/part-of: ecoserve
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ecoserve.selector" -}}
app.kubernetes.io/name: ecoserve-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ecoserve.name" -}}
{{ printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "ecoserve.image" -}}
{{ printf "%s:%s" .repository .tag }}
{{- end -}}

{{/* The operator's permissions: exactly what it reads and writes (operator/kube.py, kopf's own needs). */}}
{{- define "ecoserve.rules" -}}
- apiGroups: [ecoserve.io]
  resources: [macroinstances]
  verbs: [get, list, watch, patch, create, delete]  # create/delete: split and merge
- apiGroups: [ecoserve.io]
  resources: [macroinstances/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, patch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
