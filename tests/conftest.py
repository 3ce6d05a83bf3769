"""Shared fixtures: a real local control plane (session), its admin ApiClient, a fresh namespace.

The control plane starts lazily, on the first test that asks for it. If it cannot start
(no binaries, provisioning failed, a binary died), every test that needs it ERRORs with the
one clear reason; nothing is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CONTROL_PLANE_MARKERS = ("integration", "e2e")

# Operators started by tests serve no /metrics unless a test asks (--metrics-port): several run at
# once on one machine, and the default port (8000) can be had by one only.
os.environ.setdefault("SFT_METRICS_PORT", "0")

# devtools/ (control plane, nodes, tiny model) is dev-only and not installed: subprocesses that run
# `python -m devtools.…` find it through PYTHONPATH, whatever their working directory.
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [_ROOT, os.environ.get("PYTHONPATH", "")] if p)


# Under pytest-xdist (pytest -n 2; make test PYTEST_ARGS="-n 2") tests run in scopes, each on one
# worker, in order. The real node and docker are one per machine: e2e and images are one scope.
# The training tier trains on the CPU with timeouts sized for one run at a time: one scope, serial.
# Any other module is a scope of its own, so its module-scoped fixtures are set up once.
# (xdist_group marks would say the same, but xdist 3.8 cannot apply them to pytest 9's node ids:
# they are silently ignored.)
XDIST_SCOPE_BY_TIER = {"e2e": "realnode", "images": "realnode", "training": "training"}
# The longest scopes first: each worker starts one and the short modules fill in around them,
# instead of one worker running a long scope alone at the end.
XDIST_FIRST = ("realnode", "training")


def xdist_scope(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
    return XDIST_SCOPE_BY_TIER.get(tier, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    config.option.loadscopereorder = False  # keep XDIST_FIRST first (sorted below)
    return TierScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A test that touches the control plane is an integration test even if its author forgot the
    # marker, so `-m "not integration"` never starts one.
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()) and not any(
            item.get_closest_marker(m) for m in CONTROL_PLANE_MARKERS
        ):
            item.add_marker(pytest.mark.integration)
    if hasattr(config, "workerinput"):  # an xdist worker; every worker sorts alike

        def rank(item: pytest.Item) -> int:
            scope = xdist_scope(item.nodeid)
            return XDIST_FIRST.index(scope) if scope in XDIST_FIRST else len(XDIST_FIRST)

        items.sort(key=rank)  # stable: the order within a scope stays


@pytest.fixture(scope="session")
def control_plane() -> Iterator[Any]:
    """A started ``devtools.controlplane.ControlPlane`` shared by the whole session."""
    from devtools.controlplane import ControlPlane, ControlPlaneError

    cp = ControlPlane()
    try:
        cp.start()
    except ControlPlaneError as e:
        pytest.fail(f"local control plane could not start: {e}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def api_client(control_plane: Any) -> Iterator[Any]:
    """A kubernetes.client.ApiClient acting as the cluster admin (group system:masters)."""
    with control_plane.api_client() as client:
        yield client


@pytest.fixture
def namespace(request: pytest.FixtureRequest, control_plane: Any, api_client: Any) -> Iterator[str]:
    """The name of a namespace created for this test and deleted after it."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    from devtools.controlplane import fresh_namespace_name

    control_plane.check()
    core = kubernetes.client.CoreV1Api(api_client)
    name = fresh_namespace_name(request.node.name)
    core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
    # So a test may create pods at once (1.20 admits them only after the token exists).
    control_plane.wait_for_default_service_account(name)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise
        # A control-plane crash during the test is reported here, not left for the next test.
        control_plane.check()
