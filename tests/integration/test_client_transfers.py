"""Uploads and downloads on the real control plane (no kubelet, so no helper pod ever runs):
the claim and the restricted helper pod as the API server stores them, both deleted again when
the pod cannot start, no job created, nothing left on this machine; and the rights a user lacks,
named before anything is created (SelfSubjectAccessReviews as the user: a ServiceAccount's own
token), and from the API server's own 403 of the exec stream."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from devtools.controlplane import request_service_account_token
from sft_client.api import TransferError, TransferForbiddenError, sft, transfer, uploads
from sft_client.api.download import download_checkpoint
from sft_core import contract

TRAINING: dict[str, Any] = dict(
    model_path="pvc://models/tiny",
    num_epochs=1,
    effective_batch_size=2,
    learning_rate=1e-4,
    max_seq_len=64,
    max_tokens_per_gpu=128,
    nnodes=2,
)
DATA = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


class Recorder:
    """What the client creates, as the API server stores it: pods and claims with the transfer
    labels, polled every 50 ms until stopped."""

    def __init__(self, api_client: Any, namespace: str):
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.namespace = namespace
        self.pods: dict[str, Any] = {}
        self.claims: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pod in self.core.list_namespaced_pod(self.namespace, label_selector=uploads.LABEL_TRANSFER).items:
                self.pods.setdefault(pod.metadata.name, pod)
            for claim in self.core.list_namespaced_persistent_volume_claim(
                self.namespace, label_selector=uploads.LABEL_TRANSFER
            ).items:
                self.claims.setdefault(claim.metadata.name, claim)
            time.sleep(0.05)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def left(
        self, expected: tuple[list[str], list[str]] = ([], []), within_s: float = 20.0
    ) -> tuple[list[str], list[str]]:
        """The pods and claims still in the namespace, once they are ``expected`` or after ``within_s``:
        a deleted claim goes only when kube-controller-manager's pvc-protection lets it (after its pod
        is gone), a moment later on a loaded machine."""
        deadline = time.monotonic() + within_s
        while True:
            pods = [p.metadata.name for p in self.core.list_namespaced_pod(self.namespace).items]
            claims = [c.metadata.name for c in self.core.list_namespaced_persistent_volume_claim(self.namespace).items]
            if (pods, claims) == expected or time.monotonic() > deadline:
                return pods, claims
            time.sleep(0.2)


@pytest.fixture
def short_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper pod gets 3 s to run (none ever does here)."""
    monkeypatch.setattr(transfer, "HELPER_START_TIMEOUT_S", 3.0)


@pytest.fixture
def data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    Path("train.jsonl").write_bytes(DATA)
    return "./train.jsonl"


def jobs_in(api_client: Any, namespace: str) -> list[str]:
    body = kubernetes.client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL
    )
    return [j["metadata"]["name"] for j in body["items"]]


def test_an_upload_whose_pod_cannot_start_leaves_no_pod_no_claim_and_no_job(
    crd: str, api_client: Any, namespace: str, data_file: str, short_start: None
) -> None:
    with Recorder(api_client, namespace) as seen, pytest.raises(TransferError) as failed:
        sft(
            **TRAINING,
            data_path=data_file,
            ckpt_output_dir="./runs/a",
            checkpoint_claim_size="1Gi",
            storage_class="standard",
            name="tiny",
            namespace=namespace,
            image="sft-trainer:test",
            api_client=api_client,
            show_progress=False,
            wait=False,
        )
    assert str(failed.value).startswith(f"pod {namespace}/tiny-upload-")
    assert str(failed.value).endswith("did not start within 3s: not scheduled yet")

    (claim,) = seen.claims.values()
    assert claim.metadata.name == "tiny-upload"
    assert claim.metadata.labels == {"finetune.dev/transfer": "upload", "finetune.dev/transfer-for": "tiny"}
    assert claim.metadata.annotations == {
        uploads.ANNOTATION_UPLOAD_SHA256: hashlib.sha256(DATA).hexdigest(),
        uploads.ANNOTATION_UPLOAD_SOURCE: "train.jsonl",
    }
    assert (claim.spec.access_modes, claim.spec.resources.requests, claim.spec.storage_class_name) == (
        ["ReadWriteMany"],
        {"storage": "1Gi"},
        "standard",
    )  # 1024Mi as the API server writes it; nnodes 2: written once, read from two nodes
    (pod,) = seen.pods.values()
    spec = pod.spec
    container = spec.containers[0]
    assert (spec.restart_policy, spec.automount_service_account_token, spec.active_deadline_seconds) == (
        "Never",
        False,
        uploads.HELPER_POD_DEADLINE_S,
    )
    assert (
        spec.security_context.run_as_non_root,
        spec.security_context.run_as_user,
        spec.security_context.fs_group,
        spec.security_context.seccomp_profile.type,
    ) == (True, 65532, 65532, "RuntimeDefault")
    assert (
        container.image,
        container.security_context.allow_privilege_escalation,
        container.security_context.capabilities.drop,
        container.security_context.read_only_root_filesystem,
    ) == ("sft-trainer:test", False, ["ALL"], True)
    assert [(v.name, v.persistent_volume_claim.claim_name) for v in spec.volumes] == [("claim", "tiny-upload")]
    # Everything the upload made is gone, and no job was created.
    assert seen.left() == ([], [])
    assert jobs_in(api_client, namespace) == []


