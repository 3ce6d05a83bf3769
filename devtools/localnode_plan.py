"""Pure parts of the dev-only local node: pod spec in, launch plans, hosts files and statuses out.

Everything here takes plain dicts (the API's JSON, camelCase) and returns data; no I/O. The
I/O lives in ``localnode_volumes`` (writing volume contents), ``localnode_process`` (running
processes) and ``localnode`` (the API wiring).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Mapping

CLUSTER_DOMAIN = "cluster.local"
POD_IP = "127.0.0.1"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
SERVICE_ACCOUNT_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
# The volume the local node adds when a pod has no service-account mount (Kubernetes >= 1.21
# calls its equivalent kube-api-access-*); materialized from the TokenRequest API.
INJECTED_TOKEN_VOLUME = "localnode-api-access"
# The kubelet's limits for termination messages and the FallbackToLogsOnError tail.
MAX_TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
# The kubelet's restart back-off: 10 s doubling to 5 min, reset after 10 min of clean running.
DEFAULT_BACKOFF_BASE_S = 10.0
DEFAULT_BACKOFF_CAP_S = 300.0
# Exit code the local node's namespace helper uses when it could not start the command.
START_ERROR_EXIT_CODE = 128


class PodConfigError(ValueError):
    """The pod cannot be started as specified (missing ConfigMap key, unsupported volume, ...).

    Reported like the kubelet does: the container waits with reason ``CreateContainerConfigError``.
    """


# --- launch plans ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """A bind mount inside the container's mount namespace."""

    source: str  # absolute host path
    target: str  # absolute path the container sees
    read_only: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "readOnly": self.read_only}


