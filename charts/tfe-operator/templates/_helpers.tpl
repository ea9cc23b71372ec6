{{- define "tfe-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tfe-operator.selectorLabels" -}}
app.kubernetes.io/name: tfe-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tfe-operator.labels" -}}
{{ include "tfe-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tfe-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tfe-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tfe-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tfe-operator.namespaces" -}}
{{- if .Values.rbac.clusterWide -}}
{{- else if .Values.watchNamespaces -}}
{{- join "," .Values.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Namespaced permissions: what the operator makes, reads and proxies to. */}}
{{- define "tfe-operator.namespacedRules" -}}
- apiGroups: [tfe.dev]
  resources: [encryptedmodels]
  verbs: [get, list, watch, patch, update]
- apiGroups: [tfe.dev]
  resources: [encryptedmodels/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [apps]
  resources: [statefulsets, deployments]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods/proxy]
  verbs: [get]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, delete]
# Secrets: existence checks of model/token Secrets (metadata only; their data is never read),
# and the mesh PKI it owns (<model>-mesh-ca, read in full; <model>-mesh-<identity>, written by
# server-side apply and deleted with their share Job; with spec.mesh.issuerRef cert-manager writes
# them and the operator reads them in full by name, to judge what was issued, and adds itself as
# owner). No list/watch: it reads by name only.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch, delete]
# spec.mesh.issuerRef: one cert-manager Certificate per mesh identity (its Secret is read by name
# and gets the EncryptedModel as owner). Harmless where cert-manager is not installed.
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [get, create, patch, delete]
# ... and why one is not issued yet (the CertificateRequests cert-manager makes for them)
- apiGroups: [cert-manager.io]
  resources: [certificaterequests]
  verbs: [get, list]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
