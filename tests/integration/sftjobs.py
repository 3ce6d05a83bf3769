"""The SFTJob manifests the integration tests apply (one place, so a spec change is made once)."""

from __future__ import annotations

from typing import Any

from devtools.tiny_model import tiny_job_spec
from sft_core import contract


def job_body(name: str = "tiny", **spec: Any) -> dict[str, Any]:
    """A small valid CPU job (2 nodes, 2 epochs); ``spec`` overrides or adds spec fields."""
    body: dict[str, Any] = {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": name},
        "spec": tiny_job_spec(),
    }
    body["spec"].update(spec)
    return body
