"""`sft-operator suspend / resume / delete / events` and the same from Python (SFTJobHandle)
against the real control plane. Suspend and resume: the spec they write and, with --wait, the
progress they show while the status moves (driven through the status subresource, as the
operator writes it). Delete --keep-checkpoints: with the real operator and garbage collector, on a
job that owns its claim."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sftjobs import job_body
from typer.testing import CliRunner

from sft_client.api import Deletion, JobEvent, open_job
from sft_client.cli import app
from sft_core import contract

pytestmark = pytest.mark.integration

runner = CliRunner()


def cli(control_plane: Any, *args: str) -> Any:
    return runner.invoke(app, [*args, "--kubeconfig", str(control_plane.kubeconfig)])


def patch_status(cluster: Any, name: str, status: dict[str, Any]) -> None:
    cluster.custom.patch_namespaced_custom_object_status(
        contract.GROUP, contract.VERSION, cluster.ns, contract.PLURAL, name, {"status": status}
    )


def test_suspend_and_resume_from_the_cli_and_python(crd: str, control_plane: Any, cluster: Any) -> None:
    cluster.create_job(job_body("tiny", checkpoints={"existingClaim": "ckpts"}))
    ns = cluster.ns
    suspended = cli(control_plane, "suspend", "tiny", "-n", ns)
    assert (suspended.exit_code, suspended.stderr) == (0, f"sftjob.finetune.dev/tiny suspended in {ns}\n")
    assert cluster.job("tiny")["spec"]["suspend"] is True
    resumed = cli(control_plane, "resume", "tiny", "-n", ns)
    assert (resumed.exit_code, resumed.stderr) == (0, f"sftjob.finetune.dev/tiny resumed in {ns}\n")
    assert cluster.job("tiny")["spec"]["suspend"] is False

    job = open_job("tiny", ns, api_client=cluster.client)
    assert job.suspend().name == "tiny" and cluster.job("tiny")["spec"]["suspend"] is True
    job.resume()
    assert cluster.job("tiny")["spec"]["suspend"] is False

    missing = cli(control_plane, "suspend", "nope", "-n", ns)
    assert (missing.exit_code, missing.stderr.strip()) == (1, f"SFTJob {ns}/nope not found")


def test_suspend_wait_shows_progress_until_the_pods_stop(crd: str, control_plane: Any, cluster: Any) -> None:
    cluster.create_job(job_body("tiny", checkpoints={"existingClaim": "ckpts"}))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    training = {
        "stage": "Training",
        "epoch": 1,
        "numEpochs": 2,
        "samplesSeen": 6,
        "totalSamples": 16,
        "percent": 37,
        "lastLoss": "1.2500",
        "etaSeconds": 40,
    }
    saved = {
        **training,
        "stage": "Saving",
        "latestFullState": {
            "name": "samples_8",
            "path": "full_state/samples_8",
            "epoch": 1,
            "midEpoch": True,
            "time": now,
        },
        "resumable": True,
    }

    def operate() -> None:
        time.sleep(0.5)
        patch_status(cluster, "tiny", {"phase": "Suspended", "readyNodes": 2, "totalNodes": 2, "progress": training})
        time.sleep(0.3)
        patch_status(cluster, "tiny", {"phase": "Suspended", "readyNodes": 0, "totalNodes": 2, "progress": saved})

    driver = threading.Thread(target=operate)
    driver.start()
    waited = cli(control_plane, "suspend", "tiny", "--wait", "--timeout", "60", "-n", cluster.ns)
    driver.join()
    assert waited.exit_code == 0, waited.output
    assert waited.stdout == "stopped; resuming starts from full_state/samples_8\n"
    lines = waited.stderr.splitlines()
    assert lines[0] == f"sftjob.finetune.dev/tiny suspended in {cluster.ns}"
    assert f"{cluster.ns}/tiny Suspended Training epoch 1/2 samples 6/16 37% loss 1.25 eta 40s" in lines, lines
    assert lines[-1] == f"{cluster.ns}/tiny Suspended Saving epoch 1/2 samples 6/16 37% loss 1.25 eta 40s"


def test_resume_wait_ends_with_the_reason_of_a_failure(crd: str, control_plane: Any, cluster: Any) -> None:
    cluster.create_job(job_body("tiny", checkpoints={"existingClaim": "ckpts"}, suspend=True))
    failed = {
        "phase": "Failed",
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "TooManyRestarts",
                "message": "node 0: exit 1",
                "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ],
    }
    driver = threading.Timer(0.8, lambda: patch_status(cluster, "tiny", failed))
    driver.start()
    waited = cli(control_plane, "resume", "tiny", "--wait", "--timeout", "60", "-n", cluster.ns)
    driver.join()
    assert waited.exit_code == 1, waited.output
    assert waited.stderr.splitlines()[-1] == f"SFTJob {cluster.ns}/tiny failed: TooManyRestarts: node 0: exit 1"


def test_delete_keep_checkpoints_keeps_a_claim_the_job_owns(
    operator: Any, cluster: Any, control_plane: Any, garbage_collection: None
) -> None:
    owned = {"claim": {"size": "1Gi"}, "deleteWithJob": True}
    for name in ("keep", "drop"):
        cluster.create_job(job_body(name, checkpoints=owned))
    for name in ("keep", "drop"):
        cluster.wait_for(
            f"{name}'s claim, owned by the job",
            lambda name=name: (
                (claim := cluster.read("PersistentVolumeClaim", f"{name}-checkpoints"))
                and claim["metadata"].get("ownerReferences")
            ),
        )

    kept = cli(control_plane, "delete", "keep", "--keep-checkpoints", "-n", cluster.ns)
    assert kept.exit_code == 0, kept.output
    assert kept.stdout == (
        f"sftjob.finetune.dev/keep deleted from {cluster.ns}; checkpoint claim keep-checkpoints is kept: set "
        "checkpoints.deleteWithJob to false and removed the claim's owner reference to the job before deleting it\n"
    )
    assert open_job("drop", cluster.ns, api_client=cluster.client).delete() == Deletion(
        "drop-checkpoints",
        False,
        "checkpoint claim drop-checkpoints is deleted with the job (checkpoints.deleteWithJob is true)",
    )
    # The garbage collector has acted on both deletions once drop's claim and keep's StatefulSet are gone.
    cluster.wait_for(
        "drop's claim collected",
        lambda: (
            (claim := cluster.read("PersistentVolumeClaim", "drop-checkpoints")) is None
            or claim["metadata"].get("deletionTimestamp")
        ),
        timeout_s=60,
    )
    cluster.wait_for("keep's StatefulSet collected", lambda: cluster.statefulset("keep") is None, timeout_s=60)
    claim = cluster.read("PersistentVolumeClaim", "keep-checkpoints")
    assert claim is not None and claim["metadata"].get("deletionTimestamp") is None
    assert not claim["metadata"].get("ownerReferences")

    again = cli(control_plane, "delete", "keep", "-n", cluster.ns)
    assert (again.exit_code, again.stderr.strip()) == (1, f"SFTJob {cluster.ns}/keep not found")


def test_events_of_the_job_its_pods_statefulset_and_claim_oldest_first(
    crd: str, control_plane: Any, cluster: Any
) -> None:
    cluster.create_job(job_body("tiny", checkpoints={"claim": {"size": "1Gi"}}))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def event(kind: str, name: str, reason: str, minute: int, type_: str = "Normal", count: int = 1) -> None:
        at = (start + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
        cluster.core.create_namespaced_event(
            cluster.ns,
            {
                "metadata": {"name": f"{name}.{reason.lower()}.{minute}"},
                "involvedObject": {"kind": kind, "name": name, "namespace": cluster.ns},
                "reason": reason,
                "message": f"{reason} of {name} [{minute}]",
                "type": type_,
                "count": count,
                "firstTimestamp": at,
                "lastTimestamp": at,
                "source": {"component": "test"},
            },
        )

    event("Pod", "tiny-0", "Started", 3)
    event(contract.KIND, "tiny", "Created", 0)
    event("StatefulSet", "tiny", "SuccessfulCreate", 1)
    event("PersistentVolumeClaim", "tiny-checkpoints", "ProvisioningFailed", 2, "Warning", 4)
    event("Pod", "tiny-extra-0", "Started", 2)  # job tiny-extra's pod, not tiny's
    event(contract.KIND, "other", "Created", 1)

    at = [(start + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ") for m in range(4)]
    expected = [
        JobEvent(at[0], "Normal", "Created", "SFTJob/tiny", "Created of tiny [0]"),
        JobEvent(at[1], "Normal", "SuccessfulCreate", "StatefulSet/tiny", "SuccessfulCreate of tiny [1]"),
        JobEvent(
            at[2],
            "Warning",
            "ProvisioningFailed",
            "PersistentVolumeClaim/tiny-checkpoints",
            "ProvisioningFailed of tiny-checkpoints [2]",
            4,
        ),
        JobEvent(at[3], "Normal", "Started", "Pod/tiny-0", "Started of tiny-0 [3]"),
    ]
    assert open_job("tiny", cluster.ns, api_client=cluster.client).events() == expected

    shown = cli(control_plane, "events", "tiny", "-n", cluster.ns)
    assert shown.exit_code == 0, shown.output
    assert [line.rstrip().split(None, 4) for line in shown.stdout.splitlines()] == [
        ["TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        [at[0], "Normal", "Created", "SFTJob/tiny", "Created of tiny [0]"],
        [at[1], "Normal", "SuccessfulCreate", "StatefulSet/tiny", "SuccessfulCreate of tiny [1]"],
        [
            at[2],
            "Warning",
            "ProvisioningFailed",
            "PersistentVolumeClaim/tiny-checkpoints",
            "ProvisioningFailed of tiny-checkpoints [2] (x4)",
        ],
        [at[3], "Normal", "Started", "Pod/tiny-0", "Started of tiny-0 [3]"],
    ]
    assert cli(control_plane, "events", "nope", "-n", cluster.ns).exit_code == 1
