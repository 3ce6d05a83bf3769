"""The admission review (admission.py): the LocalSubjectAccessReview built from the request's
userInfo, and every decision with its exact message and code."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sft_operator import admission
from sft_operator.admission import Permission, Refusal, access_review, review
from sft_operator.policy import AdmissionPolicy

SPEC: dict[str, Any] = {
    "modelPath": "/models/m",
    "dataPath": "/data/train.jsonl",
    "numEpochs": 1,
    "effectiveBatchSize": 8,
    "learningRate": 1e-5,
    "maxSeqLen": 64,
    "checkpoints": {"claim": {"size": "1Gi"}},
}
ALICE = {
    "username": "alice",
    "uid": "u-1",
    "groups": ["team-a", "system:authenticated"],
    "extra": {"scopes.example/tier": ["gold"]},
}


def job(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "j", "namespace": "team-a", "uid": "1"},
        "spec": {**copy.deepcopy(SPEC), **spec},
    }


class Authorizer:
    """Answers reviews from a set of (verb, resource) the user holds; records what it was asked."""

    def __init__(self, *held: tuple[str, str]):
        self.held = set(held)
        self.asked: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> bool:
        self.asked.append(body)
        attributes = body["spec"]["resourceAttributes"]
        return (attributes["verb"], attributes["resource"]) in self.held


def asked(authorizer: Authorizer) -> list[tuple[str, str]]:
    return [
        (b["spec"]["resourceAttributes"]["verb"], b["spec"]["resourceAttributes"]["resource"]) for b in authorizer.asked
    ]


def refusal(*args: Any) -> Refusal:
    with pytest.raises(Refusal) as refused:
        review(*args)
    return refused.value


def test_access_review_carries_the_requesting_user() -> None:
    permission = Permission("create", "pods", "why")
    assert access_review(ALICE, "team-a", permission) == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": "team-a"},
        "spec": {
            "resourceAttributes": {"namespace": "team-a", "verb": "create", "group": "", "resource": "pods"},
            "user": "alice",
            "groups": ["team-a", "system:authenticated"],
            "uid": "u-1",
            "extra": {"scopes.example/tier": ["gold"]},
        },
    }
    # A user without uid and extra (a token file's, a certificate's): those keys are left out.
    assert access_review({"username": "bob", "groups": []}, "ns", permission)["spec"] == {
        "resourceAttributes": {"namespace": "ns", "verb": "create", "group": "", "resource": "pods"},
        "user": "bob",
        "groups": [],
    }


def test_create_asks_for_pods_and_the_claim() -> None:
    authorizer = Authorizer(("create", "pods"), ("create", "persistentvolumeclaims"))
    review("CREATE", job(), None, ALICE, AdmissionPolicy(), authorizer)
    assert asked(authorizer) == [("create", "pods"), ("create", "persistentvolumeclaims")]
    # An existing claim: the operator creates none, so the user needs no claim permission.
    authorizer = Authorizer(("create", "pods"))
    review("CREATE", job(checkpoints={"existingClaim": "c"}), None, ALICE, AdmissionPolicy(), authorizer)
    assert asked(authorizer) == [("create", "pods")]


def test_create_refused_without_pods_naming_the_permission() -> None:
    refused = refusal("CREATE", job(), None, ALICE, AdmissionPolicy(), Authorizer(("create", "persistentvolumeclaims")))
    assert (refused.message, refused.code, refused.why) == (
        "user alice may not create pods in namespace team-a: an SFTJob creates pods on your behalf",
        403,
        "forbidden",
    )
    refused = refusal("CREATE", job(), None, ALICE, AdmissionPolicy(), Authorizer(("create", "pods")))
    assert (refused.message, refused.code) == (
        "user alice may not create persistentvolumeclaims in namespace team-a: spec.checkpoints.claim makes the "
        "operator create a claim on your behalf",
        403,
    )


def test_named_secrets_need_the_requesters_read_permission_on_each() -> None:
    remote = {"huggingFace": {"tokenSecret": "hf-token"}, "s3": {"credentialsSecret": "s3-creds"}}
    authorizer = Authorizer(("create", "pods"), ("create", "persistentvolumeclaims"), ("get", "secrets"))
    review("CREATE", job(modelPath="hf://org/x", remote=remote), None, ALICE, AdmissionPolicy(), authorizer)
    assert [b["spec"]["resourceAttributes"] for b in authorizer.asked][2:] == [
        {"namespace": "team-a", "verb": "get", "group": "", "resource": "secrets", "name": "hf-token"},
        {"namespace": "team-a", "verb": "get", "group": "", "resource": "secrets", "name": "s3-creds"},
    ]
    refused = refusal(
        "CREATE",
        job(modelPath="hf://org/x", remote=remote),
        None,
        ALICE,
        AdmissionPolicy(),
        Authorizer(("create", "pods"), ("create", "persistentvolumeclaims")),
    )
    assert (refused.message, refused.code) == (
        "user alice may not get secrets/hf-token in namespace team-a: spec.remote.huggingFace.tokenSecret makes "
        "the job use Secret hf-token's credentials on your behalf",
        403,
    )


def test_invalid_spec_refused_with_the_operators_messages() -> None:
    authorizer = Authorizer(("create", "pods"), ("create", "persistentvolumeclaims"))
    refused = refusal(
        "CREATE", job(numEpochs=0, effectiveBatchSize=1, nnodes=2), None, ALICE, AdmissionPolicy(), authorizer
    )
    assert (refused.message, refused.code, refused.why) == (
        "spec.numEpochs: Input should be greater than or equal to 1",
        422,
        "invalid",
    )
    refused = refusal(
        "CREATE",
        job(effectiveBatchSize=1, nnodes=2, checkpoints={"existingClaim": "c"}),
        None,
        ALICE,
        AdmissionPolicy(),
        authorizer,
    )
    assert (
        refused.message
        == "spec.effectiveBatchSize: must be at least nnodes * nprocPerNode = 2 (one sample per GPU per step)"
    )
    assert authorizer.asked == []  # nothing asked for a job that cannot run


def test_policy_refused_before_permissions() -> None:
    authorizer = Authorizer(("create", "pods"), ("create", "persistentvolumeclaims"))
    body = job(pod={"volumes": [{"name": "h", "hostPath": {"path": "/"}}]})
    refused = refusal("CREATE", body, None, ALICE, AdmissionPolicy(), authorizer)
    assert (refused.message, refused.code, refused.why) == (
        "spec.pod.volumes[0].hostPath: host paths are not allowed by the cluster's sft-operator policy "
        "(policy.allowHostPath)",
        403,
        "policy",
    )
    review("CREATE", body, None, ALICE, AdmissionPolicy(allow_host_path=True), authorizer)


def test_update_without_a_spec_change_is_admitted_as_is() -> None:
    """kopf's annotations, label edits, finalizers: the operator's own writes need no pod permission."""
    old = job()
    new = copy.deepcopy(old)
    new["metadata"]["annotations"] = {"finetune.dev/last-handled-configuration": "{}"}
    nobody = Authorizer()
    review("UPDATE", new, old, {"username": "system:serviceaccount:sft-system:sft"}, AdmissionPolicy(), nobody)
    # Even a job the operator would refuse (created before the webhook, or the policy) is left
    # alone while its spec stays: its status says why.
    old = job(pod={"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, numEpochs=0)
    review("UPDATE", copy.deepcopy(old), old, ALICE, AdmissionPolicy(), nobody)
    deleting = copy.deepcopy(old)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    deleting["metadata"]["finalizers"] = []
    review("UPDATE", deleting, old, ALICE, AdmissionPolicy(), nobody)
    assert nobody.asked == []
    # A job held by a finalizer of the user's own is still reviewed when its spec changes.
    valid = job()
    held = copy.deepcopy(valid)
    held["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    held["spec"]["pod"] = {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    assert refusal("UPDATE", held, valid, ALICE, AdmissionPolicy(), nobody).why == "policy"


def test_update_of_run_control_fields_needs_no_pod_permission() -> None:
    old = job()
    new = job(suspend=True, maxRestarts=5, activeDeadlineSeconds=60)
    nobody = Authorizer()
    review("UPDATE", new, old, {"username": "system:serviceaccount:kueue-system:kueue"}, AdmissionPolicy(), nobody)
    assert nobody.asked == []
    # ... but it is still validated.
    refused = refusal("UPDATE", job(maxRestarts=-1), old, ALICE, AdmissionPolicy(), nobody)
    assert (refused.message, refused.code) == ("spec.maxRestarts: Input should be greater than or equal to 0", 422)


def test_update_of_the_pods_asks_again() -> None:
    old = job()
    new = job(pod={"image": "elsewhere/trainer:1"})
    refused = refusal("UPDATE", new, old, ALICE, AdmissionPolicy(), Authorizer())
    assert (
        refused.message == "user alice may not create pods in namespace team-a: an SFTJob creates pods on your behalf"
    )
    authorizer = Authorizer(("create", "pods"), ("create", "persistentvolumeclaims"))
    review("UPDATE", new, old, ALICE, AdmissionPolicy(), authorizer)
    assert asked(authorizer) == [("create", "pods"), ("create", "persistentvolumeclaims")]


def test_update_of_an_immutable_field_refused_as_cel_would() -> None:
    refused = refusal(
        "UPDATE",
        job(numEpochs=2, learningRate=1e-4),
        job(),
        ALICE,
        AdmissionPolicy(),
        Authorizer(("create", "pods"), ("create", "persistentvolumeclaims")),
    )
    assert (refused.message, refused.code) == (
        "spec.numEpochs: immutable once the job is created; spec.learningRate: immutable once the job is created",
        422,
    )


def test_a_status_the_models_cannot_read_does_not_block_the_user() -> None:
    """The status is the operator's: a spec change is judged on the spec, whatever the status holds."""
    old = job()
    old["status"] = {"phase": "Running", "restarts": "many"}
    new = copy.deepcopy(old)
    new["spec"]["suspend"] = True
    review("UPDATE", new, old, ALICE, AdmissionPolicy(), Authorizer())


