"""Pods bound to the dev local node: start their containers, follow them, report, remove them.

``PodRunner`` is driven by ``LocalNode``'s loop thread only (no locking): pod events, container
exits and timers come in; processes, files and API writes go out.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from kubernetes.client.exceptions import ApiException

from .localnode_api import KubeRest, pod_path
from .localnode_plan import (
    START_ERROR_EXIT_CODE,
    ContainerState,
    EnvSources,
    PodConfigError,
    Terminated,
    container_plan,
    exit_code_of,
    grace_period_s,
    hosts_file,
    log_path,
    next_backoff,
    pod_dir,
    pod_status,
    pod_volumes,
    referenced_objects,
    should_restart,
    tail_of_log,
    termination_message,
    termination_reason,
    volume_dirs,
)
from .localnode_process import ContainerProcess
from .localnode_volumes import VolumeWriter

log = logging.getLogger("devtools.localnode")

CONFIG_RETRY_S = 2.0
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class ContainerRecord:
    spec: dict[str, Any]
    state: ContainerState
    process: ContainerProcess | None = None
    backoff_s: float | None = None
    restart_at: float | None = None  # time.monotonic()


@dataclass
class PodRecord:
    pod: dict[str, Any]
    containers: dict[str, ContainerRecord]
    start_time: datetime
    started: bool = False
    retry_at: float | None = None
    refresh_at: float | None = None  # when to rewrite service-account tokens (they expire)
    deleting: bool = False
    kill_at: float | None = None
    hosts: str = ""
    last_status: dict[str, Any] | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def uid(self) -> str:
        return self.pod["metadata"]["uid"]

    @property
    def live(self) -> list[ContainerProcess]:
        return [c.process for c in self.containers.values() if c.process is not None and c.process.alive]


class PodRunner:
    """Runs the pods bound to this node as local processes and reports their status."""

    def __init__(
        self,
        rest: KubeRest,
        state_dir: Path,
        volumes: VolumeWriter,
        *,
        base_env: Callable[[dict[str, Any]], dict[str, str]],
        cluster_names: Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]],
        emit: Callable[[tuple[Any, ...]], None],
        stopping: Callable[[], bool],
        backoff_base_s: float,
        backoff_cap_s: float,
    ):
        self.rest = rest
        self.state_dir = state_dir
        self.volumes = volumes
        self._base_env = base_env
        self._cluster_names = cluster_names  # (all pods, all services) for /etc/hosts
        self._emit = emit
        self._stopping = stopping
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.records: dict[str, PodRecord] = {}  # pods bound here, by uid
        self._removed: set[str] = set()  # uids we deleted; their last watch events are ignored

    def container_pids(self) -> list[int]:
        # Called from other threads: dict.copy() is one atomic step under the GIL, iteration is not.
        return [p.pid for r in self.records.copy().values() for p in r.live]

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        for record in self.records.values():
            deadlines += [d for d in (record.retry_at, record.kill_at, record.refresh_at) if d is not None]
            deadlines += [c.restart_at for c in record.containers.values() if c.restart_at is not None]
        return min(deadlines) if deadlines else None

    def timers(self, now: float) -> None:
        for record in list(self.records.values()):
            if record.deleting:
                if record.kill_at is not None and now >= record.kill_at:
                    record.kill_at = None
                    for process in record.live:
                        log.info("pod %s: grace period over, SIGKILL to pid group %d", _key(record.pod), process.pid)
                        process.kill_group()
                continue
            if record.retry_at is not None and now >= record.retry_at:
                record.retry_at = None
                self._start_pod(record)
            if record.refresh_at is not None and now >= record.refresh_at:
                self._refresh_tokens(record)
            for name, container in record.containers.items():
                if container.restart_at is not None and now >= container.restart_at:
                    container.restart_at = None
                    self._start_container(record, name)
                    self._report(record)

    def deleted(self, uid: str) -> None:
        """The pod is gone from the API (e.g. force-deleted): nothing left to report to."""
        self._removed.discard(uid)
        record = self.records.pop(uid, None)
        if record is not None:
            for process in record.live:
                process.kill_group()
            self._cleanup(record)

    def sync(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        record = self.records.get(uid)
        deleting = bool(pod["metadata"].get("deletionTimestamp"))
        if record is None and uid in self._removed:
            return
        if record is None:
            if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
                if deleting:
                    self._delete_now(pod)
                return  # finished before we (re)started: never run it again
            record = self._new_record(pod)
            self.records[uid] = record
        record.pod = pod
        if deleting and not record.deleting:
            self._begin_termination(record)
        elif not record.deleting and not record.started and record.retry_at is None:
            self._start_pod(record)

    def _new_record(self, pod: dict[str, Any]) -> PodRecord:
        # A pod that ran under an earlier incarnation of this node keeps its restart counts.
        previous = {s["name"]: s.get("restartCount", 0) for s in (pod.get("status") or {}).get("containerStatuses") or []}
        containers = {
            c["name"]: ContainerRecord(
                spec=c,
                state=ContainerState(name=c["name"], image=c.get("image", ""), state="waiting",
                                     restart_count=previous.get(c["name"], 0)),
            )
            for c in pod["spec"]["containers"]
        }
        return PodRecord(pod=pod, containers=containers, start_time=datetime.now(timezone.utc),
                         conditions=list((pod.get("status") or {}).get("conditions") or []))

    def _start_pod(self, record: PodRecord) -> None:
        pod = record.pod
        try:
            if pod["spec"].get("initContainers"):
                raise PodConfigError("init containers are not supported by the local node")
            dirs = volume_dirs(pod, self.state_dir)
            for volume in pod_volumes(pod):
                self.volumes.write(pod, volume, dirs[volume["name"]])
            self._write_hosts(record)
            record.started = True
            record.refresh_at = _token_refresh_at(pod)
            for name in record.containers:
                self._start_container(record, name)
        except Exception as exc:  # noqa: BLE001 - config errors and API hiccups alike: retry, say why
            message = _start_failure(exc)
            log.warning("pod %s cannot start yet: %s", _key(pod), message,
                        exc_info=not isinstance(exc, (PodConfigError, ApiException)))
            for container in record.containers.values():
                container.state = replace(container.state, state="waiting", waiting_reason="CreateContainerConfigError",
                                          waiting_message=message)
            record.started = False
            record.retry_at = time.monotonic() + CONFIG_RETRY_S
        self._report(record)

    def _refresh_tokens(self, record: PodRecord) -> None:
        """Rewrites the pod's projected volumes in place before their tokens expire."""
        pod = record.pod
        record.refresh_at = _token_refresh_at(pod)
        dirs = volume_dirs(pod, self.state_dir)
        for volume in pod_volumes(pod):
            if "projected" in volume:
                try:
                    self.volumes.write(pod, volume, dirs[volume["name"]])
                except (PodConfigError, ApiException) as exc:
                    log.warning("pod %s: token refresh failed (retrying in %gs): %s", _key(pod), CONFIG_RETRY_S, exc)
                    record.refresh_at = time.monotonic() + CONFIG_RETRY_S

    def _env_sources(self, pod: dict[str, Any]) -> EnvSources:
        namespace = pod["metadata"]["namespace"]
        config_map_names, secret_names = referenced_objects(pod)
        config_maps, secrets = {}, {}
        for name in config_map_names:
            data = self.volumes.data("configmap", namespace, name)
            if data is not None:
                config_maps[name] = {k: v.decode(errors="replace") for k, v in data.items()}
        for name in secret_names:
            data = self.volumes.data("secret", namespace, name)
            if data is not None:
                secrets[name] = {k: v.decode(errors="replace") for k, v in data.items()}
        return EnvSources(config_maps=config_maps, secrets=secrets)

    def _start_container(self, record: PodRecord, name: str) -> None:
        pod = record.pod
        container = record.containers[name]
        restart = container.process is not None  # it ran before: this start is a restart
        run_dir = pod_dir(self.state_dir, record.uid) / "containers" / name
        termination_log = run_dir / "termination-log"
        try:
            plan = container_plan(
                pod, container.spec, base_env=self._base_env(pod), sources=self._env_sources(pod),
                dirs=volume_dirs(pod, self.state_dir), hosts_file=self._hosts_path(record),
                termination_log=termination_log, default_working_dir=run_dir / "workdir",
            )
        except Exception as exc:  # noqa: BLE001 - config errors and API hiccups alike: retry, say why
            message = _start_failure(exc)
            log.warning("pod %s: container %s cannot start yet: %s", _key(pod), name, message,
                        exc_info=not isinstance(exc, (PodConfigError, ApiException)))
            container.state = replace(container.state, state="waiting", waiting_reason="CreateContainerConfigError",
                                      waiting_message=message)
            container.restart_at = time.monotonic() + CONFIG_RETRY_S
            return
        uid = record.uid

        def on_exit(process: ContainerProcess, returncode: int) -> None:
            self._emit(("exit", uid, name, process, returncode))

        meta = pod["metadata"]
        process = ContainerProcess(plan, run_dir, log_path(self.state_dir, meta["namespace"], meta["name"], name),
                                   termination_log, on_exit)
        container.process = process
        container.state = replace(
            container.state, state="running", started_at=process.started_at, pid=process.pid, terminated=None,
            restart_count=container.state.restart_count + (1 if restart else 0),
        )
        log.info("pod %s: started container %s (pid %d): %s", _key(pod), name, process.pid, plan.argv)

    def container_exited(self, uid: str, name: str, process: ContainerProcess, returncode: int) -> None:
        record = self.records.get(uid)
        if record is None or record.containers[name].process is not process:
            return
        container = record.containers[name]
        code, sig = exit_code_of(returncode)
        tail = tail_of_log(process.log_tail_bytes())
        message = termination_message(process.termination_file_text(), tail, process.plan.fallback_to_logs, code)
        if code == START_ERROR_EXIT_CODE and not message.strip():
            message = tail  # the namespace helper's own explanation
        finished = datetime.now(timezone.utc)
        terminated = Terminated(exit_code=code, reason=termination_reason(code), message=message.rstrip("\n"),
                                started_at=process.started_at, finished_at=finished, signal=sig)
        log.info("pod %s: container %s exited with %d", _key(record.pod), name, code)
        policy = record.pod["spec"].get("restartPolicy") or "Always"
        if not record.deleting and not self._stopping() and should_restart(policy, code):
            ran_for = (finished - process.started_at).total_seconds()
            container.backoff_s = next_backoff(container.backoff_s, ran_for, self.backoff_base_s, self.backoff_cap_s)
            container.restart_at = time.monotonic() + container.backoff_s
            container.state = replace(
                container.state, state="waiting", waiting_reason="CrashLoopBackOff",
                waiting_message=f"back-off {container.backoff_s:g}s restarting failed container={name} pod={record.pod['metadata']['name']}",
                last_terminated=terminated, terminated=None,
            )
        else:
            container.state = replace(container.state, state="terminated", terminated=terminated)
        self._report(record)
        if record.deleting and not record.live:
            self._finish_deletion(record)

    def _begin_termination(self, record: PodRecord) -> None:
        record.deleting = True
        grace = grace_period_s(record.pod)
        for container in record.containers.values():
            container.restart_at = None
        live = record.live
        log.info("pod %s is being deleted: SIGTERM to %d container(s), grace %gs", _key(record.pod), len(live), grace)
        for process in live:
            process.terminate()
        record.kill_at = time.monotonic() + grace
        if not live:
            self._finish_deletion(record)

    def _finish_deletion(self, record: PodRecord) -> None:
        self.records.pop(record.uid, None)
        self._delete_now(record.pod)
        self._cleanup(record)

    def _delete_now(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self._removed.add(meta["uid"])
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]}}
        try:
            self.rest.delete(pod_path(meta["namespace"], meta["name"]), body)
            log.info("pod %s removed", _key(pod))
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("removing pod %s failed: %s %s", _key(pod), exc.status, exc.reason)

    def _cleanup(self, record: PodRecord) -> None:
        # Per-pod volumes (emptyDir, configMap, secret, tokens) go with the pod; claims and logs stay.
        shutil.rmtree(pod_dir(self.state_dir, record.uid), ignore_errors=True)

    # -- status and names -----------------------------------------------------------------------

    def _report(self, record: PodRecord) -> None:
        states = [c.state for c in record.containers.values()]
        status = pod_status(states, record.pod["spec"].get("restartPolicy") or "Always", record.start_time,
                            record.conditions, datetime.now(timezone.utc))
        if status == record.last_status:
            return
        if patch_pod_status(self.rest, record.pod, status):
            record.last_status = status
            record.conditions = status["conditions"]

    def _hosts_path(self, record: PodRecord) -> Path:
        return pod_dir(self.state_dir, record.uid) / "etc-hosts"

    def _write_hosts(self, record: PodRecord) -> None:
        content = hosts_file(record.pod, *self._cluster_names())
        if content == record.hosts:
            return
        path = self._hosts_path(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten in place (same inode): containers see it through their bind mount.
        with open(path, "w") as f:
            f.write(content)
        record.hosts = content

    def refresh_hosts(self) -> None:
        for record in self.records.values():
            if record.started:
                self._write_hosts(record)

    def shutdown(self, grace_s: float) -> int:
        """Stops every container: SIGTERM, SIGKILL of the group after ``grace_s``; returns how many."""
        processes = [p for r in self.records.values() for p in r.live]
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + grace_s
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            process.kill_group()
        for process in processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                log.error("container process %d survived SIGKILL", process.pid)
        return len(processes)


def patch_pod_status(rest: KubeRest, pod: dict[str, Any], status: dict[str, Any]) -> bool:
    meta = pod["metadata"]
    try:
        rest.merge_patch(pod_path(meta["namespace"], meta["name"], "status"), {"status": status})
        return True
    except ApiException as exc:
        if exc.status != 404:
            log.warning("status of pod %s not written: %s %s", _key(pod), exc.status, exc.reason)
        return False


def _token_refresh_at(pod: dict[str, Any]) -> float | None:
    lifetimes = [
        float(source["serviceAccountToken"].get("expirationSeconds") or 3600)
        for volume in pod_volumes(pod)
        for source in (volume.get("projected") or {}).get("sources") or []
        if "serviceAccountToken" in source
    ]
    # Like the kubelet: refresh once 80 % of the token's life has passed.
    return time.monotonic() + 0.8 * min(lifetimes) if lifetimes else None


def _start_failure(exc: Exception) -> str:
    if isinstance(exc, PodConfigError):
        return str(exc)
    if isinstance(exc, ApiException):
        return f"API error {exc.status}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _key(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


