"""Many jobs at once on the real control plane: each job's creation is handled exactly once; an
operator restart over many jobs reads no child per job."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sftjobs import job_body

from devtools import stack
from devtools.controlplane import ADMIN_USER, free_port

pytestmark = pytest.mark.integration
JOBS = 100
CHILD_RESOURCES = {
    "statefulsets",
    "services",
    "networkpolicies",
    "configmaps",
    "persistentvolumeclaims",
    "serviceaccounts",
    "roles",
    "rolebindings",
}


def test_every_job_is_created_once_under_load(control_plane: Any, operator: Any, cluster: Any) -> None:
    """100 jobs applied at once (as a GitOps sync would): no child is created twice (no 409),
    and kopf stores "handled" once per job. With kopf's default 5 s consistency timeout, a job
    whose status patch reached kopf late under this load was handled a second time."""
    mark = control_plane.audit_position()
    names = [f"load-{i:03d}" for i in range(JOBS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda name: cluster.create_job(job_body(name, nnodes=1)), names))
    pending = set(names)

    def all_have_a_status() -> bool:
        for name in list(pending):
            if cluster.status(name).get("phase"):
                pending.discard(name)
        return not pending

    cluster.wait_for(f"a status on all {JOBS} jobs", all_have_a_status, timeout_s=300, interval_s=1.0)
    time.sleep(5.0)  # late second runs would show up now
    writes = [w for w in control_plane.write_requests(since=mark, namespace=cluster.ns)]
    conflicts = [(w.resource, w.name) for w in writes if w.verb == "create" and w.code == 409]
    assert conflicts == []
    creates = Counter((w.resource, w.name) for w in writes if w.verb == "create" and w.resource in CHILD_RESOURCES)
    assert [key for key, count in creates.items() if count > 1] == []
    assert len([key for key in creates if key[0] == "statefulsets"]) == JOBS
    # kopf's "handled" annotation: one PATCH of each job's main resource (not its status).
    marks = Counter(w.name for w in writes if w.resource == "sftjobs" and w.verb == "patch" and not w.subresource)
    assert {name: count for name, count in marks.items() if count > 1} == {}
    assert set(marks) == set(names)


RESTART_JOBS = 40
# claims, ServiceAccounts, Roles, RoleBindings, Services, NetworkPolicies: kube.LISTED_KINDS
UNINDEXED_LISTINGS = 6


def client_requests(port: int) -> Counter[str]:
    """The operator's own client's requests so far, by HTTP method (its /metrics). kopf's
    requests are not in it: kopf lists and watches, and never reads an object by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return Counter(
        {
            sample.labels["method"]: int(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "sft_operator_api_requests_total"
        }
    )


def test_a_restart_over_many_jobs_reads_no_child_per_job(
    control_plane: Any, crd: str, namespace: str, cluster: Any, tmp_path: Path
) -> None:
    """An operator restart resumes every job from its indexes (StatefulSets, ConfigMaps) and one
    listing per other kind: no GET per job, and no write but for the children deleted while it
    was down (which the resume finds missing and creates)."""
    control_plane.wait_for_default_service_account(namespace)
    port = free_port()
    op = stack.OperatorProcess(
        Path(control_plane.kubeconfig), [namespace], tmp_path / "operator.log", extra_args=["--metrics-port", str(port)]
    )
    try:
        op.start()
        names = [f"restart-{i:02d}" for i in range(RESTART_JOBS)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda name: cluster.create_job(job_body(name, nnodes=1)), names))
        cluster.wait_for(
            f"a status on all {RESTART_JOBS} jobs",
            lambda: all(cluster.status(name).get("phase") for name in names),
            timeout_s=300,
            interval_s=1.0,
        )
        time.sleep(3.0)
        op.stop()
        statuses = {name: cluster.status(name) for name in names}
        # (raw answers: this client cannot parse a deleted Service's)
        cluster.core.delete_namespaced_service(names[0], namespace, _preload_content=False)
        cluster.core.delete_namespaced_service_account(names[1], namespace, _preload_content=False)
        mark = control_plane.audit_position()
        op.start()
        cluster.wait_for(
            "the deleted children re-created",
            lambda: cluster.read("Service", names[0]) and cluster.read("ServiceAccount", names[1]),
            timeout_s=120,
        )
        seen, quiet_since = client_requests(port), time.monotonic()
        while time.monotonic() - quiet_since < 5.0:  # until the operator's client is quiet 5 s
            time.sleep(1.0)
            now = client_requests(port)
            if now != seen:
                seen, quiet_since = now, time.monotonic()
    finally:
        op.stop()
        print(f"--- operator log ({op.log_file}) ---\n{op.logs()[-6000:]}")
    # The test itself only reads after the mark: the admin's writes are the operator's.
    writes = [
        (w.verb, w.resource, w.name, w.code)
        for w in control_plane.write_requests(since=mark, namespace=namespace, user=ADMIN_USER)
    ]
    assert sorted(writes) == [("create", "serviceaccounts", names[1], 201), ("create", "services", names[0], 201)]
    # Only the listings (each reused for LISTING_TTL_S, so a slow resume may list a kind again);
    # reading each child would be 8 per job, 320 here.
    assert set(seen) == {"GET", "POST"} and seen["POST"] == 2
    assert seen["GET"] <= 2 * UNINDEXED_LISTINGS
    assert {name: cluster.status(name) for name in names} == statuses
