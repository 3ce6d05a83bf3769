"""children.ensure_child with Kueue's StatefulSet webhook in the way: a resume refused while the
scale-down is still in progress is retried (kopf.TemporaryError), not a spec problem; any other
422 stays a refusal. The messages are those of Kueue's StatefulSet webhook (no Kueue runs here)."""

from __future__ import annotations

import json
from typing import Any

import kopf
import pytest
from fake_kube import FakeKube
from kubernetes.client.exceptions import ApiException

from devtools.tiny_model import tiny_job_spec
from sft_models.models import SFTJob, parse_job
from sft_operator.children import Refused, _refusal_message, ensure_child
from sft_operator.render import render_statefulset


class RefusingKube(FakeKube):
    def __init__(self, message: str):
        self.message = message

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        exc = ApiException(status=422, reason="Unprocessable Entity")
        exc.body = json.dumps({"kind": "Status", "message": self.message})
        raise exc


def _resume() -> tuple[dict[str, Any], dict[str, Any]]:
    def job(suspend: bool) -> SFTJob:
        spec = tiny_job_spec(checkpoints={"existingClaim": "c"}, suspend=suspend, scheduling={"queueName": "team-a"})
        return parse_job({"metadata": {"name": "q", "namespace": "ns", "uid": "u"}, "spec": spec})

    return render_statefulset(job(False)), render_statefulset(job(True))


@pytest.mark.parametrize(
    "message",
    [
        'StatefulSet.apps "q" is invalid: spec.replicas: Forbidden: scaling down is still in progress',
        'StatefulSet.apps "q" is invalid: spec.replicas: Forbidden: workload from previous scale-down is still being deleted',
    ],
)
def test_a_resume_refused_while_kueue_scales_down_is_retried(message: str) -> None:
    wanted, existing = _resume()
    with pytest.raises(kopf.TemporaryError) as exc:
        ensure_child(RefusingKube(message), wanted, existing)
    assert (exc.value.delay, str(exc.value)) == (5, f"StatefulSet q: {message}; retrying")


def test_another_refusal_of_the_statefulset_stays_a_spec_problem() -> None:
    wanted, existing = _resume()
    message = 'StatefulSet.apps "q" is invalid: metadata.labels[kueue.x-k8s.io/queue-name]: field is immutable'
    with pytest.raises(Refused) as exc:
        ensure_child(RefusingKube(message), wanted, existing)
    assert str(exc.value) == f"StatefulSet q: {message}"


def _refused(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="refused")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


def test_a_body_the_api_server_cannot_decode_is_refused_naming_the_field_by_its_path() -> None:
    """Bodies go to the API server as JSON (not through the client's models); a 400 is explained
    by the client's model of the kind, which names the field by its path."""
    spec = tiny_job_spec(checkpoints={"existingClaim": "c"}, pod={"env": [{"name": "LEVEL", "value": 3}]})
    manifest = render_statefulset(parse_job({"metadata": {"name": "q", "namespace": "ns", "uid": "u"}, "spec": spec}))
    env = manifest["spec"]["template"]["spec"]["containers"][0]["env"]
    index = next(i for i, var in enumerate(env) if var["name"] == "LEVEL")
    go_types = 'StatefulSet in version "v1" cannot be handled as a StatefulSet: v1.EnvVar.Value: ReadString'
    assert _refusal_message(manifest, _refused(400, go_types)) == (
        f"spec.template.spec.containers.0.env.{index}.value: Input should be a valid string"
    )
    assert _refusal_message(manifest, _refused(422, "spec.replicas: Invalid value")) == "spec.replicas: Invalid value"
