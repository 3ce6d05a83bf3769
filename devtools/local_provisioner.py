"""DEV-ONLY dynamic provisioner of `local` PersistentVolumes for the local real node
(devtools.node): the node's storage, made to behave like a real cluster's.

A claim of the default StorageClass ``local-dir`` (provisioner ``local-dir.sft-operator.dev``,
reclaimPolicy Delete, volumeBindingMode Immediate) gets a fresh directory under ``--root``, owned
by root with mode 0755 (what a CSI driver's fresh volume looks like: EBS, PD, Ceph, most NFS
exports), and a `local` PersistentVolume pre-bound to it (claimRef, nodeAffinity to this node,
``pv.kubernetes.io/provisioned-by``); the PV controller completes the binding. A Released volume
of ours (its claim deleted) loses its directory, then its PV.

Why `local` and not hostPath: the kubelet applies a pod's ``fsGroup`` (group ownership, the
setgid bit, ``fsGroupChangePolicy``) to a `local` volume on its first read-write mount
(pkg/volume/local in 1.20: SetVolumeOwnership), never to hostPath. Kubernetes' own hostPath
provisioner made its directories root-owned 0750 and the node used to open them to everyone
(mode 0777), which hid that a non-root pod without ``fsGroup`` cannot write a real cluster's
volume. Here nothing is opened: a pod writes its claim only if its securityContext makes it
writable, as on a cluster.

Why its own process, started and stopped by devtools.node next to the kubelet (not in the
control plane, not in the DNS helper): it is a node-level piece, as a local-volume provisioner's
DaemonSet pod is on each node; its directories live on this machine. Without a node, claims stay
Pending with the PV controller's "waiting for a volume to be created ... by external provisioner",
as on a cluster whose storage driver is down.

It polls claims and volumes every ``--interval`` seconds (a real provisioner watches through
informers; each pass here decides from what the API says, so a restart loses nothing but retry
counts). A failed provision or delete is retried with a doubling delay, at most MAX_ATTEMPTS
times, then given up with a Warning Event on the claim (as the external-provisioner library
reports ProvisioningFailed). It creates its StorageClass at start and exits non-zero if it cannot
(the node reports its log).

    python -m devtools.local_provisioner --kubeconfig K --node-name N --root DIR
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STORAGE_CLASS = "local-dir"
PROVISIONER = "local-dir.sft-operator.dev"
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
# Set on a claim by the PV controller when an external provisioner must act (1.20: the beta
# name; 1.23+ also the GA one).
ANN_STORAGE_PROVISIONER = ("volume.beta.kubernetes.io/storage-provisioner", "volume.kubernetes.io/storage-provisioner")
ANN_DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
HOSTNAME_LABEL = "kubernetes.io/hostname"
DIR_MODE = 0o755  # a fresh volume's root as a CSI driver leaves it: root's, writable by root only
MAX_ATTEMPTS = 5
FIRST_RETRY_S = 2.0
MAX_RETRY_S = 60.0
START_ATTEMPTS = 10


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} local-provisioner: {msg}", flush=True)


@contextlib.contextmanager
def root_umask() -> Iterator[None]:
    """Files and directories made inside get the modes root's usual umask 022 gives (0644, 0755),
    whatever umask this process was started with (the umask is the process's: single-threaded
    callers only)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def storage_class() -> dict[str, Any]:
    """The default StorageClass this provisioner serves."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {ANN_DEFAULT_CLASS: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        # Immediate: one node, and a claim can be filled before any pod uses it (the demo's assets).
        "volumeBindingMode": "Immediate",
    }


def volume_name(claim: dict[str, Any]) -> str:
    """The PV's name for a claim: pvc-<claim uid>, as external provisioners name theirs."""
    return f"pvc-{claim['metadata']['uid']}"


def volume_dir(root: Path, claim: dict[str, Any]) -> Path:
    """The claim's directory: named by its PV, namespace and claim (readable in `ls`)."""
    meta = claim["metadata"]
    return root / f"{volume_name(claim)}_{meta['namespace']}_{meta['name']}"


def local_volume(claim: dict[str, Any], root: Path, node_name: str) -> dict[str, Any]:
    """The `local` PersistentVolume for a claim: its size and access modes, pre-bound to it,
    on this node only, deleted with the claim."""
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": volume_name(claim), "annotations": {ANN_PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": list(spec["accessModes"]),
            "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "local": {"path": str(volume_dir(root, claim))},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node_name]}]}
                    ]
                }
            },
        },
    }


def refusal(claim: dict[str, Any]) -> str | None:
    """Why this provisioner cannot serve a claim of its class (None: it can)."""
    spec = claim["spec"]
    if spec.get("selector"):
        return "spec.selector is not supported: a new volume has no labels to match"
    if spec.get("dataSource") or spec.get("dataSourceRef"):
        return "spec.dataSource is not supported: volumes start empty"
    if spec.get("volumeMode", "Filesystem") != "Filesystem":
        return f"spec.volumeMode {spec['volumeMode']} is not supported: volumes are directories"
    if not ((spec.get("resources") or {}).get("requests") or {}).get("storage"):
        return "spec.resources.requests.storage is required"
    if not spec.get("accessModes"):
        return "spec.accessModes is required"
    return None


