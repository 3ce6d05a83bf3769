"""The operator's diff base storage builds kopf's essence of a job without deep-copying what the
essence drops, and its progress storage clears kopf's annotations from an essence without a deep
copy: the same essences as kopf's own, for bodies as the API server sends them."""

from __future__ import annotations

import json

import kopf
import pytest

from sft_core import contract
from sft_operator.kopf_storage import LeanDiffBaseStorage, LeanProgressStorage

IGNORED = ["metadata.labels", "metadata.annotations"]
SPEC = {"modelPath": "/models/tiny", "nnodes": 2, "checkpoints": {"existingClaim": "shared"}}


def body(**metadata: object) -> dict:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {
            "name": "j",
            "namespace": "ns",
            "uid": "u-1",
            "generation": 3,
            "resourceVersion": "42",
            "labels": {"team": "a"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": json.dumps({"spec": SPEC}),
                f"{contract.GROUP}/last-handled-configuration": json.dumps({"spec": SPEC}),
                "note": "kept",
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:nnodes": {}}}}],
            **metadata,
        },
        "spec": SPEC,
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


@pytest.mark.parametrize("ignored", [IGNORED, []])
@pytest.mark.parametrize(
    "raw",
    [
        body(),
        body(labels={}, annotations={}),
        {**body(), "status": None},
        {k: v for k, v in body().items() if k != "status"},
    ],
)
def test_the_same_essence_as_kopfs(raw: dict, ignored: list[str]) -> None:
    ours = LeanDiffBaseStorage(prefix=contract.GROUP, ignored_fields=ignored)
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix=contract.GROUP, ignored_fields=ignored)
    assert ours.build(body=kopf.Body(raw)) == kopfs.build(body=kopf.Body(raw))


def test_extra_fields_are_kopfs_way() -> None:
    ours = LeanDiffBaseStorage(prefix=contract.GROUP, ignored_fields=IGNORED)
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix=contract.GROUP, ignored_fields=IGNORED)
    raw = kopf.Body(body())
    assert ours.build(body=raw, extra_fields=["status.phase"]) == kopfs.build(body=raw, extra_fields=["status.phase"])
    assert ours.build(body=raw, extra_fields=["status.phase"])["status"] == {"phase": "Running"}


@pytest.mark.parametrize(
    "raw", [body(), body(labels={}, annotations={f"{contract.GROUP}/x": "1"}), body(annotations={})]
)
def test_progress_annotations_cleared_as_kopf_does(raw: dict) -> None:
    """What kopf compares: the essence less our prefix's annotations, as kopf's own storage
    leaves it; ours works on the essence kopf hands it (a private copy) instead of copying it."""
    built = kopf.AnnotationsDiffBaseStorage(prefix=contract.GROUP).build(body=kopf.Body(raw))
    kopfs = kopf.AnnotationsProgressStorage(prefix=contract.GROUP).clear(essence=json.loads(json.dumps(built)))
    essence = json.loads(json.dumps(built))
    ours = LeanProgressStorage(prefix=contract.GROUP).clear(essence=essence)
    assert ours == kopfs and ours is essence
    assert not [key for key in ours.get("metadata", {}).get("annotations", {}) if key.startswith(f"{contract.GROUP}/")]
