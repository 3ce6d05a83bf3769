"""The cluster admin's policy on what an SFTJob's pods may use: pure, no API.

An SFTJob's ``spec.pod`` passes volumes, env, tolerations, a ServiceAccount and a priority class
through to pods the StatefulSet controller creates. The chart's ``policy`` values (handed to the
operator as JSON in SFT_ADMISSION_POLICY) say which of those a cluster allows; the admission
webhook refuses a job that asks for more at ``kubectl apply``, and the operator refuses it again
when it reconciles (a job created before the policy, or while a webhook was bypassed).

The defaults are the restrictive end: the volume types of the Pod Security Standards'
``restricted`` profile (no hostPath, no gitRepo, no network file systems named in the pod), no
``serviceAccountName`` (the job's pods run as the per-job ServiceAccount the operator creates),
no priority class, no toleration of the control plane's taints. Secrets through env stay
allowed: whoever may create the job may create pods in its namespace (the webhook checks that),
and pods may read any Secret of their namespace anyway.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import Field, ValidationError

from sft_core.wire import ApiModel
from sft_models.models import InvalidSpecError, SFTJob, SFTJobSpec, describe_validation_error, parse_job

ENV_POLICY = "SFT_ADMISSION_POLICY"
HOST_PATH = "hostPath"
# The Pod Security Standards' restricted profile: the volume types it allows
# (https://kubernetes.io/docs/concepts/security/pod-security-standards/, "Volume Types").
RESTRICTED_VOLUME_TYPES = (
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
)
# Taints only the control plane's nodes carry: a job's pods have no business there.
CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
WHERE = "by the cluster's sft-operator policy"


class AdmissionPolicy(ApiModel):
    """What spec.pod may ask for; the chart's `policy` values, key for key."""

    allowed_volume_types: list[str] = Field(
        default_factory=lambda: list(RESTRICTED_VOLUME_TYPES),
        description="Volume sources spec.pod.volumes may use (hostPath is governed by allowHostPath alone).",
    )
    allow_host_path: bool = Field(default=False, description="hostPath volumes: a node's files, as root.")
    allow_service_account_name: bool = Field(
        default=False, description="spec.pod.serviceAccountName: the pods run as a ServiceAccount the user names."
    )
    allowed_priority_classes: list[str] = Field(
        default_factory=list, description="PriorityClasses spec.pod.priorityClassName may name; empty: none."
    )
    allow_secret_env: bool = Field(default=True, description="spec.pod.env[].valueFrom.secretKeyRef.")
    denied_toleration_keys: list[str] = Field(
        default_factory=lambda: list(CONTROL_PLANE_TAINTS),
        description="Taint keys spec.pod.tolerations may not tolerate; while any is listed, a toleration "
        "without a key (it tolerates every taint) is refused too.",
    )


class PolicyError(ValueError):
    """SFT_ADMISSION_POLICY is not a policy; names the field."""


class PolicyViolation(InvalidSpecError):
    """A valid spec the admin policy refuses; each problem names the field and the policy value."""


def load_policy(text: str | None) -> AdmissionPolicy:
    """The policy from its JSON (SFT_ADMISSION_POLICY); unset or empty: the defaults."""
    if not text or not text.strip():
        return AdmissionPolicy()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{ENV_POLICY}: not JSON: {exc}") from None
    try:
        return AdmissionPolicy.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = describe_validation_error(exc, root="policy")
        raise PolicyError("; ".join(f"{path}: {message}" for path, message in problems)) from None


def policy_from_env() -> AdmissionPolicy:
    return load_policy(os.environ.get(ENV_POLICY))


def volume_sources(volume: Any) -> list[str]:
    """The source keys of a spec.pod.volumes entry (everything but its name); none means emptyDir,
    as the API server defaults it."""
    return sorted(volume.model_extra or {}) or ["emptyDir"]


def policy_problems(spec: SFTJobSpec, policy: AdmissionPolicy) -> list[tuple[str, str]]:
    """(spec path, message) for everything spec.pod asks for that the policy does not allow."""
    problems: list[tuple[str, str]] = []
    pod = spec.pod
    for i, volume in enumerate(pod.volumes):
        for source in volume_sources(volume):
            path = f"spec.pod.volumes[{i}].{source}"
            if source == HOST_PATH:
                if not policy.allow_host_path:
                    problems.append((path, f"host paths are not allowed {WHERE} (policy.allowHostPath)"))
            elif source not in policy.allowed_volume_types:
                allowed = ", ".join(policy.allowed_volume_types) or "none"
                problems.append(
                    (path, f"{source} volumes are not allowed {WHERE} (policy.allowedVolumeTypes: {allowed})")
                )
    if pod.service_account_name is not None and not policy.allow_service_account_name:
        problems.append(
            (
                "spec.pod.serviceAccountName",
                f"naming the pods' ServiceAccount is not allowed {WHERE} (policy.allowServiceAccountName); "
                "leave it unset: the job's pods run as a ServiceAccount of their own",
            )
        )
    if pod.priority_class_name is not None and pod.priority_class_name not in policy.allowed_priority_classes:
        allowed = ", ".join(policy.allowed_priority_classes) or "none"
        problems.append(
            (
                "spec.pod.priorityClassName",
                f"{pod.priority_class_name!r} is not allowed {WHERE} (policy.allowedPriorityClasses: {allowed})",
            )
        )
    if not policy.allow_secret_env:
        for i, var in enumerate(pod.env):
            value_from = (var.model_extra or {}).get("valueFrom")
            if isinstance(value_from, dict) and "secretKeyRef" in value_from:
                problems.append(
                    (
                        f"spec.pod.env[{i}].valueFrom.secretKeyRef",
                        f"Secrets in env are not allowed {WHERE} (policy.allowSecretEnv)",
                    )
                )
    if policy.denied_toleration_keys:
        for i, toleration in enumerate(pod.tolerations or []):
            key = toleration.get("key")
            if not key and toleration.get("operator") == "Exists":
                problems.append(
                    (
                        f"spec.pod.tolerations[{i}]",
                        f"a toleration without a key tolerates every taint, the control plane's too; not "
                        f"allowed {WHERE} (policy.deniedTolerationKeys)",
                    )
                )
            elif key in policy.denied_toleration_keys:
                problems.append(
                    (
                        f"spec.pod.tolerations[{i}].key",
                        f"tolerating {key} is not allowed {WHERE} (policy.deniedTolerationKeys)",
                    )
                )
    return problems


def parse_admitted_job(body: dict[str, Any], policy: AdmissionPolicy) -> SFTJob:
    """parse_job, then the policy: raises InvalidSpecError naming every field the models refuse,
    or PolicyViolation (one) naming every field the policy refuses."""
    job = parse_job(body)
    problems = policy_problems(job.spec, policy)
    if problems:
        raise PolicyViolation(problems)
    return job
