"""``FakeKube``: the operator's adapter (sft_operator.kube.KubeApi) for unit tests, with no API
server behind it. Every call fails the test unless the test's subclass answers it: a fake says
which calls the code under test may make."""

from __future__ import annotations

from typing import Any

from sft_operator.kube import KubeApi


class FakeKube(KubeApi):
    def read(self, kind: str, namespace: str, name: str, api_version: str | None = None) -> dict[str, Any] | None:
        raise AssertionError(f"unexpected read of {kind} {namespace}/{name}")

    def read_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise AssertionError(f"unexpected read of claim {namespace}/{name}")

    def listed(self, kind: str, namespace: str) -> dict[str, dict[str, Any]]:
        raise AssertionError(f"unexpected listing of {kind} in {namespace}")

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError(f"unexpected create of {manifest['kind']} {manifest['metadata']['name']}")

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError(f"unexpected replace of {manifest['kind']} {manifest['metadata']['name']}")

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise AssertionError(f"unexpected read of job {namespace}/{name}")

    def delete_pod(self, namespace: str, name: str, grace_period_seconds: int) -> None:
        raise AssertionError(f"unexpected delete of pod {namespace}/{name}")

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        raise AssertionError(f"unexpected delete of job {namespace}/{name}")

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        raise AssertionError(f"unexpected Event {reason}: {message}")

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        raise AssertionError(f"unexpected status patch of {namespace}/{name}")
