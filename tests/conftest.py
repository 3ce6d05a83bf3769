"""Shared fixtures: a real local control plane (session), its admin ApiClient, a fresh namespace.

The control plane starts lazily, on the first test that asks for it. If it cannot start
(no binaries, provisioning failed, a binary died), every test that needs it ERRORs with the
one clear reason; nothing is skipped.
"""

from __future__ import annotations

import os
import time
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


# Under pytest-xdist (make test: -n 4) tests run in scopes, each on one worker, in order.
# - The e2e tier: two scopes, on two workers side by side, sharing the machine's one real stack
#   (tests/e2e/conftest.py; each worker's jobs in a namespace of its own). Its jobs mostly wait
#   (one process: 46% of 2 cores busy), so two at once take little more than one. The modules that
#   change the operator (its release upgraded, its pods restarted) or need the node to themselves
#   are in scope "realnode-a".
# - The image tier: a scope; it needs only the dockerd `make prepare` started (the real node then
#   leaves it running).
# - The training tier trains on the CPU with timeouts sized for one run at a time: one scope, serial.
# - Any other module is a scope of its own, so its module-scoped fixtures are set up once.
# (xdist_group marks would say the same, but xdist 3.8 cannot apply them to pytest 9's node ids:
# they are silently ignored.)
XDIST_SCOPE_BY_TIER = {"images": "images", "training": "training"}
E2E_SCOPE_A = ("test_real_node.py", "test_api_reachability_real_node.py")  # the others: "realnode-b"
# The longest scopes first: each worker starts one and the short modules fill in around them,
# instead of one worker running a long scope alone at the end.
XDIST_FIRST = ("realnode-a", "realnode-b", "training", "images")


def xdist_scope(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
    if tier == "e2e":
        return "realnode-a" if parts[-1] in E2E_SCOPE_A else "realnode-b"
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
    # The e2e modules that run a real node of their own go after those that share the session's
    # stack (tests/e2e/conftest.py): one real node per machine, so the shared one starts once, and
    # stops (when the other worker is done with it too) before them.
    slots = [i for i, item in enumerate(items) if item.nodeid.startswith("tests/e2e/")]
    in_slots = sorted(
        (items[i] for i in slots), key=lambda item: "real_node_to_myself" in getattr(item, "fixturenames", ())
    )
    for i, item in zip(slots, in_slots):
        items[i] = item
    if hasattr(config, "workerinput"):  # an xdist worker; every worker sorts alike

        def rank(item: pytest.Item) -> int:
            scope = xdist_scope(item.nodeid)
            return XDIST_FIRST.index(scope) if scope in XDIST_FIRST else len(XDIST_FIRST)

        items.sort(key=rank)  # stable: the order within a scope stays


# Each tier's time, printed at the end of the run (make test): the sum of its tests' setup, call
# and teardown durations (a shared fixture's start-up counts in the setup of the test that started
# it), and the run's wall time. Under xdist the tiers run side by side: their sums add up to more
# than the wall time.
TIERS = ("unit", "integration", "training", "images", "e2e")
_tier_seconds: dict[str, float] = {}
_tier_tests: dict[str, set[str]] = {}
_session_started: list[float] = []
# The machine's busy CPU time (every process: the tests' servers, kubelets and containers too),
# read from /proc/stat: what bounds the suite on a small machine is CPU work, not waiting. Per tier
# only in one process, where a test's interval is its own; under xdist only the whole run's.
_test_cpu: dict[str, float] = {}  # per test; a tier's CPU is the sum over its tests
_test_cpu_started: dict[str, float] = {}
_session_cpu_started: list[float] = []


def machine_busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all but idle and iowait)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user


def tier_of(nodeid: str) -> str:
    parts = nodeid.split("::", 1)[0].split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"


def pytest_sessionstart(session: pytest.Session) -> None:
    _session_started.append(time.monotonic())
    _session_cpu_started.append(machine_busy_cpu_s())


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _test_cpu_started[nodeid] = machine_busy_cpu_s()


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    started = _test_cpu_started.pop(nodeid, None)
    if started is not None:
        _test_cpu[nodeid] = _test_cpu.get(nodeid, 0.0) + machine_busy_cpu_s() - started


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = tier_of(report.nodeid)
    _tier_seconds[tier] = _tier_seconds.get(tier, 0.0) + report.duration
    _tier_tests.setdefault(tier, set()).add(report.nodeid)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not _tier_seconds:
        return
    wall = time.monotonic() - _session_started[0] if _session_started else 0.0
    workers = getattr(config.option, "numprocesses", None)
    busy = machine_busy_cpu_s() - _session_cpu_started[0] if _session_cpu_started else 0.0
    report = os.environ.get("SFT_TEST_CPU_REPORT")  # a file: each test's busy CPU, most first (one process)
    if report and not workers:
        ranked = sorted(_test_cpu.items(), key=lambda kv: -kv[1])
        Path(report).write_text("".join(f"{cpu:8.1f} {nodeid}\n" for nodeid, cpu in ranked))
    cores = os.cpu_count() or 1
    tr = terminalreporter
    tr.write_sep("=", "time per tier (setup + call + teardown of its tests, summed; the machine's busy CPU)")
    tiers = [t for t in TIERS if t in _tier_seconds] + sorted(set(_tier_seconds) - set(TIERS))
    for tier in tiers:
        seconds = _tier_seconds[tier]
        tier_cpu = sum(used for nodeid, used in _test_cpu.items() if tier_of(nodeid) == tier)
        cpu = f"  CPU {tier_cpu / 60:6.1f} min" if not workers else ""
        tr.write_line(f"{tier:<12} {len(_tier_tests[tier]):>5} tests {seconds / 60:7.1f} min ({seconds:7.0f} s){cpu}")
    total = sum(_tier_seconds.values())
    tr.write_line(
        f"{'sum':<12} {sum(len(t) for t in _tier_tests.values()):>5} tests {total / 60:7.1f} min ({total:7.0f} s)"
    )
    tr.write_line(
        f"{'wall':<12} {'':>11} {wall / 60:7.1f} min ({wall:7.0f} s)  CPU {busy / 60:6.1f} min"
        + (f" ({busy / (wall * cores):.0%} of {cores} cores)" if wall else "")
        + (f" on {workers} xdist workers" if workers else "")
    )


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
