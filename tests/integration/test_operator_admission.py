"""The admission webhook on a real API server: the operator serves it (a local process, a
certificate for 127.0.0.1), a ValidatingWebhookConfiguration sends SFTJob CREATE/UPDATE of this
test's namespaces to it, and users act through impersonation (`kubectl --as`, or the client's
Impersonate-User header), each with an RBAC Role of their own:

- alice may create SFTJobs but not pods: refused, the message naming the permission;
- bob may create pods and claims too: admitted, and the operator's own writes (kopf's
  annotations, the status) pass while the webhook is in place;
- carol may create pods but not claims: a job that asks the operator for a claim is refused;
- hostPath: refused by the default policy, admitted by an operator whose policy allows it, and
  a job the webhook never saw is refused by the operator at reconcile, naming the field.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import admission_webhook
import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException
from operator_logs import refusals

from devtools.controlplane import free_port, fresh_namespace_name
from devtools.stack import OperatorProcess, wait_until
from sft_core import contract
from sft_operator.policy import ENV_POLICY

pytestmark = pytest.mark.integration

WEBHOOK = "validate.sftjobs.finetune.dev"
JOB_RULES = [
    {
        "apiGroups": [contract.GROUP],
        "resources": [contract.PLURAL],
        "verbs": ["create", "get", "list", "update", "patch"],
    }
]
POD_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
CLAIM_RULES = [{"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["create"]}]
HOST_PATH_REFUSAL = (
    "spec.pod.volumes[0].hostPath: host paths are not allowed by the cluster's sft-operator "
    "policy (policy.allowHostPath)"
)


def job_body(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "modelPath": "m",
            "dataPath": "/data/train.jsonl",
            "numEpochs": 1,
            "effectiveBatchSize": 2,
            "learningRate": 1e-5,
            "maxSeqLen": 64,
            "device": "cpu",
            "checkpoints": {"existingClaim": "checkpoints"},
            **spec,
        },
    }


HOST_PATH_POD = {
    "volumes": [{"name": "model", "hostPath": {"path": "/models"}}],
    "volumeMounts": [{"name": "model", "mountPath": "/models"}],
}


def wait_for(what: str, probe: Any, timeout_s: float = 60.0) -> Any:
    return wait_until(what, probe, timeout_s, interval_s=0.2)


@pytest.fixture
def namespaces(control_plane: Any, api_client: Any, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """Two namespaces: the first selected by the webhook (labelled with its own name), the second not."""
    core = kubernetes.client.CoreV1Api(api_client)
    names = (
        fresh_namespace_name(request.node.name[:30] + "-hook"),
        fresh_namespace_name(request.node.name[:30] + "-bare"),
    )
    core.create_namespace({"metadata": {"name": names[0], "labels": {"sft-admission-test": names[0]}}})
    core.create_namespace({"metadata": {"name": names[1]}})
    try:
        yield names
    finally:
        for name in names:
            core.delete_namespace(name)


@pytest.fixture
def webhook(
    control_plane: Any, api_client: Any, crd: str, namespaces: tuple[str, str], tmp_path: Path
) -> Iterator[tuple[int, Path]]:
    """The configuration, failing closed, for the first namespace only; yields (port, cert dir)."""
    port = free_port()
    cert_dir, ca_pem = admission_webhook.serving_cert(tmp_path / "webhook")
    name = f"sft-admission-{namespaces[0]}"
    api = kubernetes.client.AdmissionregistrationV1Api(api_client)
    api.create_validating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": WEBHOOK,
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                    "clientConfig": {"url": admission_webhook.url(port), "caBundle": base64.b64encode(ca_pem).decode()},
                    "namespaceSelector": {"matchLabels": {"sft-admission-test": namespaces[0]}},
                    "rules": [
                        {
                            "apiGroups": [contract.GROUP],
                            "apiVersions": [contract.VERSION],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": [contract.PLURAL],
                            "scope": "Namespaced",
                        }
                    ],
                }
            ],
        }
    )
    try:
        yield port, cert_dir
    finally:
        api.delete_validating_webhook_configuration(name)


@pytest.fixture
def users(api_client: Any, namespaces: tuple[str, str]) -> None:
    """alice: SFTJobs only; bob: SFTJobs, pods and claims; carol: SFTJobs and pods."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    for namespace in namespaces:
        for role, rules in (("sftjobs", JOB_RULES), ("pods", POD_RULES), ("claims", CLAIM_RULES)):
            rbac.create_namespaced_role(namespace, {"metadata": {"name": role}, "rules": rules})
        for user, roles in (
            ("alice", ["sftjobs"]),
            ("bob", ["sftjobs", "pods", "claims"]),
            ("carol", ["sftjobs", "pods"]),
        ):
            for role in roles:
                rbac.create_namespaced_role_binding(
                    namespace,
                    {
                        "metadata": {"name": f"{user}-{role}"},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
                    },
                )


