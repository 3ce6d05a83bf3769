"""Volume contents for the dev local node: pod volumes -> files in local directories.

``volume_files`` and friends are pure (API objects in, {relative path: bytes} out); ``VolumeWriter``
reads the API and writes them under the local node's state directory.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from kubernetes.client.exceptions import ApiException

from .localnode_api import KubeRest
from .localnode_plan import PodConfigError, field_ref_value

DEFAULT_MODE = 0o644
ROOT_CA_CONFIG_MAP = "kube-root-ca.crt"


def object_data(obj: Mapping[str, Any] | None, kind: str) -> dict[str, bytes] | None:
    """A ConfigMap's data+binaryData or a Secret's decoded data, as bytes; None if absent."""
    if obj is None:
        return None
    out: dict[str, bytes] = {}
    if kind == "secret":
        for key, value in (obj.get("data") or {}).items():
            out[key] = base64.b64decode(value)
        for key, value in (obj.get("stringData") or {}).items():
            out[key] = value.encode()
    else:
        for key, value in (obj.get("data") or {}).items():
            out[key] = value.encode()
        for key, value in (obj.get("binaryData") or {}).items():
            out[key] = base64.b64decode(value)
    return out


def key_files(
    kind: str, name: str, data: Mapping[str, bytes] | None, items: list[Mapping[str, Any]] | None,
    optional: bool,
) -> dict[str, bytes]:
    """The files of a configMap/secret volume (or projected source): all keys, or ``items``."""
    if data is None:
        if optional:
            return {}
        raise PodConfigError(f'{kind} "{name}" not found')
    if not items:
        return dict(data)
    files: dict[str, bytes] = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise PodConfigError(f"couldn't find key {item['key']} in {kind} {name}")
        files[_relative(item.get("path") or item["key"])] = data[item["key"]]
    return files


def downward_files(pod: Mapping[str, Any], items: list[Mapping[str, Any]]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for item in items:
        if "fieldRef" not in item:
            raise PodConfigError(f"downwardAPI item {item.get('path')!r}: only fieldRef is supported by the local node")
        files[_relative(item["path"])] = field_ref_value(pod, item["fieldRef"]["fieldPath"]).encode()
    return files


def _relative(path: str) -> str:
    if path.startswith("/") or ".." in PurePosixPath(path).parts:
        raise PodConfigError(f"volume item path {path!r} must be relative and must not contain '..'")
    return path


def write_files(directory: Path, files: Mapping[str, bytes], mode: int) -> None:
    """Writes the files in place (same inodes), so bind mounts of the directory see updates."""
    directory.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)


def persistent_volume_for(claim: Mapping[str, Any], host_dir: Path, pv_name: str) -> dict[str, Any]:
    """A hostPath PV pre-bound to the claim, so the PV controller marks the claim Bound."""
    spec = claim.get("spec") or {}
    meta = claim["metadata"]
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {"sft-operator.dev/local-node": "true"}},
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.get("storageClassName") or "",
            "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
        },
    }


def pv_name_for(namespace: str, claim: str, uid: str) -> str:
    # PV names are cluster-wide: the claim's uid keeps them unique across recreated claims.
    return f"localnode-{namespace}-{claim}-{uid[:8]}"[:253]


class VolumeWriter:
    """Materializes a pod's volumes under the local node's state dir from the API."""

    def __init__(self, rest: KubeRest, ca_pem: bytes, token_seconds: int = 3600):
        self.rest = rest
        self.ca_pem = ca_pem
        self.token_seconds = token_seconds

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.rest.get(path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def data(self, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
        plural = "secrets" if kind == "secret" else "configmaps"
        obj = self._get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        data = object_data(obj, kind)
        if data is None and kind == "configmap" and name == ROOT_CA_CONFIG_MAP:
            # 1.20's root-CA publisher may lag the pod; the node knows the CA itself.
            return {"ca.crt": self.ca_pem}
        return data

    def write(self, pod: Mapping[str, Any], volume: Mapping[str, Any], directory: Path) -> None:
        namespace = pod["metadata"]["namespace"]
        if "emptyDir" in volume:
            directory.mkdir(parents=True, exist_ok=True)
        elif "hostPath" in volume:
            kind = volume["hostPath"].get("type") or ""
            if kind == "FileOrCreate":
                directory.parent.mkdir(parents=True, exist_ok=True)
                directory.touch(exist_ok=True)
            elif kind in ("", "DirectoryOrCreate"):
                directory.mkdir(parents=True, exist_ok=True)
            elif not directory.exists():
                raise PodConfigError(f"hostPath {directory} (type {kind}) does not exist")
        elif "persistentVolumeClaim" in volume:
            directory.mkdir(parents=True, exist_ok=True)
            self.bind_claim(namespace, volume["persistentVolumeClaim"]["claimName"], directory)
        elif "configMap" in volume:
            ref = volume["configMap"]
            files = key_files("configmap", ref["name"], self.data("configmap", namespace, ref["name"]),
                              ref.get("items"), bool(ref.get("optional")))
            write_files(directory, files, ref.get("defaultMode", DEFAULT_MODE))
        elif "secret" in volume:
            ref = volume["secret"]
            files = key_files("secret", ref["secretName"], self.data("secret", namespace, ref["secretName"]),
                              ref.get("items"), bool(ref.get("optional")))
            write_files(directory, files, ref.get("defaultMode", DEFAULT_MODE))
        elif "downwardAPI" in volume:
            ref = volume["downwardAPI"]
            write_files(directory, downward_files(pod, ref.get("items") or []), ref.get("defaultMode", DEFAULT_MODE))
        elif "projected" in volume:
            ref = volume["projected"]
            write_files(directory, self.projected_files(pod, ref.get("sources") or []),
                        ref.get("defaultMode", DEFAULT_MODE))
        else:  # volume_dirs() already rejected it; keep the error close to the cause anyway
            raise PodConfigError(f"volume {volume['name']!r} is not supported by the local node")

    def projected_files(self, pod: Mapping[str, Any], sources: list[Mapping[str, Any]]) -> dict[str, bytes]:
        namespace = pod["metadata"]["namespace"]
        files: dict[str, bytes] = {}
        for source in sources:
            if "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                files[_relative(sat["path"])] = self.token(pod, sat.get("audience"), sat.get("expirationSeconds"))
            elif "configMap" in source:
                ref = source["configMap"]
                files.update(key_files("configmap", ref["name"], self.data("configmap", namespace, ref["name"]),
                                       ref.get("items"), bool(ref.get("optional"))))
            elif "secret" in source:
                ref = source["secret"]
                files.update(key_files("secret", ref["name"], self.data("secret", namespace, ref["name"]),
                                       ref.get("items"), bool(ref.get("optional"))))
            elif "downwardAPI" in source:
                files.update(downward_files(pod, source["downwardAPI"].get("items") or []))
            else:
                raise PodConfigError(f"projected source {sorted(source)} is not supported by the local node")
        return files

    def token(self, pod: Mapping[str, Any], audience: str | None, seconds: int | None) -> bytes:
        """A pod-bound service-account token from the TokenRequest API."""
        meta, spec = pod["metadata"], pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": int(seconds or self.token_seconds),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            },
        }
        try:
            response = self.rest.post(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token", body)
        except ApiException as exc:
            raise PodConfigError(
                f"TokenRequest for service account {meta['namespace']}/{account} failed: {exc.status} {exc.reason}"
            ) from exc
        return response["status"]["token"].encode()

    def bind_claim(self, namespace: str, claim_name: str, directory: Path) -> None:
        """Binds a Pending claim to a hostPath PV on its directory (best effort: the pod runs anyway)."""
        claim = self._get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim_name}")
        if claim is None:
            raise PodConfigError(f'persistentvolumeclaim "{claim_name}" not found')
        if (claim.get("spec") or {}).get("volumeName") or (claim.get("status") or {}).get("phase") == "Bound":
            return
        pv = persistent_volume_for(claim, directory, pv_name_for(namespace, claim_name, claim["metadata"]["uid"]))
        try:
            self.rest.post("/api/v1/persistentvolumes", pv)
        except ApiException as exc:
            if exc.status != 409:
                raise
