"""The Argo CD health check in docs/helm.md, run as Argo CD runs it: the argocd-cm value taken
from the doc's YAML, executed in Lua 5.1 (Argo CD's gopher-lua speaks 5.1) with `obj` set to
the SFTJob, returning {status, message}."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

from sft_models.models import Phase

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "helm.md"
KEY = "resource.customizations.health.finetune.dev_SFTJob"
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# The mapping the doc promises, one row per phase the operator can write.
PHASE_TO_HEALTH = {
    Phase.PENDING: "Progressing",
    Phase.RUNNING: "Progressing",
    Phase.SUSPENDED: "Suspended",
    Phase.SUCCEEDED: "Healthy",
    Phase.FAILED: "Degraded",
}


def health_check_source() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    for block in blocks:
        data = (yaml.safe_load(block) or {}).get("data") or {}
        if KEY in data:
            return data[KEY]
    raise AssertionError(f"docs/helm.md has no ```yaml block with data.{KEY}")


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(health_check_source())
    assert result is not None, "the script returned nothing"
    return result["status"], result["message"]


def job(phase: str | None = None, generation: int = 1, observed: int | None = 1, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "j", "namespace": "ns", "generation": generation},
        "spec": {"nnodes": 2},
    }
    if phase is not None:
        body["status"] = {"phase": phase, "nodes": "1/2", **status}
        if observed is not None:
            body["status"]["observedGeneration"] = observed
    return body


def test_every_phase_is_mapped() -> None:
    assert set(PHASE_TO_HEALTH) == set(Phase)


@pytest.mark.parametrize("phase", list(Phase))
def test_phase_maps_to_health(phase: Phase) -> None:
    status, message = health(job(phase.value))
    assert status == PHASE_TO_HEALTH[phase]
    assert status in ARGO_HEALTH and message


def test_running_message_says_how_many_pods_are_ready() -> None:
    assert health(job("Running")) == ("Progressing", "Training, 1/2 pods ready")


def test_failed_carries_the_failure_message() -> None:
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimit", "message": "pod j-0 failed 3 times"}
    assert health(job("Failed", conditions=[failed])) == ("Degraded", "pod j-0 failed 3 times")


def test_failed_for_an_invalid_spec_names_the_field() -> None:
    spec_valid = {
        "type": "SpecValid",
        "status": "False",
        "reason": "InvalidSpec",
        "message": "spec.maxSeqLen: required",
    }
    assert health(job("Failed", conditions=[spec_valid])) == ("Degraded", "spec.maxSeqLen: required")


def test_failed_without_conditions_still_degraded() -> None:
    assert health(job("Failed")) == ("Degraded", "Training failed")


def test_no_status_yet_is_progressing() -> None:
    assert health(job())[0] == "Progressing"


def test_stale_status_is_progressing_even_if_succeeded() -> None:
    """A spec change the operator has not acted on yet: the old phase says nothing about it."""
    status, message = health(job("Succeeded", generation=3, observed=2))
    assert (status, message) == ("Progressing", "Waiting for the operator to act on the latest spec")


def test_status_without_observed_generation_uses_the_phase() -> None:
    assert health(job("Succeeded", observed=None))[0] == "Healthy"


def test_unknown_phase_is_unknown() -> None:
    assert health(job("Exploded")) == ("Unknown", "Unknown phase Exploded")


def test_mapping_table_in_the_doc_matches() -> None:
    """The doc's phase table says what the code does."""
    text = DOC.read_text()
    for phase, expected in PHASE_TO_HEALTH.items():
        row = next((line for line in text.splitlines() if line.startswith("|") and f"`{phase.value}`" in line), None)
        assert row is not None and expected in row, f"docs/helm.md: no table row mapping {phase.value} to {expected}"
