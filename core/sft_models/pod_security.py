"""What keeps a job's pods within the restricted Pod Security Standard, and its token out of the
trainer: the securityContexts and the reporter's own projected ServiceAccount token.

The trainer runs model code (``trust_remote_code``), so it gets no API credential at all: the
pod mounts no token (automountServiceAccountToken false), and only the reporter gets one, through
a projected volume laid out exactly as the kubelet lays out the automatic one (token, ca.crt,
namespace), so the kubernetes client's in-cluster config reads it unchanged.
"""

from __future__ import annotations

from typing import Any

# The images' own user (USER 65532:65532 in both Dockerfiles): the containers run as it whatever
# the image says, so a root image fails to start instead of running as root.
RUN_AS_USER = 65532
RUN_AS_GROUP = 65532
# The kubelet chowns a volume to fsGroup only when its root is not already owned by it: a large
# claim resumed many times is walked once, not at every pod start.
FS_GROUP_CHANGE_POLICY = "OnRootMismatch"
RUNTIME_DEFAULT_SECCOMP = {"type": "RuntimeDefault"}

# The reporter's token volume, at the path the in-cluster config reads.
REPORTER_TOKEN_VOLUME = "reporter-token"
SERVICE_ACCOUNT_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
# One hour (the API's minimum is 10 minutes): the kubelet rewrites the file at 80 % of it and the
# client re-reads it every minute. A token copied out of the pod stops working within the hour.
TOKEN_EXPIRATION_SECONDS = 3600
# Published in every namespace by the controller-manager (root-ca-cert-publisher).
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"

# Pod annotations that would loosen a container's confinement (the restricted profile allows
# only these values): AppArmor's (still read by the kubelet) and the legacy seccomp ones.
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_POD_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_CONTAINER_ANNOTATION_PREFIX = "container.seccomp.security.alpha.kubernetes.io/"
CONFINED_PROFILES = ("runtime/default", "docker/default")
LOCALHOST_PROFILE_PREFIX = "localhost/"


def pod_security_context(fs_group: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "fsGroup": fs_group,
        "fsGroupChangePolicy": FS_GROUP_CHANGE_POLICY,
        "seccompProfile": dict(RUNTIME_DEFAULT_SECCOMP),
    }


def container_security_context(read_only_root: bool = False) -> dict[str, Any]:
    """Restricted for one container; repeated from the pod's so that each container stands alone
    (a reviewer, or an admission policy, reading one container sees all of it)."""
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": dict(RUNTIME_DEFAULT_SECCOMP),
    }
    if read_only_root:
        context["readOnlyRootFilesystem"] = True
    return context


def reporter_token_volume() -> dict[str, Any]:
    """The reporter's credential: a bound, expiring token of the pod's ServiceAccount."""
    return {
        "name": REPORTER_TOKEN_VOLUME,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_SECONDS}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
                        ]
                    }
                },
            ]
        },
    }


def reporter_token_mount() -> dict[str, Any]:
    return {"name": REPORTER_TOKEN_VOLUME, "mountPath": SERVICE_ACCOUNT_MOUNT_PATH, "readOnly": True}


def _confined(value: str) -> bool:
    return value in CONFINED_PROFILES or value.startswith(LOCALHOST_PROFILE_PREFIX)


def annotation_problems(annotations: dict[str, str], path: str) -> list[tuple[str, str]]:
    """(field, message) for each pod annotation that would undo the containers' confinement."""
    problems = []
    for key, value in annotations.items():
        legacy = key == SECCOMP_POD_ANNOTATION or key.startswith(SECCOMP_CONTAINER_ANNOTATION_PREFIX)
        if (legacy or key.startswith(APPARMOR_ANNOTATION_PREFIX)) and not _confined(value):
            problems.append(
                (
                    f"{path}[{key}]",
                    f"{value!r} would lift the pods' confinement: only runtime/default "
                    "or a localhost/ profile (the pods run the restricted profile)",
                )
            )
    return problems