@dataclass(frozen=True)
class ContainerPlan:
    """How one container runs as a local process (what ``localnode_enter`` executes)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    working_dir: str
    hostname: str
    mounts: list[Mount]
    termination_message_path: str
    fallback_to_logs: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": self.argv,
            "workingDir": self.working_dir,
            "hostname": self.hostname,
            "mounts": [m.to_json() for m in self.mounts],
        }


def volume_dirs(pod: Mapping[str, Any], state_dir: Path) -> dict[str, Path]:
    """Where each of the pod's volumes lives on this machine.

    persistentVolumeClaim volumes outlive the pod (one directory per claim, shared by every pod
    that mounts the claim); everything else is per pod and removed with it, except hostPath.
    """
    meta = pod["metadata"]
    namespace, uid = meta["namespace"], meta["uid"]
    dirs: dict[str, Path] = {}
    for volume in pod_volumes(pod):
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            dirs[name] = claim_dir(state_dir, namespace, volume["persistentVolumeClaim"]["claimName"])
        elif "hostPath" in volume:
            dirs[name] = Path(volume["hostPath"]["path"])
        elif any(k in volume for k in ("emptyDir", "configMap", "secret", "projected", "downwardAPI")):
            dirs[name] = pod_dir(state_dir, uid) / "volumes" / name
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise PodConfigError(
                f"volume {name!r} of type {', '.join(kinds) or '(none)'} is not supported by the local node "
                "(supported: persistentVolumeClaim, emptyDir, configMap, secret, projected, downwardAPI, hostPath)"
            )
    return dirs


def claim_dir(state_dir: Path, namespace: str, claim: str) -> Path:
    return state_dir / "volumes" / namespace / claim


def pod_dir(state_dir: Path, uid: str) -> Path:
    return state_dir / "pods" / uid


def log_path(state_dir: Path, namespace: str, pod_name: str, container: str) -> Path:
    return state_dir / "logs" / namespace / pod_name / f"{container}.log"


def needs_injected_token(pod: Mapping[str, Any]) -> bool:
    """True when in-pod clients would find no service-account token where in-cluster config looks.

    Kubernetes >= 1.21 (and 1.20's ServiceAccount admission with token secrets) mounts one; when
    the pod has none and does not opt out, the local node adds a TokenRequest-backed one.
    """
    spec = pod["spec"]
    if spec.get("automountServiceAccountToken") is False:
        return False
    for container in spec.get("containers", []):
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"].rstrip("/") == SERVICE_ACCOUNT_MOUNT_PATH:
                return False
    return True


def pod_volumes(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod's volumes, plus the injected token volume when ``needs_injected_token``."""
    volumes = list(pod["spec"].get("volumes") or [])
    if needs_injected_token(pod):
        volumes.append({
            "name": INJECTED_TOKEN_VOLUME,
            "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]},
        })
    return volumes


def container_volume_mounts(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[dict[str, Any]]:
    mounts = list(container.get("volumeMounts") or [])
    if needs_injected_token(pod):
        mounts.append({"name": INJECTED_TOKEN_VOLUME, "mountPath": SERVICE_ACCOUNT_MOUNT_PATH, "readOnly": True})
    return mounts


def container_mounts(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    dirs: Mapping[str, Path],
    hosts_file: Path,
    termination_log: Path,
) -> list[Mount]:
    """The bind mounts of one container, parents before children."""
    mounts: list[Mount] = []
    for vm in container_volume_mounts(pod, container):
        if vm["name"] not in dirs:
            raise PodConfigError(f"container {container['name']!r} mounts unknown volume {vm['name']!r}")
        if not vm["mountPath"].startswith("/"):
            raise PodConfigError(f"mountPath {vm['mountPath']!r} of container {container['name']!r} is not absolute")
        source = dirs[vm["name"]]
        sub_path = vm.get("subPath") or ""
        if sub_path:
            if sub_path.startswith("/") or ".." in PurePosixPath(sub_path).parts:
                raise PodConfigError(f"subPath {sub_path!r} must be relative and must not contain '..'")
            source = source / sub_path
        mounts.append(Mount(str(source), _normalize(vm["mountPath"]), bool(vm.get("readOnly", False))))
    targets = {m.target for m in mounts}
    if "/etc/hosts" not in targets:
        mounts.append(Mount(str(hosts_file), "/etc/hosts", read_only=False))
    message_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    if _normalize(message_path) not in targets:
        mounts.append(Mount(str(termination_log), _normalize(message_path), read_only=False))
    # Stable sort by depth: a mount at /a must exist before one at /a/b is laid over it.
    return sorted(mounts, key=lambda m: len(PurePosixPath(m.target).parts))


def _normalize(path: str) -> str:
    return str(PurePosixPath(path))


# --- environment -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvSources:
    """What env resolution may read: ConfigMap and Secret data (secrets already decoded)."""

    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_refs(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined vars are replaced, ``$$`` escapes a ``$``,
    references to undefined vars stay as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REF.sub(replace, value)


def field_ref_value(pod: Mapping[str, Any], field_path: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": POD_IP,
        "status.hostIP": POD_IP,
    }
    if field_path in simple:
        return simple[field_path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodConfigError(f"fieldRef {field_path!r} is not supported by the local node")


def _key_ref(kind: str, ref: Mapping[str, Any], data: Mapping[str, Mapping[str, str]]) -> str | None:
    optional = bool(ref.get("optional", False))
    name, key = ref.get("name", ""), ref["key"]
    if name not in data:
        if optional:
            return None
        raise PodConfigError(f'{kind} "{name}" not found')
    if key not in data[name]:
        if optional:
            return None
        raise PodConfigError(f"couldn't find key {key} in {kind} {name}")
    return data[name][key]


def resolve_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], base: Mapping[str, str], sources: EnvSources
) -> dict[str, str]:
    """The container's environment: ``base`` (the node's), then envFrom, then env, in order."""
    env: dict[str, str] = dict(base)
    for env_from in container.get("envFrom") or []:
        prefix = env_from.get("prefix", "")
        for kind, key, data in (("configmap", "configMapRef", sources.config_maps), ("secret", "secretRef", sources.secrets)):
            if key not in env_from:
                continue
            ref = env_from[key]
            if ref.get("name") not in data:
                if ref.get("optional"):
                    continue
                raise PodConfigError(f'{kind} "{ref.get("name")}" not found')
            for k, v in data[ref["name"]].items():
                env[prefix + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand_refs(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_ref_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source:
            value = _key_ref("configmap", source["configMapKeyRef"], sources.config_maps)
        elif "secretKeyRef" in source:
            value = _key_ref("secret", source["secretKeyRef"], sources.secrets)
        else:
            raise PodConfigError(f"env {name!r}: valueFrom {sorted(source)} is not supported by the local node")
        if value is not None:
            env[name] = value
    return env


def referenced_objects(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets the pod's env, envFrom and volumes read."""
    config_maps: set[str] = set()
    secrets: set[str] = set()
    spec = pod["spec"]
    for container in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        for env_from in container.get("envFrom") or []:
            if "configMapRef" in env_from:
                config_maps.add(env_from["configMapRef"]["name"])
            if "secretRef" in env_from:
                secrets.add(env_from["secretRef"]["name"])
        for var in container.get("env") or []:
            source = var.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                config_maps.add(source["configMapKeyRef"]["name"])
            if "secretKeyRef" in source:
                secrets.add(source["secretKeyRef"]["name"])
    for volume in pod_volumes(pod):
        if "configMap" in volume:
            config_maps.add(volume["configMap"]["name"])
        if "secret" in volume:
            secrets.add(volume["secret"]["secretName"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                config_maps.add(source["configMap"]["name"])
            if "secret" in source:
                secrets.add(source["secret"]["name"])
    return config_maps, secrets


def container_plan(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    base_env: Mapping[str, str],
    sources: EnvSources,
    dirs: Mapping[str, Path],
    hosts_file: Path,
    termination_log: Path,
    default_working_dir: Path,
) -> ContainerPlan:
    """Pod spec + resolved inputs -> how to run one container. The image is ignored."""
    name = container["name"]
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command:
        raise PodConfigError(
            f"container {name!r} has no command: the local node ignores images (and their entrypoints), "
            "so every container needs an explicit command"
        )
    env = resolve_env(pod, container, base_env, sources)
    argv = [expand_refs(a, env) for a in command + args]
    policy = container.get("terminationMessagePolicy") or "File"
    return ContainerPlan(
        name=name,
        argv=argv,
        env=env,
        working_dir=container.get("workingDir") or str(default_working_dir),
        hostname=pod_hostname(pod),
        mounts=container_mounts(pod, container, dirs, hosts_file, termination_log),
        termination_message_path=container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH,
        fallback_to_logs=policy == "FallbackToLogsOnError",
    )


# --- names: /etc/hosts -------------------------------------------------------------------------


def pod_hostname(pod: Mapping[str, Any]) -> str:
    return pod["spec"].get("hostname") or pod["metadata"]["name"]


def _qualified(host: str, namespace: str, own_namespace: str) -> list[str]:
    names = [f"{host}.{namespace}.svc.{CLUSTER_DOMAIN}", f"{host}.{namespace}.svc", f"{host}.{namespace}"]
    if namespace == own_namespace:
        names.append(host)
    return names


def hosts_file(pod: Mapping[str, Any], pods: list[Mapping[str, Any]], services: list[Mapping[str, Any]]) -> str:
    """The pod's /etc/hosts: every cluster name resolves to this machine (all pods share it).

    Lists the pod's own FQDN (as the kubelet does), every Service, and every pod that has a
    hostname and a subdomain naming an existing headless Service (cluster DNS's
    ``<hostname>.<subdomain>.<ns>.svc``), in the forms resolv.conf's search path would reach.
    """
    own_ns = pod["metadata"]["namespace"]
    lines = ["# Written by the sft-operator dev local node: cluster names resolve to this machine.",
             "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    own_host = pod_hostname(pod)
    subdomain = pod["spec"].get("subdomain")
    own = [f"{own_host}.{subdomain}.{own_ns}.svc.{CLUSTER_DOMAIN}", own_host] if subdomain else [own_host]
    lines.append(f"{POD_IP}\t{' '.join(own)}")
    headless = {
        (s["metadata"]["namespace"], s["metadata"]["name"])
        for s in services if (s.get("spec") or {}).get("clusterIP") == "None"
    }
    entries: set[str] = set()
    for svc in services:
        entries.update(_qualified(svc["metadata"]["name"], svc["metadata"]["namespace"], own_ns))
    for other in pods:
        ns = other["metadata"]["namespace"]
        sub = other["spec"].get("subdomain")
        if other["spec"].get("hostname") and sub and (ns, sub) in headless:
            entries.update(_qualified(f"{other['spec']['hostname']}.{sub}", ns, own_ns))
    for name in sorted(entries - set(own)):
        lines.append(f"{POD_IP}\t{name}")
    return "\n".join(lines) + "\n"


# --- scheduling --------------------------------------------------------------------------------


def node_object(name: str, capacity: Mapping[str, str], now: datetime) -> dict[str, Any]:
    """The Node the local node registers (status included: nodes accept status on create)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "sft-operator.dev/local-node": "true"},
        },
        "spec": {},
        "status": {
            "capacity": dict(capacity),
            "allocatable": dict(capacity),
            "conditions": [ready_condition(True, now)],
            "addresses": [{"type": "InternalIP", "address": POD_IP}, {"type": "Hostname", "address": name}],
            "nodeInfo": {
                "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "localnode://dev",
                "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "v1.20.2-localnode",
                "machineID": "", "operatingSystem": "linux", "osImage": "sft-operator dev local node",
                "systemUUID": "",
            },
        },
    }


def ready_condition(ready: bool, now: datetime) -> dict[str, Any]:
    stamp = iso(now)
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "LocalNodeReady" if ready else "LocalNodeStopped",
        "message": "sft-operator dev local node is running pods" if ready else "the local node process stopped",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }


def unschedulable_reason(pod: Mapping[str, Any], allocatable: Mapping[str, str]) -> str | None:
    """Why this node cannot take the pod, or None.

    Only extended resources (names with a '/', e.g. nvidia.com/gpu) are checked, per pod: cpu
    and memory are advertised but not enforced, since every pod shares this one machine.
    """
    spec = pod["spec"]
    for container in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for resource, quantity in wanted.items():
            if "/" not in resource:
                continue
            have = int(allocatable.get(resource, "0"))
            if not str(quantity).isdigit():
                return f"container {container['name']!r} wants {quantity!r} {resource}: extended resources are whole numbers"
            if int(quantity) > have:
                return (f"0/1 nodes are available: container {container['name']!r} wants {quantity} {resource}, "
                        f"the local node advertises {have} (for nvidia.com/gpu: start it with --gpus N, or LocalNode(gpus=N))")
    return None


# --- restarts ----------------------------------------------------------------------------------


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


def next_backoff(previous_s: float | None, ran_for_s: float, base_s: float, cap_s: float) -> float:
    """The kubelet's crash back-off: base, doubling to cap; a run longer than 2x cap resets it."""
    if previous_s is None or ran_for_s > 2 * cap_s:
        return min(base_s, cap_s)
    return min(previous_s * 2, cap_s)


# --- status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    message: str
    started_at: datetime
    finished_at: datetime
    signal: int | None = None

    def to_json(self, container_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": iso(self.started_at),
            "finishedAt": iso(self.finished_at),
            "containerID": container_id,
        }
        if self.message:
            out["message"] = self.message
        if self.signal is not None:
            out["signal"] = self.signal
        return out


@dataclass(frozen=True)
class ContainerState:
    """One container's state as reported in containerStatuses."""

    name: str
    image: str
    state: Literal["waiting", "running", "terminated"]
    restart_count: int = 0
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    started_at: datetime | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    pid: int | None = None

    @property
    def container_id(self) -> str:
        return f"localnode://{self.pid}" if self.pid else ""

    def to_json(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.state == "running":
            state = {"running": {"startedAt": iso(self.started_at)}}
        elif self.state == "terminated":
            assert self.terminated is not None
            state = {"terminated": self.terminated.to_json(self.container_id)}
        else:
            waiting: dict[str, Any] = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.state == "running",
            "started": self.state == "running",
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {"terminated": self.last_terminated.to_json("")} if self.last_terminated else {},
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def pod_phase(containers: list[ContainerState], restart_policy: str) -> str:
    """The kubelet's phase rule for a pod without init containers."""
    pending = sum(1 for c in containers if c.state == "waiting" and c.last_terminated is None)
    running = sum(1 for c in containers if c.state == "running")
    restarting = sum(1 for c in containers if c.state == "waiting" and c.last_terminated is not None)
    terminated = [c for c in containers if c.state == "terminated"]
    if pending:
        return "Pending"
    if running or restarting:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if all(c.terminated is not None and c.terminated.exit_code == 0 for c in terminated):
        return "Succeeded"
    return "Failed"


def pod_status(
    containers: list[ContainerState],
    restart_policy: str,
    start_time: datetime,
    previous_conditions: list[Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """The pod's status as the kubelet would write it (conditions keep their transition times)."""
    phase = pod_phase(containers, restart_policy)
    all_running = bool(containers) and all(c.state == "running" for c in containers)
    wanted = {
        "PodScheduled": True,
        "Initialized": True,
        "ContainersReady": all_running,
        "Ready": all_running,
    }
    previous = {c["type"]: c for c in previous_conditions}
    conditions: list[dict[str, Any]] = []
    for ctype, ok in wanted.items():
        status = "True" if ok else "False"
        before = previous.get(ctype)
        condition: dict[str, Any] = {"type": ctype, "status": status, "lastProbeTime": None}
        if before is not None and before.get("status") == status and before.get("lastTransitionTime"):
            condition["lastTransitionTime"] = before["lastTransitionTime"]
        else:
            condition["lastTransitionTime"] = iso(now)
        if not ok and ctype in ("ContainersReady", "Ready"):
            not_ready = [c.name for c in containers if c.state != "running"]
            condition["reason"] = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
            if condition["reason"] == "ContainersNotReady":
                condition["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        conditions.append(condition)
    for ctype, before in previous.items():
        if ctype not in wanted:
            conditions.append(dict(before))
    return {
        "phase": phase,
        "conditions": conditions,
        "hostIP": POD_IP,
        "podIP": POD_IP,
        "podIPs": [{"ip": POD_IP}],
        "startTime": iso(start_time),
        "containerStatuses": [c.to_json() for c in containers],
    }


def termination_reason(exit_code: int) -> str:
    if exit_code == START_ERROR_EXIT_CODE:
        return "StartError"
    return "Completed" if exit_code == 0 else "Error"


def termination_message(file_text: str, log_tail: str, fallback_to_logs: bool, exit_code: int) -> str:
    """The kubelet's rule: the message file; with FallbackToLogsOnError, the log tail when the
    file is empty and the container failed."""
    message = file_text[-MAX_TERMINATION_MESSAGE_BYTES:]
    if not message.strip() and fallback_to_logs and exit_code != 0:
        return log_tail
    return message


def tail_of_log(text: str) -> str:
    lines = text.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
    return "".join(lines)[-FALLBACK_LOG_BYTES:]


def exit_code_of(returncode: int) -> tuple[int, int | None]:
    """Popen's returncode -> (container exit code, signal): a signal N reads as 128 + N."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def grace_period_s(pod: Mapping[str, Any]) -> float:
    meta = pod["metadata"]
    if meta.get("deletionGracePeriodSeconds") is not None:
        return float(meta["deletionGracePeriodSeconds"])
    value = pod["spec"].get("terminationGracePeriodSeconds")
    return float(30 if value is None else value)
