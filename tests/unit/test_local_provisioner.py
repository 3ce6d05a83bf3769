"""Pure parts of the real node's dev provisioner of `local` volumes (devtools.local_provisioner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools import local_provisioner as lp

ROOT = Path("/var/lib/sft-volumes")


def claim(name: str = "job-checkpoints", uid: str = "u1", phase: str = "Pending", **spec: Any) -> dict[str, Any]:
    body = {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "annotations": {"volume.beta.kubernetes.io/storage-provisioner": lp.PROVISIONER},
        },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": lp.STORAGE_CLASS,
            "volumeMode": "Filesystem",
        },
        "status": {"phase": phase},
    }
    body["spec"].update(spec)
    return body


def volume(
    name: str,
    phase: str = "Bound",
    policy: str = "Delete",
    by: str | None = lp.PROVISIONER,
    path: str = "/var/lib/sft-volumes/pvc-u9_ns_old",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"v-{name}", "annotations": {lp.ANN_PROVISIONED_BY: by} if by else {}},
        "spec": {"persistentVolumeReclaimPolicy": policy, "local": {"path": path}},
        "status": {"phase": phase},
    }


def test_storage_class_is_the_default_one_of_our_provisioner() -> None:
    assert lp.storage_class() == {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "local-dir", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "local-dir.sft-operator.dev",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def test_local_volume_is_pre_bound_to_the_claim_on_this_node() -> None:
    assert lp.local_volume(claim(), ROOT, "node-a") == {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": "pvc-u1",
            "annotations": {"pv.kubernetes.io/provisioned-by": "local-dir.sft-operator.dev"},
        },
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "local-dir",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": "ns",
                "name": "job-checkpoints",
                "uid": "u1",
            },
            "local": {"path": "/var/lib/sft-volumes/pvc-u1_ns_job-checkpoints"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a"]}
                            ]
                        }
                    ]
                }
            },
        },
    }


def test_plan_provisions_claims_handed_to_us_that_have_no_volume_yet() -> None:
    other_class = claim("other", uid="u2", storageClassName="fast")
    bound = claim("bound", uid="u3", phase="Bound", volumeName="pvc-u3")
    not_handed = claim("early", uid="u4")
    not_handed["metadata"]["annotations"] = {}  # the PV controller has not handed it over yet
    ga_annotation = claim("ga", uid="u5")
    ga_annotation["metadata"]["annotations"] = {"volume.kubernetes.io/storage-provisioner": lp.PROVISIONER}
    made_already = claim("made", uid="u6")  # its PV exists; the PV controller binds it
    deleting = claim("deleting", uid="u7")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    todo = lp.plan([claim(), other_class, bound, not_handed, ga_annotation, made_already, deleting], [volume("pvc-u6")])
    assert [c["metadata"]["name"] for c in todo.provision] == ["job-checkpoints", "ga"]
    assert todo.refuse == [] and todo.delete == []


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (
            {"selector": {"matchLabels": {"a": "b"}}},
            "spec.selector is not supported: a new volume has no labels to match",
        ),
        (
            {"dataSource": {"kind": "PersistentVolumeClaim", "name": "x"}},
            "spec.dataSource is not supported: volumes start empty",
        ),
        ({"volumeMode": "Block"}, "spec.volumeMode Block is not supported: volumes are directories"),
        ({"resources": {}}, "spec.resources.requests.storage is required"),
    ],
)
def test_plan_refuses_what_a_directory_cannot_be_naming_the_field(spec: dict[str, Any], why: str) -> None:
    refused = claim(**spec)
    assert lp.plan([refused], []).refuse == [(refused, why)]


def test_plan_deletes_only_our_released_volumes_with_policy_delete() -> None:
    released = volume("pvc-a", phase="Released")
    todo = lp.plan(
        [],
        [
            released,
            volume("pvc-b"),
            volume("pvc-c", phase="Released", policy="Retain"),
            volume("pvc-d", phase="Released", by="kubernetes.io/host-path"),
            volume("pvc-e", phase="Released", by=None),
        ],
    )
    assert todo.delete == [released] and todo.provision == []


def test_inside_keeps_deletes_below_the_root() -> None:
    assert lp.inside(ROOT, ROOT / "pvc-u1_ns_c")
    assert not lp.inside(ROOT, ROOT)
    assert not lp.inside(ROOT, ROOT / ".." / "etc")
    assert not lp.inside(ROOT, Path("/var/lib/sft-volumes-other/x"))
    assert not lp.inside(ROOT, Path(""))


def test_backoff_doubles_and_gives_up_after_max_attempts() -> None:
    now = [100.0]
    backoff = lp.Backoff(clock=lambda: now[0])
    assert backoff.due("k")
    due_after = []
    for attempt in range(1, lp.MAX_ATTEMPTS + 1):
        assert backoff.failed("k") == attempt
        assert not backoff.due("k")
        waited = 0.0
        while not backoff.due("k") and waited < 1000:
            now[0] += 1.0
            waited += 1.0
        due_after.append(waited)
    # 2, 4, 8, 16 s between tries, then never again (given up).
    assert due_after == [2.0, 4.0, 8.0, 16.0, 1000.0]
    backoff.forget_except(set())
    assert backoff.due("k")  # a new object with that key starts over


def test_backoff_success_clears_the_count() -> None:
    backoff = lp.Backoff(clock=lambda: 0.0)
    backoff.failed("k")
    backoff.succeeded("k")
    assert backoff.due("k")
