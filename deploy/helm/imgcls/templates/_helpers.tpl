{{- define "imgcls.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "imgcls.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "imgcls.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "imgcls.modelsPvc" -}}
{{- default (printf "%s-models" (include "imgcls.fullname" .)) .Values.modelRepository.pvc.existingClaim -}}
{{- end -}}

{{- define "imgcls.modelRepositoryPath" -}}
{{- if eq .Values.modelRepository.source "objectStore" -}}
{{- required "modelRepository.url is required when source is objectStore" .Values.modelRepository.url -}}
{{- else -}}
/models
{{- end -}}
{{- end -}}
