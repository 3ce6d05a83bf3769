"""The SFTJob admission review: what the validating webhook decides, kopf-free and pure but for
the one callable that asks the API server (a LocalSubjectAccessReview).

A request is admitted when the job is valid (the models' own rules, the same messages the
operator writes into the status), changes no immutable field, is allowed by the admin policy
(policy.py), and the REQUESTING user (the review's userInfo) may create what the operator will
create for them: pods, and a claim when spec.checkpoints.claim asks for one. Without that check,
a user allowed to create SFTJobs but not pods would get pods anyway, made by the StatefulSet
controller, with any volume, Secret or ServiceAccount of the namespace.

Updates that leave the spec (and the queue label) alone are admitted as they are: kopf's own
annotations, finalizers, label edits, a deletion's progress (a spec change of a job being
deleted is reviewed like any other). Updates that change only how a job
runs, not what its pods are (RUN_CONTROL_FIELDS: suspend, deadlines, ...), are validated but need
no pod permission: a queue controller that flips `suspend` creates no pod of its own design.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sft_models.models import KUEUE_QUEUE_LABEL, InvalidSpecError, SFTJobSpec, parse_job
from sft_operator.policy import AdmissionPolicy, policy_problems

# The webhook's kopf handler id, and so the path of its URL (kopf serves /<handler id>); the
# chart's ValidatingWebhookConfiguration calls exactly this path (tests/unit/test_helm_chart.py).
WEBHOOK_ID = "validate-sftjobs"
# Spec fields whose change alters when or how long a job runs, not what its pods are.
RUN_CONTROL_FIELDS = frozenset(
    {
        "suspend",
        "maxRestarts",
        "activeDeadlineSeconds",
        "startupTimeoutSeconds",
        "stallTimeoutSeconds",
        "ttlSecondsAfterFinished",
    }
)
HTTP_FORBIDDEN, HTTP_UNPROCESSABLE, HTTP_INTERNAL_ERROR = 403, 422, 500
# Why a request was refused (the admission metric's result label; "admitted" otherwise).
INVALID, POLICY, FORBIDDEN, UNCHECKED = "invalid", "policy", "forbidden", "unchecked"


class Refusal(Exception):
    """The request is refused; ``message`` is what `kubectl apply` shows, ``code`` its HTTP status,
    ``why`` one of INVALID, POLICY, FORBIDDEN, UNCHECKED (the permission could not be checked)."""

    def __init__(self, message: str, code: int, why: str = UNCHECKED):
        super().__init__(message)
        self.message = message
        self.code = code
        self.why = why


@dataclass(frozen=True)
class Permission:
    """A permission the requesting user needs, and why (said in the refusal)."""

    verb: str
    resource: str
    why: str
    group: str = ""
    name: str = ""  # one object (a Secret), or every object of the resource when empty


def required_permissions(spec: SFTJobSpec) -> list[Permission]:
    """What the operator will create in the job's namespace on the user's behalf, as RBAC asks it."""
    needed = [Permission("create", "pods", "an SFTJob creates pods on your behalf")]
    if spec.checkpoints.claim is not None:
        needed.append(
            Permission(
                "create",
                "persistentvolumeclaims",
                "spec.checkpoints.claim makes the operator create a claim on your behalf",
            )
        )
    # A Secret the transfer sidecar uses is read on the user's behalf: a user who may create pods
    # could mount any Secret anyway, but a permission to read it is asked for explicitly, so that
    # credentials reach only jobs of the users allowed to read them.
    remote = spec.remote
    secrets = [
        (
            "spec.remote.huggingFace.tokenSecret",
            remote.hugging_face.token_secret if remote and remote.hugging_face else None,
        ),
        ("spec.remote.s3.credentialsSecret", remote.s3.credentials_secret if remote and remote.s3 else None),
    ]
    for field, name in secrets:
        if name is not None:
            needed.append(
                Permission(
                    "get", "secrets", f"{field} makes the job use Secret {name}'s credentials on your behalf", name=name
                )
            )
    return needed


def access_review(userinfo: Mapping[str, Any], namespace: str, permission: Permission) -> dict[str, Any]:
    """The LocalSubjectAccessReview asking whether the requesting user holds ``permission``: the
    user exactly as the API server authenticated them (name, uid, groups, extra)."""
    spec: dict[str, Any] = {
        "resourceAttributes": {
            "namespace": namespace,
            "verb": permission.verb,
            "group": permission.group,
            "resource": permission.resource,
            **({"name": permission.name} if permission.name else {}),
        },
        "user": userinfo.get("username") or "",
        "groups": list(userinfo.get("groups") or []),
    }
    if userinfo.get("uid"):
        spec["uid"] = userinfo["uid"]
    if userinfo.get("extra"):
        spec["extra"] = {key: list(values) for key, values in userinfo["extra"].items()}
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": namespace},
        "spec": spec,
    }


def refusal_message(userinfo: Mapping[str, Any], namespace: str, permission: Permission) -> str:
    what = f"{permission.resource}/{permission.name}" if permission.name else permission.resource
    return (
        f"user {userinfo.get('username') or '(unknown)'} may not {permission.verb} {what} "
        f"in namespace {namespace}: {permission.why}"
    )


def _spec(body: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict((body or {}).get("spec") or {})


def _queue_label(body: Mapping[str, Any] | None) -> str | None:
    return (((body or {}).get("metadata") or {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)


def changes_pods(old_spec: Mapping[str, Any], new_spec: Mapping[str, Any]) -> bool:
    """Whether an update changes anything but RUN_CONTROL_FIELDS (what the pods are)."""
    keys = (set(old_spec) | set(new_spec)) - RUN_CONTROL_FIELDS
    return any(old_spec.get(key) != new_spec.get(key) for key in keys)


def immutable_changes(old: SFTJobSpec, new: SFTJobSpec) -> list[tuple[str, str]]:
    """The CRD's CEL transition rules (crd.immutability_rules), for clusters without CEL."""
    before, after = old.immutable_view(), new.immutable_view()
    return [(f"spec.{path}", "immutable once the job is created") for path in before if before[path] != after[path]]