def wants_us(claim: dict[str, Any]) -> bool:
    """A pending claim of our class that the PV controller handed to us (its annotation)."""
    meta, spec = claim["metadata"], claim["spec"]
    annotations = meta.get("annotations") or {}
    return (
        spec.get("storageClassName") == STORAGE_CLASS
        and not spec.get("volumeName")
        and not meta.get("deletionTimestamp")
        and (claim.get("status") or {}).get("phase", "Pending") == "Pending"
        and any(annotations.get(a) == PROVISIONER for a in ANN_STORAGE_PROVISIONER)
    )


def ours(volume: dict[str, Any]) -> bool:
    return ((volume["metadata"].get("annotations") or {}).get(ANN_PROVISIONED_BY)) == PROVISIONER


@dataclass(frozen=True)
class Plan:
    provision: list[dict[str, Any]] = field(default_factory=list)  # claims
    refuse: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (claim, why)
    delete: list[dict[str, Any]] = field(default_factory=list)  # volumes


def plan(claims: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> Plan:
    """What one pass does, from the API's claims and volumes: provision each claim handed to us
    that has no volume of ours yet, refuse what we cannot serve, delete our Released volumes whose
    policy is Delete."""
    existing = {v["metadata"]["name"] for v in volumes}
    result = Plan()
    for claim in claims:
        if not wants_us(claim) or volume_name(claim) in existing:
            continue
        why = refusal(claim)
        if why:
            result.refuse.append((claim, why))
        else:
            result.provision.append(claim)
    for volume in volumes:
        if (
            ours(volume)
            and (volume.get("status") or {}).get("phase") == "Released"
            and volume["spec"].get("persistentVolumeReclaimPolicy") == "Delete"
            and not volume["metadata"].get("deletionTimestamp")
        ):
            result.delete.append(volume)
    return result


def inside(root: Path, path: Path) -> bool:
    """Is ``path`` a directory strictly below ``root`` (never root itself, never outside it)?"""
    root, path = Path(os.path.abspath(root)), Path(os.path.abspath(path))
    return path != root and root in path.parents


class Backoff:
    """Bounded retries per key (a claim's or a volume's uid): after a failure the key is due again
    FIRST_RETRY_S later, doubling up to MAX_RETRY_S; after MAX_ATTEMPTS failures it is given up."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.failures: dict[str, tuple[int, float]] = {}  # key -> (failures, due at)

    def due(self, key: str) -> bool:
        failures, at = self.failures.get(key, (0, 0.0))
        return failures < MAX_ATTEMPTS and self.clock() >= at

    def failed(self, key: str) -> int:
        """Record a failure; returns the failures so far (MAX_ATTEMPTS: given up)."""
        failures = self.failures.get(key, (0, 0.0))[0] + 1
        delay = min(FIRST_RETRY_S * 2 ** (failures - 1), MAX_RETRY_S)
        self.failures[key] = (failures, self.clock() + delay)
        return failures

    def succeeded(self, key: str) -> None:
        self.failures.pop(key, None)

    def forget_except(self, keys: set[str]) -> None:
        """Drop the counts of keys no longer seen (a deleted claim's)."""
        for key in set(self.failures) - keys:
            del self.failures[key]


class Provisioner:
    def __init__(self, api_client: Any, root: Path, node_name: str):
        import kubernetes

        self.api = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.storage = kubernetes.client.StorageV1Api(api_client)
        self.root, self.node_name = root, node_name
        self.backoff = Backoff()
        self.refused: set[str] = set()  # claims told once why they stay Pending

    def _list(self, call: Callable[..., Any]) -> list[dict[str, Any]]:
        return json.loads(call(_preload_content=False).data)["items"]

    def ensure_storage_class(self) -> None:
        """Create our StorageClass (kept if it is there already); say so if another default class
        exists (two defaults make 1.20 refuse every claim without a class)."""
        from kubernetes.client.exceptions import ApiException

        body = storage_class()
        try:
            self.storage.create_storage_class(body)
            log(f"created the default StorageClass {STORAGE_CLASS} (provisioner {PROVISIONER})")
        except ApiException as e:
            if e.status != 409:
                raise
            found = json.loads(self.storage.read_storage_class(STORAGE_CLASS, _preload_content=False).data)
            if found.get("provisioner") != PROVISIONER:
                raise RuntimeError(
                    f"StorageClass {STORAGE_CLASS} exists with provisioner "
                    f"{found.get('provisioner')!r}, not {PROVISIONER}"
                ) from None
        for sc in self._list(self.storage.list_storage_class):
            name = sc["metadata"]["name"]
            if name != STORAGE_CLASS and (sc["metadata"].get("annotations") or {}).get(ANN_DEFAULT_CLASS) == "true":
                log(
                    f"warning: StorageClass {name} is a default class too: claims without a class are refused "
                    f"until one of them is not (a control plane kept from before this provisioner?)"
                )

    def event(self, claim: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = claim["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": PROVISIONER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except Exception as e:  # an Event is a courtesy: the log has it too
            log(f"could not post Event {reason} on {meta['namespace']}/{meta['name']}: {e}")

    def run_once(self) -> Plan:
        claims = self._list(self.core.list_persistent_volume_claim_for_all_namespaces)
        volumes = self._list(self.core.list_persistent_volume)
        todo = plan(claims, volumes)
        for claim, why in todo.refuse:
            if claim["metadata"]["uid"] not in self.refused:
                self.refused.add(claim["metadata"]["uid"])
                log(f"claim {claim['metadata']['namespace']}/{claim['metadata']['name']}: not provisioned: {why}")
                self.event(claim, "Warning", "ProvisioningFailed", why)
        for claim in todo.provision:
            what = f"provisioning claim {claim['metadata']['namespace']}/{claim['metadata']['name']}"
            self._attempt(claim["metadata"]["uid"], what, lambda c=claim: self.provision(c), claim)
        for volume in todo.delete:
            what = f"deleting volume {volume['metadata']['name']}"
            self._attempt(volume["metadata"]["uid"], what, lambda v=volume: self.delete(v), None)
        self.backoff.forget_except({c["metadata"]["uid"] for c in claims} | {v["metadata"]["uid"] for v in volumes})
        return todo

    def _attempt(self, key: str, what: str, action: Callable[[], None], claim: dict[str, Any] | None) -> None:
        if not self.backoff.due(key):
            return
        try:
            action()
            self.backoff.succeeded(key)
        except Exception as e:
            failures = self.backoff.failed(key)
            gave_up = failures >= MAX_ATTEMPTS
            log(f"{what}: {'gave up after attempt' if gave_up else 'failed, attempt'} {failures}/{MAX_ATTEMPTS}: {e}")
            if claim is not None and (gave_up or failures == 1):
                self.event(claim, "Warning", "ProvisioningFailed", f"{e}{' (given up)' if gave_up else ' (retrying)'}")

    def provision(self, claim: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = claim["metadata"]
        path = volume_dir(self.root, claim)
        with root_umask():  # exactly DIR_MODE, root's
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            path.mkdir(mode=DIR_MODE, exist_ok=True)
        try:
            self.core.create_persistent_volume(local_volume(claim, self.root, self.node_name))
        except ApiException as e:
            if e.status != 409:  # 409: made by an earlier pass whose list was older
                raise RuntimeError(f"creating PV {volume_name(claim)}: HTTP {e.status} {e.reason}") from None
        log(f"provisioned {volume_name(claim)} for claim {meta['namespace']}/{meta['name']}: {path}")
        self.event(claim, "Normal", "ProvisioningSucceeded", f"Successfully provisioned volume {volume_name(claim)}")

    def delete(self, volume: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        name = volume["metadata"]["name"]
        path = Path(((volume["spec"].get("local") or {}).get("path")) or "")
        if not inside(self.root, path):
            raise RuntimeError(f"PV {name}: path {str(path)!r} is not below {self.root}; not removing it")
        if path.exists():
            shutil.rmtree(path)
        try:
            self.core.delete_persistent_volume(name)
        except ApiException as e:
            if e.status != 404:
                raise RuntimeError(f"deleting PV {name}: HTTP {e.status} {e.reason}") from None
        log(f"deleted {name} (claim {(volume['spec'].get('claimRef') or {}).get('name')} released) and {path}")


def main(argv: list[str] | None = None) -> int:
    import kubernetes

    p = argparse.ArgumentParser(prog="python -m devtools.local_provisioner", description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node-name", required=True, help="the node the volumes are on (its hostname label)")
    p.add_argument("--root", type=Path, required=True, help="where the volumes' directories go")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between passes")
    a = p.parse_args(argv)
    prov = Provisioner(kubernetes.config.new_client_from_config(a.kubeconfig), a.root.resolve(), a.node_name)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            prov.ensure_storage_class()
            break
        except Exception as e:
            if attempt == START_ATTEMPTS:
                log(f"error: cannot set up StorageClass {STORAGE_CLASS}: {e}")
                return 1
            time.sleep(1.0)
    log(f"serving StorageClass {STORAGE_CLASS}: local volumes on node {a.node_name} under {prov.root}")
    last_error = ""
    while True:
        try:
            prov.run_once()
            last_error = ""
        except Exception as e:  # the API away for a moment: next pass; said once per new error
            if str(e) != last_error:
                log(f"pass failed (retrying every {a.interval:g}s): {e}")
                last_error = str(e)
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
