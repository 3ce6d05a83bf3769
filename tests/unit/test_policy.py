"""The admin policy (policy.py): exact refusals, each naming its field and the policy value."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sft_models.models import InvalidSpecError, parse_spec
from sft_operator.policy import (
    AdmissionPolicy,
    PolicyError,
    PolicyViolation,
    load_policy,
    parse_admitted_job,
    policy_problems,
)

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "modelPath": "m",
    "dataPath": "/data/train.jsonl",
    "numEpochs": 1,
    "effectiveBatchSize": 8,
    "learningRate": 1e-5,
    "maxSeqLen": 64,
    "checkpoints": {"existingClaim": "ckpt"},
}
WHERE = "by the cluster's sft-operator policy"


def spec_with(**pod: Any) -> Any:
    spec = copy.deepcopy(BASE)
    spec["pod"] = pod
    return parse_spec(spec)


def test_defaults_admit_a_plain_job_and_the_restricted_volume_types() -> None:
    volumes = [
        {"name": f"v{i}", source: {}}
        for i, source in enumerate(
            ["persistentVolumeClaim", "configMap", "secret", "emptyDir", "downwardAPI", "projected", "ephemeral", "csi"]
        )
    ]
    volumes.append({"name": "bare"})  # no source: the API server makes it an emptyDir
    env = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert policy_problems(spec_with(volumes=volumes, env=env, tolerations=tolerations), AdmissionPolicy()) == []


def test_host_path_refused_by_default_and_admitted_when_allowed() -> None:
    spec = spec_with(
        volumes=[
            {"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
            {"name": "model", "hostPath": {"path": "/models"}},
        ]
    )
    assert policy_problems(spec, AdmissionPolicy()) == [
        ("spec.pod.volumes[1].hostPath", f"host paths are not allowed {WHERE} (policy.allowHostPath)")
    ]
    assert policy_problems(spec, AdmissionPolicy(allow_host_path=True)) == []


def test_volume_types_outside_the_list() -> None:
    spec = spec_with(volumes=[{"name": "repo", "gitRepo": {"repository": "r"}}, {"name": "n", "nfs": {"server": "s"}}])
    assert policy_problems(spec, AdmissionPolicy(allowed_volume_types=["nfs", "emptyDir"])) == [
        (
            "spec.pod.volumes[0].gitRepo",
            f"gitRepo volumes are not allowed {WHERE} (policy.allowedVolumeTypes: nfs, emptyDir)",
        )
    ]
    assert policy_problems(spec_with(volumes=[{"name": "bare"}]), AdmissionPolicy(allowed_volume_types=[])) == [
        ("spec.pod.volumes[0].emptyDir", f"emptyDir volumes are not allowed {WHERE} (policy.allowedVolumeTypes: none)")
    ]


def test_service_account_priority_class_secret_env_tolerations() -> None:
    spec = spec_with(
        serviceAccountName="deployer",
        priorityClassName="system-cluster-critical",
        env=[{"name": "A", "value": "1"}, {"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        tolerations=[
            {"key": "nvidia.com/gpu", "operator": "Exists"},
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"},
            {"operator": "Exists"},
        ],
    )
    policy = AdmissionPolicy(allowed_priority_classes=["training-high"], allow_secret_env=False)
    assert policy_problems(spec, policy) == [
        (
            "spec.pod.serviceAccountName",
            f"naming the pods' ServiceAccount is not allowed {WHERE} (policy.allowServiceAccountName); "
            "leave it unset: the job's pods run as a ServiceAccount of their own",
        ),
        (
            "spec.pod.priorityClassName",
            f"'system-cluster-critical' is not allowed {WHERE} (policy.allowedPriorityClasses: training-high)",
        ),
        ("spec.pod.env[1].valueFrom.secretKeyRef", f"Secrets in env are not allowed {WHERE} (policy.allowSecretEnv)"),
        (
            "spec.pod.tolerations[1].key",
            f"tolerating node-role.kubernetes.io/control-plane is not allowed {WHERE} (policy.deniedTolerationKeys)",
        ),
        (
            "spec.pod.tolerations[2]",
            "a toleration without a key tolerates every taint, the control plane's too; not allowed "
            f"{WHERE} (policy.deniedTolerationKeys)",
        ),
    ]
    permissive = AdmissionPolicy(
        allow_service_account_name=True, allowed_priority_classes=["system-cluster-critical"], denied_toleration_keys=[]
    )
    assert policy_problems(spec, permissive) == []


def test_priority_class_default_is_none() -> None:
    assert policy_problems(spec_with(priorityClassName="training-high"), AdmissionPolicy()) == [
        ("spec.pod.priorityClassName", f"'training-high' is not allowed {WHERE} (policy.allowedPriorityClasses: none)")
    ]


def test_load_policy_from_the_env_json() -> None:
    assert load_policy(None) == AdmissionPolicy()
    assert load_policy("") == AdmissionPolicy()
    loaded = load_policy(json.dumps({"allowHostPath": True, "allowedPriorityClasses": ["a"]}))
    assert (loaded.allow_host_path, loaded.allowed_priority_classes) == (True, ["a"])
    with pytest.raises(PolicyError, match=r"^policy\.allowHostPath: Input should be a valid boolean"):
        load_policy('{"allowHostPath": "perhaps"}')
    with pytest.raises(PolicyError, match=r"^policy\.allowHostPaths: Extra inputs are not permitted"):
        load_policy('{"allowHostPaths": true}')
    with pytest.raises(PolicyError, match="not JSON"):
        load_policy("{")


def test_chart_default_policy_is_the_models() -> None:
    """values.yaml's `policy` is what the operator assumes without SFT_ADMISSION_POLICY."""
    values = yaml.safe_load((ROOT / "charts" / "sft-operator" / "values.yaml").read_text())
    assert values["policy"] == AdmissionPolicy().to_api()


def test_parse_admitted_job_joins_the_models_and_the_policys_refusals() -> None:
    body = {
        "metadata": {"name": "j", "namespace": "ns"},
        "spec": {**BASE, "pod": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}},
    }
    with pytest.raises(PolicyViolation) as refused:
        parse_admitted_job(body, AdmissionPolicy())
    assert (
        str(refused.value) == f"spec.pod.volumes[0].hostPath: host paths are not allowed {WHERE} (policy.allowHostPath)"
    )
    assert parse_admitted_job(body, AdmissionPolicy(allow_host_path=True)).metadata.name == "j"
    body["spec"]["numEpochs"] = 0
    with pytest.raises(
        InvalidSpecError, match=r"^spec\.numEpochs: Input should be greater than or equal to 1$"
    ) as invalid:
        parse_admitted_job(body, AdmissionPolicy())
    assert not isinstance(invalid.value, PolicyViolation)
