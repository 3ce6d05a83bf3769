"""The CRD's CEL rules (x-kubernetes-validations), evaluated with cel-python the way the
apiserver does: each rule with `self` bound to its node, transition rules only where an old
value exists. The same bad specs must also be refused by the operator's own validation."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import pytest

from devtools.crd import build_crd
from sft_models.models import IMMUTABLE_FIELDS, InvalidSpecError, parse_job

_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    return _PROGRAMS[rule]


def with_defaults(value: Any, node: dict[str, Any]) -> Any:
    """The apiserver fills schema defaults before it runs the rules."""
    if not isinstance(value, dict):
        return value
    value = dict(value)
    for name, child in node.get("properties", {}).items():
        if name not in value and "default" in child:
            value[name] = copy.deepcopy(child["default"])
        if name in value:
            value[name] = with_defaults(value[name], child)
    return value


def cel_errors(new: Any, old: Any = None) -> list[str]:
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return _errors(with_defaults(new, root), with_defaults(old, root) if old is not None else None, root)


def _errors(new: Any, old: Any, node: dict[str, Any]) -> list[str]:
    errors = []
    for validation in node.get("x-kubernetes-validations", []):
        transition = "oldSelf" in validation["rule"]
        if transition and old is None:
            continue
        activation = {"self": celpy.json_to_cel(new)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = _program(validation["rule"]).evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), (validation["rule"], result)
        if not result:
            errors.append(validation["message"])
    if isinstance(new, dict):
        for name, child in node.get("properties", {}).items():
            if name in new:
                old_child = old.get(name) if isinstance(old, dict) else None
                errors += _errors(new[name], old_child, child)
    return errors


def job(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "job-1", "namespace": "ns"},
        "spec": {
            "modelPath": "m",
            "dataPath": "/d.jsonl",
            "numEpochs": 2,
            "effectiveBatchSize": 16,
            "learningRate": 1e-5,
            "maxSeqLen": 512,
            "checkpoints": {"claim": {"size": "1Gi"}},
        },
    }
    body["spec"].update(spec)
    return body


def test_valid_job_passes_every_rule() -> None:
    assert cel_errors(job()) == []
    assert (
        cel_errors(
            job(
                nnodes=2,
                nprocPerNode=8,
                extraArgs={"use_liger": True},
                validationSplit=0.1,
                validationFrequency=5,
                pod={"env": [{"name": "A", "value": "1"}]},
            )
        )
        == []
    )
    assert (
        cel_errors(
            job(
                algorithm="osft",
                unfreezeRankRatio=1.0,
                targetPatterns=["q_proj"],
                seed=3,
                lrScheduler="cosine",
                lrSchedulerKwargs={"num_cycles": 2},
                saveFinalCheckpoint=True,
                useLiger=False,
                saveSamples=0,
                accelerateFullStateAtEpoch=True,
                extraArgs={},
            )
        )
        == []
    )


INVALID = [
    ({"validationSplit": 0.1}, "spec.validationFrequency"),
    ({"isPretraining": True}, "spec.blockSize"),
    ({"nnodes": 4, "nprocPerNode": 8}, "spec.effectiveBatchSize"),
    ({"maxTokensPerGpu": 100}, "spec.maxTokensPerGpu"),
    ({"checkpoints": {}}, "spec.checkpoints"),
    ({"checkpoints": {"existingClaim": "a", "claim": {"size": "1Gi"}}}, "spec.checkpoints"),
    (
        {"nnodes": 2, "checkpoints": {"claim": {"size": "1Gi", "accessModes": ["ReadWriteOnce"]}}},
        "spec.checkpoints.claim.accessModes",
    ),
    ({"checkpoints": {"existingClaim": "a", "path": "a/../../b"}}, "spec.checkpoints.path"),
    ({"checkpoints": {"existingClaim": "a", "path": "/abs"}}, "spec.checkpoints.path"),
    ({"extraArgs": {"foo_bar": 1}}, "spec.extraArgs"),
    ({"extraArgs": {"learning_rate": 1}}, "spec.extraArgs"),
    ({"extraArgs": {"callbacks": []}}, "spec.extraArgs"),
    ({"pod": {"env": [{"name": "PET_NNODES", "value": "3"}]}}, "spec.pod.env"),
    ({"pod": {"volumes": [{"name": "checkpoints", "emptyDir": {}}]}}, "spec.pod.volumes"),
    ({"pod": {"volumeMounts": [{"name": "x", "mountPath": "/checkpoints"}]}}, "spec.pod.volumeMounts"),
    (
        {"nprocPerNode": 8, "pod": {"resources": {"limits": {"nvidia.com/gpu": 4}}}},
        "spec.pod.resources.limits[nvidia.com/gpu]",
    ),
    (
        {"nprocPerNode": 2, "pod": {"resources": {"requests": {"nvidia.com/gpu": "1"}}}},
        "spec.pod.resources.requests[nvidia.com/gpu]",
    ),
    ({"pod": {"resources": {"limits": {"nvidia.com/gpu": "2"}}}}, "spec.pod.resources.limits[nvidia.com/gpu]"),
    (
        {"device": "cpu", "pod": {"resources": {"limits": {"nvidia.com/gpu": 1}}}},
        "spec.pod.resources.limits[nvidia.com/gpu]",
    ),
    ({"pod": {"env": [{"name": "INSTRUCTLAB_NCCL_TIMEOUT_MS", "value": "30m"}]}}, "spec.pod.env"),
    ({"pod": {"env": [{"name": "INSTRUCTLAB_NCCL_TIMEOUT_MS", "value": "0"}]}}, "spec.pod.env"),
    # OSFT (issue 24): its ratio is required and in (0, 1]; each algorithm refuses the other's fields
    ({"algorithm": "osft"}, "spec.unfreezeRankRatio"),
    ({"algorithm": "osft", "unfreezeRankRatio": 0.3, "maxTokensPerGpu": 100}, "spec.maxTokensPerGpu"),
    ({"algorithm": "osft", "unfreezeRankRatio": 0.3, "saveSamples": 100}, "spec.saveSamples"),
    (
        {"algorithm": "osft", "unfreezeRankRatio": 0.3, "accelerateFullStateAtEpoch": False},
        "spec.accelerateFullStateAtEpoch",
    ),
    ({"algorithm": "osft", "unfreezeRankRatio": 0.3, "validationFrequency": 2}, "spec.validationFrequency"),
    ({"algorithm": "osft", "unfreezeRankRatio": 0.3, "tensorboardLogDir": "/tb"}, "spec.tensorboardLogDir"),
    ({"algorithm": "osft", "unfreezeRankRatio": 0.3, "extraArgs": {"use_liger": True}}, "spec.extraArgs"),
    ({"algorithm": "osft", "unfreezeRankRatio": 0.3, "blockSize": 8}, "spec.blockSize"),
    ({"unfreezeRankRatio": 0.3}, "spec.unfreezeRankRatio"),
    ({"targetPatterns": ["q_proj"]}, "spec.targetPatterns"),
    ({"seed": 7}, "spec.seed"),
    ({"lrScheduler": "cosine"}, "spec.lrScheduler"),
    ({"saveFinalCheckpoint": False}, "spec.saveFinalCheckpoint"),
]


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"algorithm": "osft", "unfreezeRankRatio": 1.5}, "spec.unfreezeRankRatio"),
        ({"algorithm": "osft", "unfreezeRankRatio": 0.0}, "spec.unfreezeRankRatio"),
        ({"algorithm": "dpo"}, "spec.algorithm"),
    ],
)
def test_the_schema_and_the_operator_refuse_out_of_range_osft_values(spec: dict[str, Any], path: str) -> None:
    # Bounds and enums are the OpenAPI schema's (the apiserver checks them before CEL runs).
    spec_schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    ratio = spec_schema["properties"]["unfreezeRankRatio"]
    assert (ratio["minimum"], ratio.get("exclusiveMinimum"), ratio["maximum"]) == (0, True, 1)
    assert spec_schema["properties"]["algorithm"]["enum"] == ["sft", "osft"]
    with pytest.raises(InvalidSpecError) as info:
        parse_job(job(**spec))
    assert [p for p, _ in info.value.problems] == [path], info.value.problems


def test_a_collective_timeout_in_milliseconds_passes() -> None:
    assert (
        cel_errors(
            job(
                pod={
                    "env": [
                        {"name": "INSTRUCTLAB_NCCL_TIMEOUT_MS", "value": "3600000"},
                        {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
                    ]
                }
            )
        )
        == []
    )


@pytest.mark.parametrize(
    "pod",
    [
        {"resources": {"limits": {"nvidia.com/gpu": 8}, "requests": {"nvidia.com/gpu": "8"}}},
        {"resources": {"limits": {"memory": "1Gi"}}},
        {"resources": {}},
    ],
)
def test_a_gpu_request_equal_to_nproc_per_node_passes(pod: dict[str, Any]) -> None:
    assert cel_errors(job(nnodes=2, nprocPerNode=8, pod=pod)) == []
    assert cel_errors(job(device="cpu", pod={"resources": {"limits": {"nvidia.com/gpu": "0"}}})) == []


@pytest.mark.parametrize(("spec", "path"), INVALID)
def test_cel_and_the_operator_refuse_the_same_specs(spec: dict[str, Any], path: str) -> None:
    body = job(**spec)
    messages = cel_errors(body)
    assert messages and all(m.startswith(path + ":") for m in messages), messages
    with pytest.raises(InvalidSpecError) as info:
        parse_job(body)
    assert all(p.startswith(path) for p, _ in info.value.problems), info.value.problems


CHANGES: dict[str, Any] = {
    "modelPath": "other",
    "dataPath": "/other",
    "dataOutputDir": "/x",
    "numEpochs": 3,
    "effectiveBatchSize": 32,
    "learningRate": 2e-5,
    "maxSeqLen": 1024,
    "maxTokensPerGpu": 4096,
    "warmupSteps": 5,
    "saveSamples": 100,
    "checkpointAtEpoch": False,
    "accelerateFullStateAtEpoch": False,
    "beta1": 0.8,
    "beta2": 0.9,
    "eps": 1e-6,
    "weightDecay": 0.1,
    "isPretraining": True,
    "blockSize": 64,
    "documentColumnName": "t",
    "validationSplit": 0.2,
    "validationFrequency": 7,
    "extraArgs": {"use_liger": True},
    "nnodes": 2,
    "nprocPerNode": 2,
    "rdzvPort": 1234,
    "rdzvId": "r",
    "device": "cpu",
    "fullStateRetention": 1,
    "algorithm": "osft",
    "unfreezeRankRatio": 0.5,
    "targetPatterns": ["v_proj"],
    "seed": 1,
    "lrScheduler": "linear",
    "lrSchedulerKwargs": {"a": 1},
    "saveFinalCheckpoint": False,
    "useLiger": True,
    "checkpoints.existingClaim": "other",
    "checkpoints.claim": {"size": "2Gi"},
    "checkpoints.path": "p",
    "scheduling.gang": {"provider": "coscheduling"},
    "scheduling.queueName": "team-b",
    "remote": {"s3": {"credentialsSecret": "other"}},
    "export": {"uri": "s3://other-bucket/p"},
}


def test_every_immutable_field_has_a_change_case() -> None:
    assert set(CHANGES) == set(IMMUTABLE_FIELDS)


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    node = body["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value


@pytest.mark.parametrize("path", IMMUTABLE_FIELDS)
def test_immutable_fields_cannot_change(path: str) -> None:
    old = job(checkpoints={"existingClaim": "c"} if path == "checkpoints.existingClaim" else {"claim": {"size": "1Gi"}})
    if path == "scheduling.gang":
        old["spec"]["scheduling"] = {"gang": {"provider": "volcano"}}
    if path == "scheduling.queueName":
        old["spec"]["scheduling"] = {"queueName": "team-a"}
    new = copy.deepcopy(old)
    _set(new, path, CHANGES[path])
    messages = cel_errors(new, old)
    assert f"spec.{path}: immutable once the job is created" in messages, messages


def test_mutable_fields_can_change() -> None:
    old = job()
    new = job(
        suspend=True, maxRestarts=9, pod={"image": "new"}, checkpoints={"claim": {"size": "1Gi"}, "deleteWithJob": True}
    )
    assert cel_errors(new, old) == []
