"""Checkpoint ownership on the REAL node (the e2e modules' shared stack, tests/e2e/conftest.py:
helm-installed operator, both images built here, the kubelet running the pods): a job trains to Succeeded on its own claim
and is deleted (the claim is kept); created again under the same name with another learning
rate, it finds the kept claim and is refused, Failed ConfigRejected naming the directory and the
first job, the finished run's files byte-identical; created again with the same training fields
(and deleteWithJob: true) it adopts the run, Succeeded without training, and says so in its
status and an Event; it does not own the claim it did not create, so deleting it keeps the
claim."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from realnode_harness import JOB_NS, Jobs, condition, digest

from devtools.stack import wait_until
from sft_core import contract, ownership
from sft_core.checkpoints import OWNER_FILE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

NAME = "owned"


def delete_and_wait(jobs: Jobs, name: str) -> None:
    jobs.custom.delete_namespaced_custom_object(contract.GROUP, contract.VERSION, JOB_NS, contract.PLURAL, name)

    def gone() -> bool:
        try:
            jobs.job(name)
            return False
        except ApiException as e:
            if e.status == 404:
                return True
            raise

    wait_until(f"{name} deleted", gone, timeout_s=120, interval_s=0.5)
    wait_until(f"{name}'s pods gone", lambda: not jobs.pods(name), timeout_s=180, interval_s=1)


def test_a_recreated_job_is_refused_with_other_training_fields_and_adopts_with_the_same(jobs: Jobs) -> None:
    t = time.monotonic()
    manifest = jobs.manifest(NAME, numEpochs=1, nnodes=1)  # ownership is per claim, not per rank
    first = jobs.create(copy.deepcopy(manifest))
    old_uid = first["metadata"]["uid"]
    status = jobs.follow(NAME).get("status") or {}
    assert status.get("phase") == "Succeeded", status
    print(f"first run Succeeded after {time.monotonic() - t:.0f}s")
    root = jobs.claim_dir(first)
    wait_until("the first job's pods gone", lambda: not jobs.pods(NAME), timeout_s=180, interval_s=1)
    record, _ = ownership.read_owner_record(root)
    assert record is not None and [(o.uid, o.acquired) for o in record.owners] == [(old_uid, ownership.Acquired.NEW)]
    finished = digest(root)
    delete_and_wait(jobs, NAME)

    # The same name, another learning rate: the kept claim holds the first job's finished run.
    jobs.create(jobs.manifest(NAME, numEpochs=1, nnodes=1, learningRate=2e-3))
    status = jobs.follow(NAME).get("status") or {}
    failed = condition(status, "Failed")
    assert (status.get("phase"), failed["reason"]) == ("Failed", "ConfigRejected"), status
    assert (
        f"spec.checkpoints: /checkpoints holds the checkpoints of SFTJob {JOB_NS}/{NAME} (uid {old_uid}) "
        "(sft-operator/COMPLETED, "
    ) in failed["message"], failed
    assert (
        "trained with other training fields (learningRate 0.001 -> 0.002); set spec.checkpoints.adoptExisting: "
        "true to continue from them, or use another spec.checkpoints.path"
    ) in failed["message"], failed
    assert (status.get("progress") or {}).get("stage") != "Completed", status  # the other run is not reported
    wait_until("the refused job's pods gone", lambda: not jobs.pods(NAME), timeout_s=180, interval_s=1)
    assert digest(root) == finished, "the refused job changed the finished run's files"
    delete_and_wait(jobs, NAME)

    # The same manifest again (GitOps: delete and re-apply), asking deleteWithJob of the kept claim.
    same = copy.deepcopy(manifest)
    same["spec"]["checkpoints"] = {**same["spec"]["checkpoints"], "deleteWithJob": True}
    third = jobs.create(same)
    status = jobs.follow(NAME).get("status") or {}
    assert status.get("phase") == "Succeeded", status
    adoption: dict[str, Any] = (status.get("progress") or {}).get("adoption") or {}
    expected = f"adopted checkpoints of SFTJob {JOB_NS}/{NAME} (uid {old_uid}): same training fields"
    assert (adoption.get("previousUid"), adoption.get("reason"), adoption.get("message")) == (
        old_uid,
        "SameTrainingFields",
        expected,
    ), status
    wait_until(
        "the AdoptedCheckpoints Event",
        lambda: [
            e
            for e in jobs.events(NAME)
            if e.reason == "AdoptedCheckpoints"
            and e.message == expected
            and e.involved_object.uid == third["metadata"]["uid"]
        ],
        timeout_s=60,
        interval_s=1,
    )
    volume = condition(status, "CheckpointVolume")
    assert f"created by another SFTJob (uid {old_uid}): kept when this job is deleted" in volume["message"], volume
    record, _ = ownership.read_owner_record(root)
    assert [(o.uid, o.acquired) for o in record.owners] == [
        (old_uid, ownership.Acquired.NEW),
        (third["metadata"]["uid"], ownership.Acquired.SAME_TRAINING_FIELDS),
    ]
    after = digest(root)
    assert {k: v for k, v in after.items() if k != OWNER_FILE} == {k: v for k, v in finished.items() if k != OWNER_FILE}

    # deleteWithJob did not make it the claim's owner: deleting the job keeps the checkpoints.
    claim_name = f"{NAME}-checkpoints"
    claim = jobs.core.read_namespaced_persistent_volume_claim(claim_name, JOB_NS)
    assert not claim.metadata.owner_references, claim.metadata.owner_references
    assert claim.metadata.annotations.get("finetune.dev/created-by-uid") == old_uid
    delete_and_wait(jobs, NAME)
    time.sleep(10)  # the garbage collector's turn
    claim = jobs.core.read_namespaced_persistent_volume_claim(claim_name, JOB_NS)
    assert claim.metadata.deletion_timestamp is None, "deleting the job deleted a claim it did not create"
    jobs.core.delete_namespaced_persistent_volume_claim(claim_name, JOB_NS)
    print(f"ownership e2e: {time.monotonic() - t:.0f}s")
