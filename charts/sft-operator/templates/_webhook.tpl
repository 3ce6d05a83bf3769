{{/* The admission webhook's names (templates/webhook.yaml, the Deployment's mount). */}}
{{- define "sft-operator.webhookServiceName" -}}
{{- include "sft-operator.fullname" . | trunc 55 | trimSuffix "-" }}-webhook
{{- end }}

{{- define "sft-operator.webhookSecretName" -}}
{{- if .Values.webhook.tls.existingSecret }}
{{- .Values.webhook.tls.existingSecret }}
{{- else }}
{{- include "sft-operator.fullname" . | trunc 51 | trimSuffix "-" }}-webhook-tls
{{- end }}
{{- end }}

{{/* Where the operator reads the serving certificate (tls.crt, tls.key). */}}
{{- define "sft-operator.webhookCertDir" -}}
/etc/sft-operator/webhook
{{- end }}

{{/* The path the operator serves the webhook on: kopf's handler id (admission.WEBHOOK_ID). */}}
{{- define "sft-operator.webhookPath" -}}
/validate-sftjobs
{{- end }}
