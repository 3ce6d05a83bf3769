"""The restricted Pod Security Standard as a checker: each rule as the Kubernetes docs list it
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, the baseline rules and
the restricted ones on top, current policy version), applied to a pod template.

restricted_violations returns one "path: why" per violation, with the path of the offending
field in the pod template ([] for a restricted pod).
"""

from __future__ import annotations

from typing import Any

# Restricted: "Volume Types" (every other type, hostPath included, is refused).
ALLOWED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
VOLUME_FIELDS_NOT_SOURCES = frozenset({"name"})
# Baseline: "Sysctls" (the safe set).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
# Baseline: "SELinux".
ALLOWED_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
# Restricted: "Capabilities" (may add only this one).
ALLOWED_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
CONFINED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})
CONFINED_APPARMOR = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def _containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"spec.{kind}[{i}]", c) for kind in CONTAINER_LISTS for i, c in enumerate(spec.get(kind) or [])]


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """Every way the pod template breaks the restricted profile, as "path: why"."""
    spec = template.get("spec") or {}
    pod_ctx = spec.get("securityContext") or {}
    out: list[str] = []

    def bad(path: str, why: str) -> None:
        out.append(f"{path}: {why}")

    # Baseline: Host Namespaces.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad(f"spec.{field}", "host namespaces are not allowed")
    # Baseline: HostProcess (pod level).
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        bad("spec.securityContext.windowsOptions.hostProcess", "must be unset or false")
    # Restricted: Volume Types (covers baseline's HostPath Volumes).
    for i, volume in enumerate(spec.get("volumes") or []):
        for source in set(volume) - VOLUME_FIELDS_NOT_SOURCES - ALLOWED_VOLUME_TYPES:
            bad(f"spec.volumes[{i}].{source}", "volume type not allowed")
    # Baseline: Sysctls.
    for i, sysctl in enumerate(pod_ctx.get("sysctls") or []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad(f"spec.securityContext.sysctls[{i}].name", f"{sysctl.get('name')} is not a safe sysctl")
    # Baseline: AppArmor (annotations and fields).
    for key, value in ((template.get("metadata") or {}).get("annotations") or {}).items():
        if (
            key.startswith(APPARMOR_ANNOTATION_PREFIX)
            and value != "runtime/default"
            and not value.startswith("localhost/")
        ):
            bad(f"metadata.annotations[{key}]", f"AppArmor profile {value!r} is not allowed")
    # Restricted: Running as Non-root, Running as Non-root user, Seccomp (pod level; a container
    # may instead set runAsNonRoot and seccompProfile itself).
    pod_non_root = pod_ctx.get("runAsNonRoot") is True
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_ctx.get("runAsNonRoot") is False:
        bad("spec.securityContext.runAsNonRoot", "must be true")
    if pod_ctx.get("runAsUser") == 0:
        bad("spec.securityContext.runAsUser", "must not be 0")
    if pod_seccomp is not None and pod_seccomp not in CONFINED_SECCOMP:
        bad("spec.securityContext.seccompProfile.type", f"{pod_seccomp} is not allowed")
    _check_selinux_and_apparmor(pod_ctx, "spec.securityContext", bad)

    for path, container in _containers(spec):
        ctx = container.get("securityContext") or {}
        p = f"{path}.securityContext"
        # Baseline: Privileged, HostProcess, Host Ports, /proc Mount Type.
        if ctx.get("privileged"):
            bad(f"{p}.privileged", "must be unset or false")
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            bad(f"{p}.windowsOptions.hostProcess", "must be unset or false")
        for j, port in enumerate(container.get("ports") or []):
            if port.get("hostPort"):
                bad(f"{path}.ports[{j}].hostPort", "host ports are not allowed")
        if ctx.get("procMount") not in (None, "Default"):
            bad(f"{p}.procMount", "must be unset or Default")
        _check_selinux_and_apparmor(ctx, p, bad)
        # Restricted: Privilege Escalation.
        if ctx.get("allowPrivilegeEscalation") is not False:
            bad(f"{p}.allowPrivilegeEscalation", "must be false")
        # Restricted: Running as Non-root.
        if ctx.get("runAsNonRoot") is False or (not pod_non_root and ctx.get("runAsNonRoot") is not True):
            bad(f"{p}.runAsNonRoot", "must be true (here or in the pod's securityContext)")
        # Restricted: Running as Non-root user.
        if ctx.get("runAsUser") == 0:
            bad(f"{p}.runAsUser", "must not be 0")
        # Restricted: Seccomp.
        seccomp = (ctx.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in CONFINED_SECCOMP:
            bad(f"{p}.seccompProfile.type", f"{seccomp} is not allowed")
        if seccomp is None and pod_seccomp is None:
            bad(
                f"{p}.seccompProfile.type", "must be RuntimeDefault or Localhost (here or in the pod's securityContext)"
            )
        # Restricted: Capabilities.
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            bad(f"{p}.capabilities.drop", "must include ALL")
        for k, added in enumerate(capabilities.get("add") or []):
            if added not in ALLOWED_ADDED_CAPABILITIES:
                bad(f"{p}.capabilities.add[{k}]", f"{added} may not be added")
    return out


def _check_selinux_and_apparmor(ctx: dict[str, Any], path: str, bad: Any) -> None:
    selinux = ctx.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in ALLOWED_SELINUX_TYPES:
        bad(f"{path}.seLinuxOptions.type", f"{selinux['type']} is not allowed")
    for field in ("user", "role"):
        if selinux.get(field):
            bad(f"{path}.seLinuxOptions.{field}", "must be unset")
    apparmor = (ctx.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in CONFINED_APPARMOR:
        bad(f"{path}.appArmorProfile.type", f"{apparmor} is not allowed")
