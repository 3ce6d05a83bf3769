"""A job never deletes a claim it did not create: the claim records its creator's uid, and only
that job may own it (deleteWithJob). A job created again under the same name with
deleteWithJob: true finds its predecessor's kept claim and leaves it unowned, and says so."""

from __future__ import annotations

import copy
from typing import Any

from test_children_resume import RecordingKube, cluster_with

from devtools.tiny_model import tiny_job_spec
from sft_models import naming
from sft_models.models import Reason, parse_job
from sft_operator import render, render_meta
from sft_operator.children import converge, ensure_child
from sft_operator.spec_checks import check_checkpoint_claim

CREATED_BY = "finetune.dev/created-by-uid"


def job(uid: str, delete_with_job: bool) -> Any:
    spec = tiny_job_spec(checkpoints={"claim": {"size": "1Gi"}, "deleteWithJob": delete_with_job})
    return parse_job({"metadata": {"name": "tiny", "namespace": "ns", "uid": uid}, "spec": spec})


def owner(uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "name": "tiny",
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def stored_claim(creator: str | None, owners: list[str]) -> dict[str, Any]:
    claim = copy.deepcopy(render.render_checkpoint_claim(job("uid-x", False)))
    claim["metadata"]["annotations"] = {CREATED_BY: creator} if creator is not None else {}
    if owners:
        claim["metadata"]["ownerReferences"] = [owner(uid) for uid in owners]
    claim["metadata"]["resourceVersion"] = "7"
    return claim


def converged_claim(existing: dict[str, Any], sft_job: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    kube, manifest = RecordingKube({}), render.render_checkpoint_claim(sft_job)
    assert manifest is not None
    result = ensure_child(kube, manifest, copy.deepcopy(existing))
    return result, kube.replaced


def test_the_creator_is_recorded_on_the_claim() -> None:
    assert render.render_checkpoint_claim(job("uid-new", True))["metadata"]["annotations"] == {CREATED_BY: "uid-new"}
    assert naming.claim_creator(stored_claim("uid-old", [])) == "uid-old"
    assert naming.claim_creator(stored_claim(None, [])) is None


def test_created_by() -> None:
    assert naming.created_by(stored_claim("uid-new", []), "uid-new") is True
    assert naming.created_by(stored_claim("uid-old", ["uid-new"]), "uid-new") is False  # the annotation decides
    # Before the annotation: the job that already owns it created it; else nobody we know.
    assert naming.created_by(stored_claim(None, ["uid-new"]), "uid-new") is True
    assert naming.created_by(stored_claim(None, []), "uid-new") is False


def test_a_recreated_job_never_takes_its_predecessors_claim() -> None:
    kept = stored_claim("uid-old", [])
    result, replaced = converged_claim(kept, job("uid-new", True))
    assert replaced == [] and result == kept  # no owner reference: deleting the new job keeps it


def test_a_claim_owned_by_its_creator_stays_as_it_is() -> None:
    # The old job's reference (its deletion still under way) is neither removed nor joined.
    claimed = stored_claim("uid-old", ["uid-old"])
    result, replaced = converged_claim(claimed, job("uid-new", True))
    assert replaced == [] and result["metadata"]["ownerReferences"] == [owner("uid-old")]


def test_the_creator_may_own_it_and_let_it_go() -> None:
    _, replaced = converged_claim(stored_claim("uid-new", []), job("uid-new", True))
    assert [c["metadata"]["ownerReferences"] for c in replaced] == [[owner("uid-new")]]
    _, replaced = converged_claim(stored_claim("uid-new", ["uid-new"]), job("uid-new", False))
    assert [c["metadata"]["ownerReferences"] for c in replaced] == [[]]
    # an owner reference of another kind is kept either way
    other = stored_claim("uid-new", [])
    other["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "c"}]
    _, replaced = converged_claim(other, job("uid-new", True))
    assert [c["metadata"]["ownerReferences"] for c in replaced] == [
        [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "c"}, owner("uid-new")]
    ]


def test_the_volume_condition_says_the_claim_is_kept() -> None:
    claim = stored_claim("uid-old", [])
    assert check_checkpoint_claim(1, claim, "tiny-checkpoints", created_by_other="uid-old").message == (
        "PersistentVolumeClaim tiny-checkpoints, created by another SFTJob (uid uid-old): kept when this job is "
        "deleted (spec.checkpoints.deleteWithJob applies only to a claim the job created)"
    )
    assert check_checkpoint_claim(1, claim, "tiny-checkpoints").message == "PersistentVolumeClaim tiny-checkpoints"


def test_converge_reports_the_kept_claim() -> None:
    recreated = job("uid-new", True)
    children = render.render_children(recreated)
    children = [stored_claim("uid-old", []) if m["kind"] == "PersistentVolumeClaim" else m for m in children]
    stored, known = cluster_with(children)
    kube = RecordingKube(stored)
    done = converge(kube, recreated, None, fresh=False, reporter_image=render_meta.DEFAULT_REPORTER_IMAGE, known=known)
    assert (done.volume.ok, done.volume.reason) == (True, Reason.CLAIM_FOUND)
    assert "created by another SFTJob (uid uid-old)" in done.volume.message
    assert not [m for m in kube.replaced if m["kind"] == "PersistentVolumeClaim"]
    # its own claim: nothing said
    own = job("uid-new", True)
    stored, known = cluster_with(render.render_children(own))
    done = converge(
        RecordingKube(stored), own, None, fresh=False, reporter_image=render_meta.DEFAULT_REPORTER_IMAGE, known=known
    )
    assert done.volume.message == "PersistentVolumeClaim tiny-checkpoints"