def test_an_upload_to_an_existing_checkpoint_claim_creates_no_claim_and_leaves_it_alone(
    crd: str, api_client: Any, namespace: str, data_file: str, short_start: None
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "ckpts"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    with Recorder(api_client, namespace) as seen, pytest.raises(TransferError):
        sft(
            **TRAINING,
            data_path=data_file,
            ckpt_output_dir="pvc://ckpts/run1",
            name="tiny",
            namespace=namespace,
            api_client=api_client,
            show_progress=False,
            wait=False,
        )
    assert seen.claims == {}
    (pod,) = seen.pods.values()
    assert [v.persistent_volume_claim.claim_name for v in pod.spec.volumes] == ["ckpts"]
    assert seen.left(([], ["ckpts"])) == ([], ["ckpts"])
    assert jobs_in(api_client, namespace) == []


def test_a_download_whose_pod_cannot_start_mounts_read_only_and_keeps_nothing(
    crd: str, api_client: Any, namespace: str, tmp_path: Path, short_start: None
) -> None:
    custom = kubernetes.client.CustomObjectsApi(api_client)
    job = custom.create_namespaced_custom_object(
        contract.GROUP,
        contract.VERSION,
        namespace,
        contract.PLURAL,
        {
            "apiVersion": contract.API_VERSION,
            "kind": contract.KIND,
            "metadata": {"name": "done"},
            "spec": {
                "modelPath": "/m",
                "dataPath": "/d.jsonl",
                "numEpochs": 1,
                "effectiveBatchSize": 1,
                "learningRate": 1e-4,
                "maxSeqLen": 8,
                "checkpoints": {"existingClaim": "ckpts", "path": "run1"},
                "pod": {"image": "sft-trainer:test"},
            },
        },
    )
    job = custom.patch_namespaced_custom_object_status(
        contract.GROUP,
        contract.VERSION,
        namespace,
        contract.PLURAL,
        "done",
        {
            "status": {
                "phase": "Succeeded",
                "progress": {
                    "checkpoints": [
                        {"name": "samples_8", "path": "hf_format/samples_8", "time": "2026-12-07T12:00:00Z"}
                    ]
                },
            }
        },
    )
    out = tmp_path / "out"
    with Recorder(api_client, namespace) as seen, pytest.raises(TransferError) as failed:
        download_checkpoint(api_client, job, out, show_progress=False)
    assert "did not start within 3s" in str(failed.value)
    (pod,) = seen.pods.values()
    assert pod.metadata.labels == {"finetune.dev/transfer": "download", "finetune.dev/transfer-for": "done"}
    assert [(v.persistent_volume_claim.claim_name, v.persistent_volume_claim.read_only) for v in pod.spec.volumes] == [
        ("ckpts", True)
    ]
    assert pod.spec.containers[0].volume_mounts[0].read_only is True
    assert pod.spec.security_context.fs_group is None  # nothing on the claim is changed
    assert seen.left() == ([], [])
    assert list(tmp_path.iterdir()) == []  # neither out/ nor a partial directory


@pytest.fixture
def carol(control_plane: Any, api_client: Any, namespace: str) -> Iterator[Any]:
    """carol may create SFTJobs and pods (as the admission webhook asks) but not exec into pods
    nor create claims. A ServiceAccount with a token of its own, not impersonation: the
    kubernetes client's websocket (the exec stream) sends no Impersonate-User header, so an
    impersonated exec would run as the admin."""
    kubernetes.client.CoreV1Api(api_client).create_namespaced_service_account(
        namespace, {"metadata": {"name": "carol"}}
    )
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    rules = [
        {"apiGroups": [contract.GROUP], "resources": [contract.PLURAL], "verbs": ["create", "get", "list"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "delete"]},
    ]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "carol"}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "carol"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "carol"},
            "subjects": [{"kind": "ServiceAccount", "name": "carol", "namespace": namespace}],
        },
    )
    with control_plane.api_client(request_service_account_token(api_client, namespace, "carol")) as client:
        yield client


def test_missing_rights_are_named_before_anything_is_created(
    crd: str, api_client: Any, namespace: str, data_file: str, carol: Any
) -> None:
    with Recorder(api_client, namespace) as seen, pytest.raises(TransferForbiddenError) as refused:
        sft(
            **TRAINING,
            data_path=data_file,
            ckpt_output_dir="./runs/a",
            checkpoint_claim_size="1Gi",
            name="tiny",
            namespace=namespace,
            api_client=carol,
            show_progress=False,
            wait=False,
        )
    assert str(refused.value) == (
        f"uploading ./train.jsonl needs these rights in namespace {namespace}, which you lack: create pods/exec, "
        "get pods/exec, create persistentvolumeclaims, patch persistentvolumeclaims, delete persistentvolumeclaims "
        "(a short-lived pod receives the file through the exec stream into a claim made for it)"
    )
    assert isinstance(refused.value, PermissionError)
    assert (seen.pods, seen.claims, seen.left(), jobs_in(api_client, namespace)) == ({}, {}, ([], []), [])


def test_the_api_servers_403_of_the_exec_stream_names_the_rights(
    crd: str, api_client: Any, namespace: str, carol: Any
) -> None:
    # A pod to exec into (it never runs: the refusal comes first, from the API server's RBAC).
    kubernetes.client.CoreV1Api(api_client).create_namespaced_pod(
        namespace,
        {"metadata": {"name": "target"}, "spec": {"containers": [{"name": uploads.HELPER_CONTAINER, "image": "x"}]}},
    )
    with pytest.raises(TransferForbiddenError) as refused:
        transfer.open_exec(carol, namespace, "target", ["true"], action="uploading ./train.jsonl")
    message = str(refused.value)
    assert message.startswith(
        f"uploading ./train.jsonl needs these rights in namespace {namespace}, which you lack: create pods/exec, "
        "get pods/exec (it execs a copy program in the pod): the API server said: "
    )
    assert (
        f'User "system:serviceaccount:{namespace}:carol" cannot get resource "pods/exec" in API group "" in the '
        f'namespace "{namespace}"'
    ) in message
