"""Laptop in, laptop out, on the REAL node (the e2e modules' shared stack, tests/e2e/conftest.py:
helm-installed operator, both images built here, the kubelet running every pod, claims as
`local` volumes):

- training_hub's own ``sft()`` example, only the import changed, with its data a JSONL file on
  this machine (``./train.jsonl``) and the cluster settings this demo stack needs: the file is
  uploaded through a helper pod of the trainer image over the exec stream to a claim made for it,
  the job trains to Succeeded reading it, and the claim belongs to the job (the garbage
  collector deletes it with the job);
- ``result.download()`` and ``sft-operator download`` bring checkpoints back byte-identical to
  the claim's files on this machine, and the helper pods are gone afterwards;
- ``sft-operator submit --data ./train.jsonl`` onto an existing checkpoint claim: uploaded once,
  a second submit of the same file sends nothing;
- training_hub's own ``sft(..., backend="kubernetes")`` (training-hub 0.11.2 imported from its
  wheel, devtools.training_hub_reference) uploads a local file and trains to Succeeded through
  our backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException
from realnode_harness import JOB_NS, POD_CPU, Jobs, digest

from devtools import training_hub_reference
from devtools.realstack import ASSETS_CLAIM, RealStack
from devtools.stack import wait_until
from sft_client.api import uploads
from sft_core import contract

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]


def helper_pods(jobs: Jobs) -> list[str]:
    return [p.metadata.name for p in jobs.core.list_namespaced_pod(JOB_NS, label_selector=uploads.LABEL_TRANSFER).items]


def cli(stack: RealStack, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "client"), str(ROOT / "core"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "sft_client", *args, "-n", JOB_NS, "--kubeconfig", str(stack.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )


def test_training_hubs_example_with_a_local_jsonl_trains_and_the_checkpoint_comes_back_byte_for_byte(
    stack: RealStack, jobs: Jobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    shutil.copyfile(jobs.assets_dir / "data.jsonl", laptop / "train.jsonl")
    monkeypatch.chdir(laptop)

    # The model's claim is the user's: only read, so the kubelet must leave its files' owner, group
    # and mode alone (it applies the pods' fsGroup to a claim whose volume source is not read-only).
    def ownership(root: Path) -> list[tuple[str, int, int, int]]:
        stats = [(path, path.stat()) for path in sorted([root, *root.rglob("*")])]
        return [(str(path.relative_to(root)), st.st_uid, st.st_gid, st.st_mode) for path, st in stats]

    model_claim_before = ownership(jobs.assets_dir)
    t = time.monotonic()

    from sft_client.api import sft  # was: from training_hub import sft

    result = sft(
        model_path=f"pvc://{ASSETS_CLAIM}/model",  # the Hub cannot be reached here: the tiny model on a claim
        data_path="./train.jsonl",
        ckpt_output_dir="./checkpoints",
        num_epochs=2,
        effective_batch_size=4,
        learning_rate=1e-3,
        max_seq_len=512,
        max_tokens_per_gpu=2048,
        nnodes=2,
        nproc_per_node=1,
        # The cluster: this demo stack (CPU, the image built here, small pods), as keyword arguments.
        name="laptop",
        namespace=JOB_NS,
        kubeconfig=str(stack.kubeconfig),
        image=stack.images["SFT_TRAINER_IMAGE"],
        device="cpu",
        checkpoint_claim_size="1Gi",
        resources={"requests": {"cpu": POD_CPU, "memory": "1Gi"}},
        pod={"antiAffinity": "Disabled", "terminationGracePeriodSeconds": 60},
        timeout=900,
    )
    print(f"sft() with an upload: {result.phase} after {time.monotonic() - t:.0f}s")
    assert result.phase == "Succeeded", result.status
    assert ownership(jobs.assets_dir) == model_claim_before  # pvc:// read-only in the volume source too
    job = jobs.job("laptop")
    local_sha = hashlib.sha256((laptop / "train.jsonl").read_bytes()).hexdigest()
    data_path = f"/mnt/pvc/laptop-upload/.sft-uploads/sha256-{local_sha[:16]}/train.jsonl"
    assert job["spec"]["dataPath"] == data_path
    # The uploaded file, on the upload claim's volume, is the local one; the claim is the job's.
    upload_dir = stack.claim_dir(JOB_NS, "laptop-upload")
    stored = upload_dir / data_path.removeprefix("/mnt/pvc/laptop-upload/")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == local_sha
    claim = jobs.core.read_namespaced_persistent_volume_claim("laptop-upload", JOB_NS)
    assert [(o.kind, o.name, o.uid) for o in claim.metadata.owner_references] == [
        (contract.KIND, "laptop", job["metadata"]["uid"])
    ]
    assert claim.spec.access_modes == ["ReadWriteMany"]
    assert helper_pods(jobs) == []

    # Laptop out: the final checkpoint, byte for byte as on the claim.
    final = result.final_checkpoint
    assert final is not None
    on_claim = jobs.claim_dir(job) / final.pod_path.removeprefix(f"{contract.CHECKPOINT_MOUNT_PATH}/")
    t = time.monotonic()
    out = result.download(to=tmp_path / "out")
    print(f"result.download(): {time.monotonic() - t:.1f}s")
    assert out == tmp_path / "out"
    assert digest(out) == digest(on_claim) and any(p.is_file() for p in out.iterdir())
    assert (out / "config.json").is_file()
    # A named one through the CLI.
    first = result.checkpoints[0]
    proc = cli(stack, "download", "laptop", first.name, "-o", str(tmp_path / "cli-out"), cwd=laptop)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "cli-out")
    assert digest(tmp_path / "cli-out") == digest(
        jobs.claim_dir(job) / first.pod_path.removeprefix(f"{contract.CHECKPOINT_MOUNT_PATH}/")
    )
    # Never over an existing directory; nothing created on the way.
    proc = cli(stack, "download", "laptop", "-o", str(tmp_path / "out"), cwd=laptop)
    assert proc.returncode == 1 and "exists and is not an empty directory" in proc.stderr, proc.stderr
    proc = cli(stack, "download", "laptop", "samples_999", "-o", str(tmp_path / "none"), cwd=laptop)
    assert proc.returncode == 1 and "has no complete checkpoint 'samples_999'" in proc.stderr, proc.stderr
    assert helper_pods(jobs) == [] and not (tmp_path / "none").exists()

    # The upload claim goes with the job (the garbage collector, through its owner reference).
    jobs.custom.delete_namespaced_custom_object(contract.GROUP, contract.VERSION, JOB_NS, contract.PLURAL, "laptop")

    def upload_claim_gone() -> bool:
        try:
            jobs.core.read_namespaced_persistent_volume_claim("laptop-upload", JOB_NS)
            return False
        except ApiException as e:
            return e.status == 404

    wait_until("the upload claim deleted with its job", upload_claim_gone, timeout_s=180, interval_s=1)


def test_cli_submit_data_uploads_to_an_existing_checkpoint_claim_once(
    stack: RealStack, jobs: Jobs, tmp_path: Path
) -> None:
    jobs.core.create_namespaced_persistent_volume_claim(
        JOB_NS,
        {
            "metadata": {"name": "shared-ckpts"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    shutil.copyfile(jobs.assets_dir / "data.jsonl", tmp_path / "train.jsonl")
    local_sha = hashlib.sha256((tmp_path / "train.jsonl").read_bytes()).hexdigest()
    common = [
        "submit",
        "--model-path",
        f"pvc://{ASSETS_CLAIM}/model",
        "--data",
        "./train.jsonl",
        "--num-epochs",
        "1",
        "--effective-batch-size",
        "2",
        "--learning-rate",
        "1e-3",
        "--max-seq-len",
        "512",
        "--max-tokens-per-gpu",
        "2048",
        "--device",
        "cpu",
        "--image",
        stack.images["SFT_TRAINER_IMAGE"],
        "--set",
        "suspend=true",
    ]  # created, not trained: this test is about the upload
    try:
        first = cli(stack, *common, "--name", "cli-a", "--ckpt-output-dir", "pvc://shared-ckpts/a", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert f"Uploaded ./train.jsonl to claim {JOB_NS}/shared-ckpts" in first.stderr, first.stderr
        stored = stack.claim_dir(JOB_NS, "shared-ckpts") / f".sft-uploads/sha256-{local_sha[:16]}/train.jsonl"
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == local_sha
        assert jobs.job("cli-a")["spec"]["dataPath"] == (
            f"/checkpoints/.sft-uploads/sha256-{local_sha[:16]}/train.jsonl"
        )
        second = cli(stack, *common, "--name", "cli-b", "--ckpt-output-dir", "pvc://shared-ckpts/b", cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        assert f"is on claim {JOB_NS}/shared-ckpts" in second.stderr and "not sent again" in second.stderr, (
            second.stderr
        )
        assert helper_pods(jobs) == []
        # The claim is the user's: no job owns it.
        assert not jobs.core.read_namespaced_persistent_volume_claim("shared-ckpts", JOB_NS).metadata.owner_references
    finally:
        jobs.core.delete_namespaced_persistent_volume_claim("shared-ckpts", JOB_NS)


def test_training_hubs_own_sft_with_backend_kubernetes_uploads_and_trains(
    stack: RealStack, jobs: Jobs, tmp_path: Path
) -> None:
    hub = training_hub_reference.install_for_import()  # the e2e fails, not skips, when it cannot
    shutil.copyfile(jobs.assets_dir / "data.jsonl", tmp_path / "train.jsonl")
    script = textwrap.dedent(f"""
        import json
        import sft_client.api  # registers the backend "kubernetes"
        from training_hub import sft

        result = sft(model_path="pvc://{ASSETS_CLAIM}/model", data_path="./train.jsonl",
                     ckpt_output_dir="./checkpoints", num_epochs=1, effective_batch_size=4, learning_rate=1e-3,
                     max_seq_len=512, max_tokens_per_gpu=2048, backend="kubernetes",
                     # cluster settings travel in training_hub's **kwargs
                     name="via-hub", namespace={JOB_NS!r}, kubeconfig={str(stack.kubeconfig)!r},
                     image={stack.images["SFT_TRAINER_IMAGE"]!r}, device="cpu", checkpoint_claim_size="1Gi",
                     resources={{"requests": {{"cpu": {POD_CPU!r}, "memory": "1Gi"}}}},
                     pod={{"terminationGracePeriodSeconds": 60}}, timeout=900)
        print(json.dumps({{"phase": result.phase, "checkpoints": result.checkpoint_paths,
                          "module": type(result).__module__}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hub), str(ROOT / "operator"), str(ROOT)])}
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=1200, cwd=tmp_path, env=env
    )
    print(proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"training_hub's sft(backend='kubernetes'): {found['phase']} after {time.monotonic() - t:.0f}s")
    assert found["phase"] == "Succeeded" and found["module"] == "sft_client.api.results", found
    assert found["checkpoints"] and all(
        p.startswith("pvc://via-hub-checkpoints/checkpoints/hf_format/") for p in found["checkpoints"]
    ), found
    local_sha = hashlib.sha256((tmp_path / "train.jsonl").read_bytes()).hexdigest()
    assert jobs.job("via-hub")["spec"]["dataPath"] == (
        f"/mnt/pvc/via-hub-upload/.sft-uploads/sha256-{local_sha[:16]}/train.jsonl"
    )
    claim = jobs.core.read_namespaced_persistent_volume_claim("via-hub-upload", JOB_NS)
    assert claim.spec.access_modes == ["ReadWriteOnce"]  # one node
    assert [o.name for o in claim.metadata.owner_references] == ["via-hub"]
    assert helper_pods(jobs) == []