def test_queue_label_change_is_validated() -> None:
    old = job(scheduling={"queueName": "a"})
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "b"}
    refused = refusal("UPDATE", new, old, ALICE, AdmissionPolicy(), Authorizer())
    assert refused.message.startswith("spec.scheduling.queueName: 'a' differs from the kueue.x-k8s.io/queue-name label")


def test_other_operations_are_not_reviewed() -> None:
    nobody = Authorizer()
    review("DELETE", job(numEpochs=0), None, ALICE, AdmissionPolicy(), nobody)
    assert nobody.asked == []


def test_an_authorizer_failure_refuses() -> None:
    def broken(_: dict[str, Any]) -> bool:
        raise Refusal("could not check the requesting user's permissions: timeout", admission.HTTP_INTERNAL_ERROR)

    refused = refusal("CREATE", job(), None, ALICE, AdmissionPolicy(), broken)
    assert (refused.message, refused.code) == ("could not check the requesting user's permissions: timeout", 500)


# --- the kopf handler around it (webhook.JobValidator) --------------------------------------------


def test_handler_refuses_with_kopfs_admission_error_and_skips_other_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    from sft_operator import metrics
    from sft_operator.webhook import JobValidator

    holds_nothing = JobValidator(AdmissionPolicy(), frozenset({"team-a"}), Authorizer())
    counted = metrics.OperatorMetrics(process=False)
    monkeypatch.setattr(metrics, "count_admission", counted.count_admission)
    with pytest.raises(kopf.AdmissionError) as refused:
        holds_nothing.validate(job(), ALICE, operation="CREATE")
    assert (str(refused.value), refused.value.code) == (
        "user alice may not create pods in namespace team-a: an SFTJob creates pods on your behalf",
        403,
    )
    validator = JobValidator(
        AdmissionPolicy(), frozenset({"team-a"}), Authorizer(("create", "pods"), ("create", "persistentvolumeclaims"))
    )
    validator.validate(job(), ALICE, operation="CREATE")
    with pytest.raises(kopf.AdmissionError):
        validator.validate(job(numEpochs=3), ALICE, old=job(), operation="UPDATE")
    samples = {
        (s.labels["operation"], s.labels["result"]): s.value
        for family in counted.registry.collect()
        if family.name == "sft_operator_admission_reviews"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert samples == {("CREATE", "forbidden"): 1, ("CREATE", "admitted"): 1, ("UPDATE", "invalid"): 1}
    elsewhere = job()
    elsewhere["metadata"]["namespace"] = "team-b"  # not this operator's: it creates nothing there
    validator.validate(elsewhere, ALICE, operation="CREATE")


def test_authorized_reads_the_reviews_answer_and_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes

    from sft_operator.webhook import authorized

    asked: list[tuple[str, dict[str, Any]]] = []

    class Answering:
        def __init__(self, allowed: bool | None):
            self.allowed = allowed

        def __call__(self, _client: Any) -> Any:
            return self

        def create_namespaced_local_subject_access_review(self, namespace: str, body: dict[str, Any], **_: Any) -> Any:
            asked.append((namespace, body))
            if self.allowed is None:
                raise kubernetes.client.exceptions.ApiException(status=503, reason="Service Unavailable")
            status = kubernetes.client.V1SubjectAccessReviewStatus(allowed=self.allowed)
            return kubernetes.client.V1LocalSubjectAccessReview(
                spec=kubernetes.client.V1SubjectAccessReviewSpec(), status=status
            )

    body = access_review(ALICE, "team-a", Permission("create", "pods", "why"))
    monkeypatch.setattr(kubernetes.client, "AuthorizationV1Api", Answering(True))
    assert authorized(None, body) is True
    assert asked == [("team-a", body)]
    monkeypatch.setattr(kubernetes.client, "AuthorizationV1Api", Answering(False))
    assert authorized(None, body) is False
    monkeypatch.setattr(kubernetes.client, "AuthorizationV1Api", Answering(None))
    with pytest.raises(Refusal) as refused:
        authorized(None, body)
    assert (refused.value.code, refused.value.why) == (500, "unchecked")
    assert refused.value.message.startswith("could not check the requesting user's permissions: (503)")


def test_the_client_says_why_the_server_refused_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """sft(), `sft-operator submit`: a refusal (here the webhook's, as the API server relays it) is
    SFTJobRefusedError with the server's message, not a raw HTTP error."""
    import kubernetes

    from sft_client.api import SFTJobRefusedError, create_job
    from sft_client.api import jobs as api_jobs

    message = (
        'admission webhook "validate.sftjobs.finetune.dev" denied the request: user alice may not create '
        "pods in namespace team-a: an SFTJob creates pods on your behalf"
    )

    class Refusing:
        def __init__(self, status: int, body: str | None):
            self.status, self.body = status, body

        def create_namespaced_custom_object(self, *_: Any) -> Any:
            exc = kubernetes.client.exceptions.ApiException(status=self.status, reason="Forbidden")
            exc.body = self.body
            raise exc

    body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": 403})
    monkeypatch.setattr(api_jobs, "custom_objects_api", lambda _client: Refusing(403, body))
    with pytest.raises(SFTJobRefusedError) as refused:
        create_job(None, job())
    assert str(refused.value) == f"SFTJob team-a/j was not created: {message}"
    monkeypatch.setattr(api_jobs, "custom_objects_api", lambda _client: Refusing(422, None))
    with pytest.raises(SFTJobRefusedError, match="^SFTJob team-a/j was not created: 422 Forbidden$"):
        create_job(None, job())
    # Not a refusal of the job (the server or the network): raised as it is.
    monkeypatch.setattr(api_jobs, "custom_objects_api", lambda _client: Refusing(500, body))
    with pytest.raises(kubernetes.client.exceptions.ApiException):
        create_job(None, job())
