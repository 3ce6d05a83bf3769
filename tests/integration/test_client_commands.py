"""`sft-operator submit / status / list / wait` against the real control plane (through a
kubeconfig, as a user runs them). Status is driven through the status subresource, as the
operator would write it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from typer.testing import CliRunner

from sft_client.cli import app
from sft_core import contract
from sft_models.models import SFTJobStatus

pytestmark = pytest.mark.integration

# Until the status reporter's fields are in SFTJobStatus, the CRD's status schema prunes
# status.progress; then the checkpoint assertions below apply.
PROGRESS_IN_STATUS = "progress" in SFTJobStatus.model_fields

runner = CliRunner()

FLAGS = [
    "--model-path",
    "/models/tiny",
    "--data-path",
    "/data/train.jsonl",
    "--ckpt-output-dir",
    "pvc://ckpts/tiny",
    "--num-epochs",
    "2",
    "--effective-batch-size",
    "4",
    "--learning-rate",
    "1e-4",
    "--max-seq-len",
    "128",
    "--device",
    "cpu",
]


def custom(api_client: Any) -> Any:
    return kubernetes.client.CustomObjectsApi(api_client)


def patch_status(api_client: Any, namespace: str, name: str, status: dict[str, Any]) -> None:
    custom(api_client).patch_namespaced_custom_object_status(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name, {"status": status}
    )


def cli(control_plane: Any, *args: str) -> Any:
    return runner.invoke(app, [*args, "--kubeconfig", str(control_plane.kubeconfig)])


def test_submit_status_list(crd: str, control_plane: Any, api_client: Any, namespace: str) -> None:
    created = cli(control_plane, "submit", *FLAGS, "--name", "tiny", "-n", namespace)
    assert created.exit_code == 0, created.output
    assert created.stdout == "tiny\n"
    assert created.stderr == f"sftjob.finetune.dev/tiny created in {namespace}\n"
    job = custom(api_client).get_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL, "tiny"
    )
    assert job["spec"]["checkpoints"]["existingClaim"] == "ckpts" and job["spec"]["device"] == "cpu"

    status = cli(control_plane, "status", "tiny", "-n", namespace)
    assert status.exit_code == 0, status.output
    assert status.stdout.split() == ["Job", f"{namespace}/tiny", "Phase", "Pending", "No", "checkpoints", "yet."]

    progress = {
        "stage": "Training",
        "epoch": 2,
        "numEpochs": 2,
        "samplesSeen": 12,
        "totalSamples": 16,
        "percent": 75,
        "lastLoss": "0.5000",
        "etaSeconds": 30,
        "checkpoints": [
            {
                "name": "samples_8",
                "path": "hf_format/samples_8",
                "samples": 8,
                "epoch": 1,
                "time": "2026-11-27T10:00:00Z",
            }
        ],
    }
    patch_status(api_client, namespace, "tiny", {"phase": "Running", "nodes": "1/1", "progress": progress})
    status = cli(control_plane, "status", "tiny", "-n", namespace)
    assert status.exit_code == 0, status.output
    assert "Running" in status.stdout
    if PROGRESS_IN_STATUS:
        for fact in (
            "Training",
            "2/2",
            "12/16",
            "75%",
            "0.5",
            "30s",
            "samples_8",
            "pvc://ckpts/tiny/hf_format/samples_8",
        ):
            assert fact in status.stdout, (fact, status.stdout)
    as_yaml = cli(control_plane, "status", "tiny", "-n", namespace, "-o", "yaml")
    assert yaml.safe_load(as_yaml.stdout)["phase"] == "Running"

    listed = cli(control_plane, "list", "-n", namespace)
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "PHASE",
        "NODES",
        "EPOCH",
        "PROGRESS",
        "LOSS",
        "ETA",
        "LATEST",
        "CHECKPOINT",
        "AGE",
    ]
    assert row.split()[:3] == ["tiny", "Running", "1/1"]

    missing = cli(control_plane, "status", "nope", "-n", namespace)
    assert missing.exit_code == 1 and missing.stderr.strip() == f"SFTJob {namespace}/nope not found"


def test_submit_a_manifest_file_and_list_an_empty_namespace(
    crd: str, control_plane: Any, api_client: Any, namespace: str, tmp_path: Path
) -> None:
    assert cli(control_plane, "list", "-n", namespace).stdout == f"No SFTJobs in {namespace}.\n"
    manifest = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "from-file"},
        "spec": {
            "modelPath": "/models/m",
            "dataPath": "/data/d.jsonl",
            "numEpochs": 1,
            "effectiveBatchSize": 1,
            "learningRate": 1e-5,
            "maxSeqLen": 64,
            "checkpoints": {"existingClaim": "c"},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert cli(control_plane, "submit", "-f", str(path), "-n", namespace).exit_code == 0
    (job,) = custom(api_client).list_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL
    )["items"]
    assert job["metadata"]["name"] == "from-file"
    assert (job["spec"]["modelPath"], job["spec"]["checkpoints"]["existingClaim"]) == ("/models/m", "c")

    bad = cli(control_plane, "submit", *FLAGS, "--name", "Bad", "-n", namespace)
    assert bad.exit_code == 2 and "name (metadata.name)" in bad.stderr
    assert (
        len(
            custom(api_client).list_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL
            )["items"]
        )
        == 1
    )


@pytest.mark.parametrize(
    ("final", "exit_code", "stream", "expected"),
    [
        (
            {
                "phase": "Succeeded",
                "progress": {
                    "checkpoints": [
                        {"name": "samples_16", "path": "hf_format/samples_16", "time": "2026-11-27T10:00:00Z"}
                    ]
                },
            },
            0,
            "stdout",
            "pvc://ckpts/tiny/hf_format/samples_16\n",
        ),
        (
            {
                "phase": "Failed",
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "RestartLimitExceeded",
                        "message": "exit 1",
                        "lastTransitionTime": "2026-11-27T10:00:00Z",
                    }
                ],
            },
            1,
            "stderr",
            "SFTJob {ns}/tiny failed: RestartLimitExceeded: exit 1\n",
        ),
    ],
    ids=["succeeded", "failed"],
)
def test_wait_exits_with_the_jobs_outcome(
    crd: str,
    control_plane: Any,
    api_client: Any,
    namespace: str,
    final: dict[str, Any],
    exit_code: int,
    stream: str,
    expected: str,
) -> None:
    assert cli(control_plane, "submit", *FLAGS, "--name", "tiny", "-n", namespace).exit_code == 0
    # `wait` as a user runs it (its own process); each status change is made once `wait` has
    # printed the previous one, so every phase is seen however slow the machine is.
    waiting = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("sft-operator")),
            "wait",
            "tiny",
            "-n",
            namespace,
            "--timeout",
            "60",
            "--kubeconfig",
            str(control_plane.kubeconfig),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None and waiting.stdout is not None
        progress_lines = [waiting.stderr.readline().rstrip("\n")]
        assert progress_lines[0] == f"{namespace}/tiny Pending"
        patch_status(api_client, namespace, "tiny", {"phase": "Running"})
        while not progress_lines[-1].startswith(f"{namespace}/tiny Running"):
            line = waiting.stderr.readline()
            assert line, f"wait ended without showing Running: {progress_lines}"
            progress_lines.append(line.rstrip("\n"))
        patch_status(api_client, namespace, "tiny", final)
        out, rest = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == exit_code, (out, rest)
    if stream == "stdout":
        assert out == (expected if PROGRESS_IN_STATUS else "")
    else:
        assert rest.splitlines(keepends=True)[-1] == expected.format(ns=namespace)


def test_wait_timeout_exits_124(crd: str, control_plane: Any, namespace: str) -> None:
    assert cli(control_plane, "submit", *FLAGS, "--name", "tiny", "-n", namespace).exit_code == 0
    waited = cli(control_plane, "wait", "tiny", "-n", namespace, "--timeout", "1")
    assert waited.exit_code == 124
    assert "keeps running" in waited.stderr