def _without_status(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the user wrote it: the status is the operator's, never the requester's to fix."""
    return {key: value for key, value in body.items() if key != "status"}


def _join(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{path}: {message}" for path, message in problems)


def review(
    operation: str | None,
    body: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    userinfo: Mapping[str, Any],
    policy: AdmissionPolicy,
    authorized: Callable[[dict[str, Any]], bool],
) -> None:
    """Admit (return) or refuse (raise Refusal) a CREATE or UPDATE of an SFTJob. ``authorized``
    answers a LocalSubjectAccessReview (access_review's body); it may raise Refusal itself."""
    if operation not in ("CREATE", "UPDATE"):
        return
    if operation == "UPDATE" and _spec(body) == _spec(old) and _queue_label(body) == _queue_label(old):
        return  # a deletion's finalizers, kopf's annotations, labels: nothing the pods are made from
    try:
        job = parse_job(_without_status(body))
    except InvalidSpecError as exc:
        raise Refusal(str(exc), HTTP_UNPROCESSABLE, INVALID) from None
    if operation == "UPDATE" and old is not None:
        try:
            before = parse_job(_without_status(old)).spec
        except InvalidSpecError:
            before = None  # created before this webhook: the operator compares with what runs
        changed = immutable_changes(before, job.spec) if before is not None else []
        if changed:
            raise Refusal(_join(changed), HTTP_UNPROCESSABLE, INVALID)
    problems = policy_problems(job.spec, policy)
    if problems:
        raise Refusal(_join(problems), HTTP_FORBIDDEN, POLICY)
    if operation == "UPDATE" and not changes_pods(_spec(old), _spec(body)):
        return
    namespace = job.metadata.namespace
    for permission in required_permissions(job.spec):
        if not authorized(access_review(userinfo, namespace, permission)):
            raise Refusal(refusal_message(userinfo, namespace, permission), HTTP_FORBIDDEN, FORBIDDEN)
