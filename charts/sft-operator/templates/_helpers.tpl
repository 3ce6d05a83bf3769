{{/* The chart name, or nameOverride. */}}
{{- define "sft-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name: fullnameOverride, else <release>-<chart> (just <release>
when it already contains the chart name). 63 characters at most, a DNS label. */}}
{{- define "sft-operator.fullname" -}}
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

{{/* The leader-election Lease's name: leaderElection.leaseName, else the full name. */}}
{{- define "sft-operator.leaseName" -}}
{{- default (include "sft-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Labels that select the operator's pod; never change them after an install (a Deployment's
selector is immutable). */}}
{{- define "sft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sft-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sft-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: sft-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sft-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sft-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The namespaces the operator watches in "namespaces" mode, validated. */}}
{{- define "sft-operator.watchedNamespaces" -}}
{{- if eq .Values.watch.mode "namespaces" }}
{{- if not .Values.watch.namespaces }}
{{- fail "watch.namespaces must list at least one namespace when watch.mode is \"namespaces\"" }}
{{- end }}
{{- .Values.watch.namespaces | uniq | toJson }}
{{- else }}
{{- if .Values.watch.namespaces }}
{{- fail "watch.namespaces must be empty when watch.mode is \"cluster\" (set watch.mode: namespaces)" }}
{{- end }}
{{- list | toJson }}
{{- end }}
{{- end }}

{{/*
The operator's permissions: the same rules for the ClusterRole (cluster mode) and for each
namespace's Role (namespaces mode). Exactly what the operator's code calls, no wildcards; the
allow-list in tests/unit/test_helm_rbac.py must change with it, and docs/rbac.md says why
each rule exists.
*/}}
{{- define "sft-operator.rules" -}}
# SFTJobs: kopf lists and watches them (handlers and an index) and patches its annotations
# (progress and last-handled spec) onto them; the operator reads one before re-creating a
# deleted child (is the job itself being deleted?).
- apiGroups: ["finetune.dev"]
  resources: ["sftjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# The operator writes the status, and only the status, through the status subresource.
- apiGroups: ["finetune.dev"]
  resources: ["sftjobs/status"]
  verbs: ["patch"]
# Children carry an owner reference with blockOwnerDeletion; API servers that enforce
# OwnerReferencesPermissionEnforcement (e.g. OpenShift) require update on the owner's finalizers.
- apiGroups: ["finetune.dev"]
  resources: ["sftjobs/finalizers"]
  verbs: ["update"]
# Events on SFTJobs (phase changes, refusals).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# The admission webhook asks whether the user creating or changing an SFTJob may create the pods
# (and claim) the job makes: a LocalSubjectAccessReview in the job's namespace. It grants nothing.
- apiGroups: ["authorization.k8s.io"]
  resources: ["localsubjectaccessreviews"]
  verbs: ["create"]
# Each job's StatefulSet: read, created, updated when the spec's digest changes; watched (by
# label) to follow the job's pods.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "update"]
# Each job's headless Service (never changed once created; watched by label so that a deleted
# one is re-created) and checkpoint claim (its owner reference follows
# spec.checkpoints.deleteWithJob). Children go with their SFTJob through owner references: the
# operator deletes only pods (group restarts) and SFTJobs (ttlSecondsAfterFinished).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create"]
# list: an operator restart lists the job's claims, ServiceAccounts, Roles and RoleBindings once
# per namespace instead of reading each job's (these kinds are not watched).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "create", "update"]
# The job's training config (watched by label so that a deleted one is re-created); patch is not
# used on it but is what the per-job Role grants the status reporter on <job>-progress, and a
# Role can only grant what its creator holds.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
# The job's pods are watched (by label) to derive the phase; deleted only to restart a whole
# group (ranks left behind by a failed peer, or a stalled job).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "delete"]
# The status reporter's per-job identity: a ServiceAccount, and a Role + RoleBinding that allow
# only get/patch on the job's own <job>-progress ConfigMap (resourceNames).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "create", "update"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "create", "update"]
# Each job's NetworkPolicy (only the job's own pods reach its pods): listed at a restart, watched
# (by label) so that a deleted one is re-created, updated when its rules differ.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "update"]
# A gang job's PodGroup (spec.scheduling.gang): the scheduler-plugins coscheduling plugin's or
# Volcano's; update only adopts one a deleted job of the same name left or restores its spec.
# Granting it on a cluster without these CRDs is harmless.
- apiGroups: ["scheduling.x-k8s.io", "scheduling.volcano.sh"]
  resources: ["podgroups"]
  verbs: ["get", "create", "update"]
{{- end }}
