"""Many jobs at once on the real control plane: each job's creation is handled exactly once."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sftjobs import job_body

pytestmark = pytest.mark.integration
JOBS = 100
CHILD_RESOURCES = {"statefulsets", "services", "configmaps", "persistentvolumeclaims", "serviceaccounts", "roles",
                   "rolebindings"}


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
