"""spec.algorithm: osft on the real control plane (1.20: no CEL, so the operator re-checks): the
apiserver's schema refuses an out-of-range ratio and an unknown algorithm at apply, naming the
field; the operator fails an OSFT job without its ratio or with maxTokensPerGpu below maxSeqLen,
naming the field, and creates nothing for it; a valid OSFT job gets the launcher config the
trainer reads (algorithm osft, training_hub osft() names)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from sftjobs import job_body
from test_operator_lifecycle import phase_is

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"algorithm": "osft", "unfreezeRankRatio": 1.5}, "spec.unfreezeRankRatio"),
        ({"algorithm": "osft", "unfreezeRankRatio": 0}, "spec.unfreezeRankRatio"),
        ({"algorithm": "dpo"}, "spec.algorithm"),
    ],
)
def test_apiserver_refuses_out_of_range_osft_values_naming_the_field(
    crd: str, cluster: Any, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiException) as info:
        cluster.create_job(job_body(**spec))
    assert info.value.status == 422 and field in info.value.body, info.value.body


INVALID_OSFT = [
    ("osft-no-ratio", {"algorithm": "osft"}, "spec.unfreezeRankRatio: required when spec.algorithm is osft"),
    (
        "osft-tokens",
        {"algorithm": "osft", "unfreezeRankRatio": 0.5, "maxSeqLen": 512, "maxTokensPerGpu": 256},
        "spec.maxTokensPerGpu: must be at least spec.maxSeqLen",
    ),
    (
        "osft-sft-field",
        {"algorithm": "osft", "unfreezeRankRatio": 0.5, "saveSamples": 8},
        "spec.saveSamples: an instructlab-training (sft) parameter: not allowed when spec.algorithm is osft",
    ),
    ("sft-osft-field", {"seed": 3}, "spec.seed: an OSFT parameter: only when spec.algorithm is osft"),
]


def test_the_operator_fails_invalid_osft_jobs_naming_the_field(operator: Any, cluster: Any) -> None:
    for name, spec, _ in INVALID_OSFT:
        cluster.create_job(job_body(name, **spec))
    for name, _, message in INVALID_OSFT:
        status = phase_is(cluster, name, "Failed")
        valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
        assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
        assert message in valid["message"], valid["message"]
        assert cluster.read("StatefulSet", name) is None


def test_a_valid_osft_job_gets_the_launcher_config(operator: Any, cluster: Any) -> None:
    cluster.create_job(job_body("osft", algorithm="osft", unfreezeRankRatio=0.5, targetPatterns=["q_proj"], seed=7))
    config_map = cluster.wait_for("the job's config", lambda: cluster.read("ConfigMap", "osft-config"))
    config = json.loads(config_map["data"]["training.json"])
    assert config["algorithm"] == "osft"
    args = config["trainingArgs"]
    assert (args["unfreeze_rank_ratio"], args["target_patterns"], args["seed"]) == (0.5, ["q_proj"], 7)
    assert "max_batch_len" not in args and args["max_tokens_per_gpu"] == 128  # default: maxSeqLen
    assert cluster.wait_for("the StatefulSet", lambda: cluster.statefulset("osft"))


from test_operator_admission import as_user, create, denied, namespaces, refusal, start_operator, users, webhook  # noqa: E402,F401
from test_operator_admission import job_body as namespaced_job  # noqa: E402


def test_the_webhook_refuses_bad_osft_jobs_at_apply_naming_the_field(
    control_plane: Any,
    api_client: Any,
    namespaces: tuple[str, str],
    webhook: Any,
    users: None,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = namespaces[0]
    operator = start_operator(control_plane, namespaces, webhook, tmp_path, monkeypatch)
    try:
        with as_user(control_plane, "bob") as bob:
            assert refusal(lambda: create(bob, namespaced_job("no-ratio", ns, algorithm="osft"))) == (
                422,
                denied("spec.unfreezeRankRatio: required when spec.algorithm is osft"),
            )
            assert refusal(
                lambda: create(
                    bob,
                    namespaced_job(
                        "tokens", ns, algorithm="osft", unfreezeRankRatio=0.5, maxSeqLen=512, maxTokensPerGpu=256
                    ),
                )
            ) == (422, denied("spec.maxTokensPerGpu: must be at least spec.maxSeqLen (one full sequence per GPU)"))
            created = create(bob, namespaced_job("osft-ok", ns, algorithm="osft", unfreezeRankRatio=0.5))
            assert created["spec"]["algorithm"] == "osft"
    finally:
        operator.stop()
