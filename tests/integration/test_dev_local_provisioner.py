"""The real node's dev provisioner (devtools.local_provisioner) against a real API server and PV
controller: a claim of the default class gets a root-owned 0755 directory and a `local` volume the
PV controller binds; deleting the claim removes both. Its own control plane: the default
StorageClass it creates must not reach the session's shared one (other tests' claims would get it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from devtools import local_provisioner as lp
from devtools.controlplane import ControlPlane
from devtools.stack import wait_until

pytestmark = pytest.mark.integration


def test_a_claim_gets_a_root_owned_local_volume_and_loses_it_when_deleted(tmp_path: Path) -> None:
    with ControlPlane() as cp:
        api = cp.api_client()
        core = kubernetes.client.CoreV1Api(api)
        prov = lp.Provisioner(api, tmp_path / "volumes", "node-a")
        prov.ensure_storage_class()
        prov.ensure_storage_class()  # again (a restarted node): kept
        core.create_namespaced_persistent_volume_claim(
            "default",
            {
                "metadata": {"name": "ckpt"},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
            },
        )

        def bound() -> object:
            prov.run_once()
            claim = core.read_namespaced_persistent_volume_claim("ckpt", "default")
            return claim if claim.status.phase == "Bound" else None

        claim = wait_until("the claim bound", bound, timeout_s=60, interval_s=0.5)
        assert claim.spec.storage_class_name == lp.STORAGE_CLASS  # the default class, set on admission
        pv = core.read_persistent_volume(claim.spec.volume_name)
        assert pv.metadata.name == f"pvc-{claim.metadata.uid}"
        assert pv.metadata.annotations[lp.ANN_PROVISIONED_BY] == lp.PROVISIONER
        assert pv.spec.claim_ref.uid == claim.metadata.uid and pv.spec.persistent_volume_reclaim_policy == "Delete"
        term = pv.spec.node_affinity.required.node_selector_terms[0].match_expressions[0]
        assert (term.key, term.operator, term.values) == ("kubernetes.io/hostname", "In", ["node-a"])
        path = Path(pv.spec.local.path)
        assert path == tmp_path / "volumes" / f"{pv.metadata.name}_default_ckpt"
        made = path.stat()
        assert (made.st_uid, stat.S_IMODE(made.st_mode)) == (os.geteuid(), 0o755) and not any(path.iterdir())
        events = core.list_namespaced_event("default", field_selector="involvedObject.name=ckpt").items
        assert any(e.reason == "ProvisioningSucceeded" and e.source.component == lp.PROVISIONER for e in events)
        (path / "written-by-a-pod").write_text("x")

        core.delete_namespaced_persistent_volume_claim("ckpt", "default")

        def deleted() -> bool:
            prov.run_once()
            try:
                core.read_persistent_volume(pv.metadata.name)
                return False
            except ApiException as e:
                return e.status == 404

        wait_until("the released volume deleted", deleted, timeout_s=60, interval_s=0.5)
        assert not path.exists()


def test_a_claim_it_cannot_serve_stays_pending_with_the_reason(tmp_path: Path) -> None:
    with ControlPlane() as cp:
        api = cp.api_client()
        core = kubernetes.client.CoreV1Api(api)
        prov = lp.Provisioner(api, tmp_path / "volumes", "node-a")
        prov.ensure_storage_class()
        core.create_namespaced_persistent_volume_claim(
            "default",
            {
                "metadata": {"name": "picky"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "selector": {"matchLabels": {"disk": "fast"}},
                },
            },
        )

        def refused() -> bool:
            prov.run_once()
            events = core.list_namespaced_event("default", field_selector="involvedObject.name=picky").items
            return any(e.reason == "ProvisioningFailed" and "spec.selector" in e.message for e in events)

        wait_until("the refusal as an Event", refused, timeout_s=60, interval_s=0.5)
        prov.run_once()  # said once, not on every pass
        events = core.list_namespaced_event("default", field_selector="involvedObject.name=picky").items
        assert sum(e.reason == "ProvisioningFailed" for e in events) == 1
        assert core.read_namespaced_persistent_volume_claim("picky", "default").status.phase == "Pending"
        assert not (tmp_path / "volumes").exists()
