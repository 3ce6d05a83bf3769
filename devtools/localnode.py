"""A dev-only local node: a tiny kubelet + scheduler that runs pods as local processes.

NEVER for production. There is no kubelet and no kube-scheduler in the local control plane, so
pods would stay Pending; this registers a Node, binds unscheduled pods to it and runs each pod's
containers as processes on this machine (the image is ignored: the command runs from the local
environment), each in its own mount namespace with the pod's volumes bind-mounted from local
directories. See docs/localnode.md for what it does and does not do.

    python -m devtools.localnode --kubeconfig K --state-dir D [--name N] [--gpus G]

or from Python: ``with LocalNode(kubeconfig, state_dir).start(): ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from kubernetes.client.exceptions import ApiException

from .localnode_api import KubeRest, gone, pod_path
from .localnode_plan import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_CAP_S,
    claim_dir,
    iso,
    log_path,
    node_object,
    ready_condition,
    unschedulable_reason,
)
from .localnode_pods import TERMINAL_PHASES, PodRunner, patch_pod_status
from .localnode_volumes import VolumeWriter

log = logging.getLogger("devtools.localnode")

DEFAULT_SCHEDULER = "default-scheduler"


class LocalNodeError(RuntimeError):
    """The local node cannot run here (no mount namespaces, API unreachable, ...)."""


def check_mount_namespaces() -> None:
    """Fails with a clear message unless this process may create mount namespaces."""
    if sys.platform != "linux":
        raise LocalNodeError("the local node runs pods in Linux mount namespaces; this is not Linux")
    unshare = shutil.which("unshare")
    if unshare is None:
        raise LocalNodeError("the local node needs unshare(1) (util-linux) to check for mount namespaces")
    probe = subprocess.run([unshare, "-m", "-u", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise LocalNodeError(
            "mount namespaces are unavailable (`unshare -m -u true` failed: "
            f"{probe.stderr.strip() or probe.returncode}); the local node must run as root "
            "(CAP_SYS_ADMIN) on Linux, since each container bind-mounts its volumes onto absolute paths"
        )


def default_capacity(gpus: int, cpu: str | None, memory: str | None, pods: int) -> dict[str, str]:
    capacity = {
        "cpu": cpu or str(os.cpu_count() or 1),
        "memory": memory or f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki",
        "pods": str(pods),
        "ephemeral-storage": f"{shutil.disk_usage('/').total // 1024}Ki",
    }
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    return capacity


class LocalNode:
    """Registers a Node, schedules pods onto it and runs them as local processes.

    All pod bookkeeping happens on one loop thread fed by a queue (watch events, process exits,
    timers), so there is no locking; watches and process waiters only enqueue.
    """

    def __init__(
        self,
        kubeconfig: str | Path,
        state_dir: str | Path,
        name: str = "local-node",
        *,
        gpus: int = 0,
        cpu: str | None = None,
        memory: str | None = None,
        pods: int = 110,
        extra_env: dict[str, str] | None = None,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
        heartbeat_s: float = 10.0,
        stop_grace_s: float = 10.0,
        schedules: Callable[[str], bool] | None = None,
    ):
        """``schedules(namespace)``: whether to bind that namespace's unscheduled pods (default:
        every namespace; tests narrow it to their own). Pods naming this node run regardless."""
        self.name = name
        self.state_dir = Path(state_dir).resolve()
        try:
            self.rest = KubeRest.from_kubeconfig(str(kubeconfig))
        except Exception as exc:  # noqa: BLE001 - missing, unreadable or malformed: one clear line
            raise LocalNodeError(f"cannot load kubeconfig {kubeconfig}: {exc}") from exc
        self.capacity = default_capacity(gpus, cpu, memory, pods)
        self.extra_env = dict(extra_env or {})
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.heartbeat_s = heartbeat_s
        self.stop_grace_s = stop_grace_s
        self.schedules = schedules or (lambda _namespace: True)
        ca_file = self.rest.ca_file
        self.ca_pem = Path(ca_file).read_bytes() if ca_file else b""
        self.volumes = VolumeWriter(self.rest, self.ca_pem)
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: dict[str, Any] = {}  # the open watch response per kind, for stop()
        self._pods: dict[str, dict[str, Any]] = {}  # every pod in the cluster, by uid
        self._services: dict[tuple[str, str], dict[str, Any]] = {}
        self._binding: set[str] = set()
        self._unschedulable: set[str] = set()
        self._ready_since = datetime.now(timezone.utc)
        self._next_heartbeat = 0.0
        self._loop_thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.pods = PodRunner(
            self.rest, self.state_dir, self.volumes, base_env=self._base_env,
            cluster_names=lambda: (list(self._pods.values()), list(self._services.values())),
            emit=self._events.put, stopping=self._stop.is_set,
            backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "LocalNode":
        """Registers the node and starts the loop and watch threads; returns at once."""
        check_mount_namespaces()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._register()
        self._loop_thread = threading.Thread(target=self._loop, name=f"localnode-{self.name}", daemon=True)
        self._loop_thread.start()
        for kind, path in (("pod", "/api/v1/pods"), ("service", "/api/v1/services")):
            thread = threading.Thread(target=self._watch, args=(kind, path), name=f"watch-{kind}s", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("local node %s running pods under %s", self.name, self.state_dir)
        return self

    def run(self) -> None:
        """start(), then block until stop() (or SIGINT/SIGTERM in the entry point)."""
        self.start()
        assert self._loop_thread is not None
        while self._loop_thread.is_alive():
            self._loop_thread.join(0.5)
        if self._error is not None:
            raise LocalNodeError(f"the local node's loop failed: {self._error}") from self._error

    def request_stop(self) -> None:
        """Asks the loop to stop (safe from a signal handler); stop() also waits for it."""
        self._stop.set()
        self._events.put(("stop",))
        for response in list(self._responses.values()):
            try:
                response.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the watch ends at its timeout anyway
                pass

    def stop(self) -> None:
        """Stops every container (SIGTERM, then SIGKILL after stop_grace_s) and the node."""
        self.request_stop()
        if self._loop_thread is not None and self._loop_thread is not threading.current_thread():
            self._loop_thread.join()

    def __enter__(self) -> "LocalNode":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """Where a PersistentVolumeClaim's data lives on this machine (e.g. a job's checkpoints)."""
        return claim_dir(self.state_dir, namespace, claim)

    def log_file(self, namespace: str, pod: str, container: str) -> Path:
        """The container's log (stdout and stderr, all runs appended)."""
        return log_path(self.state_dir, namespace, pod, container)

    def container_pids(self) -> list[int]:
        """PIDs of the running containers' main processes (tests check none survive stop())."""
        return self.pods.container_pids()

    def signal_processes(self, signum: int, cmdline_contains: str) -> list[int]:
        """Send ``signum`` to every process in the running containers whose command line contains
        the text (e.g. SIGQUIT to the launchers, which then print their stacks); their PIDs."""
        children: dict[int, list[int]] = {}
        cmdlines: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdlines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
            children.setdefault(parent, []).append(int(entry.name))
        signalled = []
        todo = list(self.container_pids())
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, []))
            if cmdline_contains in cmdlines.get(pid, ""):
                try:
                    os.kill(pid, signum)
                    signalled.append(pid)
                except ProcessLookupError:
                    pass
        return sorted(signalled)

    # -- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(self._next_deadline() - time.monotonic(), 1.0))
                try:
                    event = self._events.get(timeout=timeout)
                except queue.Empty:
                    event = None
                try:
                    if event is not None:
                        self._handle(event)
                    self._timers()
                except Exception:  # noqa: BLE001 - e.g. the API server restarting: keep the pods running
                    log.exception("local node: handling %s failed; continuing", event[0] if event else "timers")
                    self._stop.wait(0.2)
        except BaseException as exc:  # noqa: BLE001 - surfaced by run(); containers still get stopped
            log.exception("local node loop failed")
            self._error = exc
        finally:
            self._shutdown()

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "stop":
            return
        if kind == "pod-sync":
            self._pod_sync(event[1])
        elif kind == "pod":
            self._pod_event(event[1], event[2])
        elif kind == "service-sync":
            self._services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in event[1]}
            self.pods.refresh_hosts()
        elif kind == "service":
            key = (event[2]["metadata"]["namespace"], event[2]["metadata"]["name"])
            if event[1] == "DELETED":
                self._services.pop(key, None)
            else:
                self._services[key] = event[2]
            self.pods.refresh_hosts()
        elif kind == "exit":
            self.pods.container_exited(event[1], event[2], event[3], event[4])

    def _next_deadline(self) -> float:
        pods = self.pods.next_deadline()
        return self._next_heartbeat if pods is None else min(self._next_heartbeat, pods)

    def _timers(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + self.heartbeat_s
        self.pods.timers(now)

    # -- node -----------------------------------------------------------------------------------

    def _register(self) -> None:
        node = node_object(self.name, self.capacity, self._ready_since)
        try:
            self.rest.post("/api/v1/nodes", node)
        except ApiException as exc:
            if exc.status != 409:
                raise LocalNodeError(f"cannot register node {self.name}: {exc.status} {exc.reason}: {exc.body}") from exc
            self.rest.merge_patch(f"/api/v1/nodes/{self.name}", {"metadata": {"labels": node["metadata"]["labels"]}})
        except Exception as exc:  # noqa: BLE001 - connection errors: say which server
            raise LocalNodeError(f"cannot reach the API server at {self.rest.server}: {exc}") from exc
        # Status on create is kept by some versions and dropped by others: set it explicitly.
        self.rest.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": node["status"]})

    def _heartbeat(self) -> None:
        condition = ready_condition(True, datetime.now(timezone.utc))
        condition["lastTransitionTime"] = iso(self._ready_since)
        try:
            self.rest.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": {"conditions": [condition]}})
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried at the next one
            log.warning("node heartbeat failed: %s", exc)

    # -- watches --------------------------------------------------------------------------------

    def _watch(self, kind: str, path: str) -> None:
        rest = self.rest.clone()
        while not self._stop.is_set():
            try:
                listing = rest.get(path)
                self._events.put((f"{kind}-sync", listing.get("items") or []))
                version = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    relist = True
                    on_response = lambda response: self._responses.__setitem__(kind, response)  # noqa: E731
                    for event in rest.watch(path, version, self._stop, on_response=on_response):
                        if gone(event):
                            break
                        obj = event.get("object") or {}
                        version = (obj.get("metadata") or {}).get("resourceVersion", version)
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self._events.put((kind, event["type"], obj))
                        elif event["type"] == "ERROR":
                            log.warning("%s watch error: %s", kind, obj)
                            break
                    else:
                        relist = False  # the server ended the watch: resume from `version`
                    if relist:
                        break
            except Exception as exc:  # noqa: BLE001 - watches reconnect; stop() interrupts them
                if self._stop.is_set():
                    return
                log.warning("%s watch failed (%s); re-listing in 1 s", kind, exc)
                self._stop.wait(1.0)

    def _pod_sync(self, pods: list[dict[str, Any]]) -> None:
        listed = {p["metadata"]["uid"]: p for p in pods}
        for uid in list(self._pods):
            if uid not in listed:
                self._pod_event("DELETED", self._pods[uid])
        for pod in pods:
            self._pod_event("MODIFIED", pod)

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            self._pods.pop(uid, None)
            self._binding.discard(uid)
            self._unschedulable.discard(uid)
            self.pods.deleted(uid)
            self.pods.refresh_hosts()
            return
        self._pods[uid] = pod
        node_name = pod["spec"].get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node_name:
            # Only pods for the default scheduler: ours stands in for kube-scheduler, no other.
            if (phase not in TERMINAL_PHASES and not pod["metadata"].get("deletionTimestamp")
                    and pod["spec"].get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER
                    and self.schedules(pod["metadata"]["namespace"])):
                self._schedule(pod)
        elif node_name == self.name:
            self.pods.sync(pod)
        self.pods.refresh_hosts()

    # -- scheduling -----------------------------------------------------------------------------

    def _schedule(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if uid in self._binding:
            return
        reason = unschedulable_reason(pod, self.capacity)
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if reason is not None:
            if uid not in self._unschedulable:
                self._unschedulable.add(uid)
                condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": reason, "lastProbeTime": None,
                             "lastTransitionTime": iso(datetime.now(timezone.utc))}
                patch_pod_status(self.rest, pod, {"conditions": [condition]})
                log.info("pod %s/%s is unschedulable: %s", namespace, name, reason)
            return
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "uid": uid},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.name}}
        try:
            self.rest.post(pod_path(namespace, name, "binding"), binding)
            self._binding.add(uid)
            log.info("bound pod %s/%s to %s", namespace, name, self.name)
        except ApiException as exc:
            if exc.status in (404, 409):  # gone, or bound meanwhile: the watch tells us what happened
                return
            log.warning("binding pod %s/%s failed: %s %s", namespace, name, exc.status, exc.reason)

    # -- the containers' base environment ------------------------------------------------------

    def _base_env(self, pod: dict[str, Any]) -> dict[str, str]:
        server = urlparse(self.rest.server)
        port = str(server.port or 443)
        venv_bin = str(Path(sys.executable).parent)
        env = {
            "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]),
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"],
            "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{server.hostname}:{port}",
            # Dev convenience: Python output reaches the log files as it happens.
            "PYTHONUNBUFFERED": "1",
        }
        for key in ("LANG", "LC_ALL", "TZ", "TMPDIR"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(self.extra_env)
        return env

    # -- shutdown -------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        stopped = self.pods.shutdown(self.stop_grace_s)
        condition = ready_condition(False, datetime.now(timezone.utc))
        try:
            self.rest.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": {"conditions": [condition]}})
        except Exception as exc:  # noqa: BLE001 - the control plane may already be gone
            log.info("could not mark node %s NotReady: %s", self.name, exc)
        log.info("local node %s stopped (%d container(s) stopped)", self.name, stopped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.localnode",
        description="DEV ONLY: a local node that runs pods as local processes (never for production).",
    )
    parser.add_argument("--kubeconfig", required=True, help="admin kubeconfig of the (local) control plane")
    parser.add_argument("--state-dir", required=True, type=Path, help="volumes, logs and per-pod files go here")
    parser.add_argument("--name", default="local-node", help="Node name (default: local-node)")
    parser.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu to advertise (default 0)")
    parser.add_argument("--cpu", help="cpu capacity to advertise (default: this machine's cores)")
    parser.add_argument("--memory", help="memory capacity to advertise (default: this machine's memory)")
    parser.add_argument("--backoff-base", type=float, default=DEFAULT_BACKOFF_BASE_S,
                        help="crash restart back-off start in seconds (kubelet: 10)")
    parser.add_argument("--only-namespace", action="append", metavar="NS",
                        help="schedule only this namespace's pods (repeatable; default: all namespaces)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s localnode %(levelname)s %(message)s")
    try:
        check_mount_namespaces()
        node = LocalNode(args.kubeconfig, args.state_dir, args.name, gpus=args.gpus, cpu=args.cpu,
                         memory=args.memory, backoff_base_s=args.backoff_base,
                         schedules=set(args.only_namespace).__contains__ if args.only_namespace else None)
    except LocalNodeError as exc:
        print(f"localnode: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        node.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        node.run()
    except LocalNodeError as exc:
        print(f"localnode: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