def start_operator(
    control_plane: Any,
    namespaces: tuple[str, str],
    webhook: tuple[int, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: dict[str, Any] | None = None,
) -> OperatorProcess:
    port, cert_dir = webhook
    if policy is None:
        monkeypatch.delenv(ENV_POLICY, raising=False)
    else:
        monkeypatch.setenv(ENV_POLICY, json.dumps(policy))
    operator = OperatorProcess(
        Path(control_plane.kubeconfig),
        list(namespaces),
        tmp_path / "operator.log",
        ["--webhook-port", str(port), "--webhook-cert-dir", str(cert_dir)],
    )
    operator.start()
    wait_for("the operator's webhook", lambda: admission_webhook.listening(port))
    return operator


def as_user(control_plane: Any, user: str) -> Any:
    client = control_plane.api_client()
    client.set_default_header("Impersonate-User", user)
    return client


def create(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    return kubernetes.client.CustomObjectsApi(client).create_namespaced_custom_object(
        contract.GROUP, contract.VERSION, body["metadata"]["namespace"], contract.PLURAL, body
    )


def refusal(call: Any) -> tuple[int, str]:
    with pytest.raises(ApiException) as refused:
        call()
    return refused.value.status, json.loads(refused.value.body)["message"]


def denied(message: str) -> str:
    return f'admission webhook "{WEBHOOK}" denied the request: {message}'


def test_the_requesting_user_needs_the_permissions_the_job_uses(
    control_plane: Any,
    api_client: Any,
    namespaces: tuple[str, str],
    webhook: tuple[int, Path],
    users: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = namespaces[0]
    operator = start_operator(control_plane, namespaces, webhook, tmp_path, monkeypatch)
    try:
        # alice, through kubectl as a user would: refused at apply, the permission named.
        manifest = tmp_path / "alice.json"
        manifest.write_text(json.dumps(job_body("alice-job", ns)))
        proc = subprocess.run(
            ["kubectl", f"--kubeconfig={control_plane.kubeconfig}", "--as", "alice", "apply", "-f", str(manifest)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        assert (
            denied(f"user alice may not create pods in namespace {ns}: an SFTJob creates pods on your behalf")
            in proc.stderr
        ), proc.stderr

        with (
            as_user(control_plane, "bob") as bob,
            as_user(control_plane, "carol") as carol,
            as_user(control_plane, "alice") as alice,
        ):
            create(bob, job_body("bob-job", ns))
            # carol may create pods but not claims: a job asking the operator for a claim is refused.
            assert refusal(
                lambda: create(carol, job_body("carol-job", ns, checkpoints={"claim": {"size": "1Gi"}}))
            ) == (
                403,
                denied(
                    f"user carol may not create persistentvolumeclaims in namespace {ns}: "
                    "spec.checkpoints.claim makes the operator create a claim on your behalf"
                ),
            )
            # The operator's own validation, at apply time (CEL rules are ignored by this 1.20 API server).
            assert refusal(lambda: create(bob, job_body("too-small", ns, nnodes=4))) == (
                422,
                denied(
                    "spec.effectiveBatchSize: must be at least nnodes * nprocPerNode = 4 (one sample per GPU per step)"
                ),
            )
            # The operator reconciles bob's job: kopf's annotations (an UPDATE of the job) and the
            # status (its subresource, not matched) pass while the webhook stands.
            custom = kubernetes.client.CustomObjectsApi(api_client)
            wait_for(
                "bob's job to get a status from the operator",
                lambda: (
                    custom.get_namespaced_custom_object(
                        contract.GROUP, contract.VERSION, ns, contract.PLURAL, "bob-job"
                    ).get("status")
                    or {}
                ).get("phase"),
            )
            patch = lambda client, spec: kubernetes.client.CustomObjectsApi(client).patch_namespaced_custom_object(  # noqa: E731
                contract.GROUP, contract.VERSION, ns, contract.PLURAL, "bob-job", {"spec": spec}
            )
            assert refusal(lambda: patch(bob, {"numEpochs": 2})) == (
                422,
                denied("spec.numEpochs: immutable once the job is created"),
            )
            # alice may suspend the job (no pod of her design) but not change its pods.
            patch(alice, {"suspend": True})
            assert refusal(lambda: patch(alice, {"pod": {"image": "elsewhere/trainer:1"}})) == (
                403,
                denied(f"user alice may not create pods in namespace {ns}: an SFTJob creates pods on your behalf"),
            )
        assert refusals(operator.logs()) == [] and "Traceback" not in operator.logs(), operator.logs()[-3000:]
    finally:
        operator.stop()


def test_host_paths_follow_the_admin_policy(
    control_plane: Any,
    api_client: Any,
    namespaces: tuple[str, str],
    webhook: tuple[int, Path],
    users: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hooked, bare = namespaces
    custom = kubernetes.client.CustomObjectsApi(api_client)
    operator = start_operator(control_plane, namespaces, webhook, tmp_path, monkeypatch)
    try:
        with as_user(control_plane, "bob") as bob:
            assert refusal(lambda: create(bob, job_body("host", hooked, pod=HOST_PATH_POD))) == (
                403,
                denied(HOST_PATH_REFUSAL),
            )
            # The webhook does not see the second namespace (as with failurePolicy Ignore in an
            # outage, or a job older than the policy): the operator refuses the job itself.
            create(bob, job_body("slipped", bare, pod=HOST_PATH_POD))

            def refused_by_operator() -> Any:
                status = (
                    custom.get_namespaced_custom_object(
                        contract.GROUP, contract.VERSION, bare, contract.PLURAL, "slipped"
                    ).get("status")
                    or {}
                )
                return next((c for c in status.get("conditions", []) if c["type"] == "SpecValid"), None)

            condition = wait_for("the operator to refuse the job the webhook did not see", refused_by_operator)
            assert (condition["status"], condition["reason"], condition["message"]) == (
                "False",
                "InvalidSpec",
                HOST_PATH_REFUSAL,
            )
            with pytest.raises(ApiException) as absent:
                kubernetes.client.AppsV1Api(api_client).read_namespaced_stateful_set("slipped", bare)
            assert absent.value.status == 404
        operator.stop()

        operator = start_operator(control_plane, namespaces, webhook, tmp_path, monkeypatch, {"allowHostPath": True})
        with as_user(control_plane, "bob") as bob:
            create(bob, job_body("host", hooked, pod=HOST_PATH_POD))
        apps = kubernetes.client.AppsV1Api(api_client)
        wait_for(
            "the host-path job's StatefulSet",
            lambda: apps.list_namespaced_stateful_set(hooked, field_selector="metadata.name=host").items,
        )
        assert apps.read_namespaced_stateful_set("host", hooked).spec.replicas == 1
        operator.stop()

        # The policy turns strict again while the job runs: the restarted operator refuses it and
        # stops its pods (the StatefulSet to 0), naming the field.
        operator = start_operator(control_plane, namespaces, webhook, tmp_path, monkeypatch)
        wait_for(
            "the running host-path job's pods stopped",
            lambda: apps.read_namespaced_stateful_set("host", hooked).spec.replicas == 0,
        )
        status = (
            custom.get_namespaced_custom_object(contract.GROUP, contract.VERSION, hooked, contract.PLURAL, "host").get(
                "status"
            )
            or {}
        )
        (spec_valid,) = [c for c in status["conditions"] if c["type"] == "SpecValid"]
        assert (spec_valid["status"], spec_valid["reason"], spec_valid["message"]) == (
            "False",
            "InvalidSpec",
            HOST_PATH_REFUSAL,
        )
    finally:
        operator.stop()


def test_status_writes_never_reach_the_webhook_and_spec_writes_fail_closed(
    api_client: Any,
    namespaces: tuple[str, str],
    webhook: tuple[int, Path],
) -> None:
    """With nothing serving the webhook (failurePolicy Fail), a write of the job's spec is refused,
    while its status (the sftjobs/status subresource, the operator's writes) is not sent there at all."""
    hooked = namespaces[0]
    core, custom = kubernetes.client.CoreV1Api(api_client), kubernetes.client.CustomObjectsApi(api_client)
    label = {"metadata": {"labels": {"sft-admission-test": hooked}}}
    # The job is made while the namespace is outside the configuration's selector.
    core.patch_namespace(hooked, {"metadata": {"labels": {"sft-admission-test": None}}})
    create(api_client, job_body("quiet", hooked))
    core.patch_namespace(hooked, label)

    def spec_refused() -> bool:
        try:
            custom.patch_namespaced_custom_object(
                contract.GROUP, contract.VERSION, hooked, contract.PLURAL, "quiet", {"spec": {"maxRestarts": 5}}
            )
        except ApiException as exc:
            return 'failed calling webhook "validate.sftjobs.finetune.dev"' in json.loads(exc.body)["message"]
        return False

    wait_for("the configuration to select the namespace again", spec_refused)
    patched = custom.patch_namespaced_custom_object_status(
        contract.GROUP, contract.VERSION, hooked, contract.PLURAL, "quiet", {"status": {"phase": "Pending"}}
    )
    assert patched["status"]["phase"] == "Pending"
