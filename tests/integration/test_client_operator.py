"""What sft() submits, run by the real operator: the pvc:// paths become pod volumes and the
launcher's training arguments, and following the job sees the phases the operator writes."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from sft_client.api import follow_job, sft
from sft_core import contract
from sft_models.models import parse_job
from sft_models.naming import configmap_name, statefulset_name

pytestmark = pytest.mark.integration


class Reached(Exception):
    pass


def test_the_operator_runs_what_sft_submits(operator: Any, cluster: Any, api_client: Any, namespace: str) -> None:
    result = sft(
        model_path="pvc://models/tiny",
        data_path="pvc://datasets/sft/train.jsonl",
        ckpt_output_dir="runs/a",
        num_epochs=1,
        effective_batch_size=2,
        learning_rate=1e-4,
        max_seq_len=128,
        nnodes=2,
        keep_last_checkpoint_only=True,
        checkpoint_claim_size="1Gi",
        device="cpu",
        name="from-sft",
        namespace=namespace,
        api_client=api_client,
        wait=False,
        show_progress=False,
    )
    job = parse_job(cluster.job(result.name))
    sts = cluster.wait_for("the StatefulSet", lambda: cluster.statefulset(statefulset_name(job)))
    pod = sts["spec"]["template"]["spec"]
    volumes = pod["volumes"]  # claims only read from: read-only in the source (the kubelet leaves them alone)
    assert {"name": "pvc-models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in volumes
    assert {"name": "pvc-datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}} in volumes
    (container,) = [c for c in pod["containers"] if c["name"] == contract.TRAINER_CONTAINER]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/mnt/pvc/models"] == {"name": "pvc-models", "mountPath": "/mnt/pvc/models", "readOnly": True}
    assert mounts["/mnt/pvc/datasets"]["readOnly"] is True
    assert mounts[contract.CHECKPOINT_MOUNT_PATH]["name"] == contract.CHECKPOINT_VOLUME

    config = cluster.read("ConfigMap", configmap_name(job))
    args = json.loads(config["data"][contract.CONFIG_FILE_NAME])[contract.CONFIG_KEY_TRAINING_ARGS]
    assert (args["model_path"], args["data_path"], args["ckpt_output_dir"]) == (
        "/mnt/pvc/models/tiny",
        "/mnt/pvc/datasets/sft/train.jsonl",
        "/checkpoints/runs/a",
    )
    assert args["keep_last_checkpoint_only"] is True

    # Following the job sees what the operator writes: Pending, then Running once pods run.
    phases: list[str] = []

    def on_change(obj: dict[str, Any]) -> None:
        phase = (obj.get("status") or {}).get("phase", "")
        if not phases or phases[-1] != phase:
            phases.append(phase)
        if phase == "Running":
            raise Reached

    kubelet = threading.Thread(target=cluster.run_all_pods, args=(result.name, 2))
    kubelet.start()
    try:
        with pytest.raises(Reached):
            follow_job(api_client, result.name, namespace, on_change, timeout=60)
    finally:
        kubelet.join(timeout=60)
    assert phases[-2:] == ["Pending", "Running"]
