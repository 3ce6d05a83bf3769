"""Operator fixtures: the CRD installed once, and the real operator (`sft-operator run`) as a
subprocess that a test can kill and restart. No kubelet: tests set pod status through the API.

The pieces are devtools.stack's (install_crd, OperatorProcess, wait_until), shared with
the benchmarks; here their errors fail the test instead of raising."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from devtools import stack
from devtools.crd import CRD_NAME
from sft_core import contract

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 30.0, interval_s: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` otherwise."""
    try:
        return stack.wait_until(what, probe, timeout_s, interval_s)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def install_crd(api_client: Any) -> None:
    try:
        stack.install_crd(api_client)
    except TimeoutError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def crd(control_plane: Any, api_client: Any) -> str:
    install_crd(api_client)
    return CRD_NAME


@pytest.fixture(scope="session")
def garbage_collection(control_plane: Any, api_client: Any, crd: str) -> None:
    """Wait until the garbage collector collects SFTJob dependents: kube-controller-manager
    re-discovers resources every 30 s, so a freshly installed CRD is unknown to it until then.
    Probed with a throwaway job owning a ConfigMap (once per session)."""
    core = kubernetes.client.CoreV1Api(api_client)
    custom = kubernetes.client.CustomObjectsApi(api_client)
    namespace = "default"
    name = "gc-probe"
    job = custom.create_namespaced_custom_object(
        contract.GROUP,
        contract.VERSION,
        namespace,
        contract.PLURAL,
        {
            "apiVersion": contract.API_VERSION,
            "kind": contract.KIND,
            "metadata": {"name": name},
            "spec": {
                "modelPath": "/m",
                "dataPath": "/d",
                "numEpochs": 1,
                "effectiveBatchSize": 1,
                "learningRate": 1e-4,
                "maxSeqLen": 8,
                "checkpoints": {"existingClaim": "none"},
            },
        },
    )
    owner = {"apiVersion": contract.API_VERSION, "kind": contract.KIND, "name": name, "uid": job["metadata"]["uid"]}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": name, "ownerReferences": [owner]}})
    custom.delete_namespaced_custom_object(contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name)

    def collected() -> bool:
        try:
            core.read_namespaced_config_map(name, namespace)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for("the garbage collector to know SFTJobs", collected, timeout_s=90, interval_s=0.5)


class OperatorProcess(stack.OperatorProcess):
    """stack.OperatorProcess whose failure to start fails the test (with the operator's log)."""

    def start(self, timeout_s: float = stack.OPERATOR_START_TIMEOUT_S) -> OperatorProcess:
        try:
            return super().start(timeout_s)
        except stack.StackError as exc:
            pytest.fail(str(exc))


@pytest.fixture
def operator(control_plane: Any, crd: str, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator watching this test's namespace; its log is printed if the test fails."""
    control_plane.wait_for_default_service_account(namespace)
    op = OperatorProcess(Path(control_plane.kubeconfig), [namespace], tmp_path / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log ({op.log_file}) ---\n{op.logs()[-6000:]}")


@pytest.fixture
def operator_as(
    control_plane: Any, crd: str, namespace: str, tmp_path: Path
) -> Iterator[Callable[[Path], OperatorProcess]]:
    """Start the operator with another kubeconfig (e.g. a ServiceAccount's): ``operator_as(path)``;
    ``operator_as(path, [])`` watches all namespaces."""
    started: list[OperatorProcess] = []

    def start(kubeconfig: Path, namespaces: list[str] | None = None) -> OperatorProcess:
        control_plane.wait_for_default_service_account(namespace)
        watched = [namespace] if namespaces is None else namespaces  # [] = all namespaces
        op = OperatorProcess(kubeconfig, watched, tmp_path / f"operator-{len(started)}.log")
        started.append(op)
        op.start()
        return op

    yield start
    for op in started:
        op.stop()
        print(f"--- operator log ({op.log_file}) ---\n{op.logs()[-6000:]}")


# --- API helpers for the tests -----------------------------------------------------------------


class Cluster:
    """Short names for the calls the operator tests make (tests get it as the `cluster` fixture,
    since test modules cannot import a conftest)."""

    wait_for = staticmethod(wait_for)

    def __init__(self, api_client: Any, namespace: str):
        self.ns = namespace
        self.client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)

    def plain(self, obj: Any) -> dict[str, Any]:
        return self.client.sanitize_for_serialization(obj)

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(
            contract.GROUP, contract.VERSION, self.ns, contract.PLURAL, body
        )

    def job(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            contract.GROUP, contract.VERSION, self.ns, contract.PLURAL, name
        )

    def patch_job(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            contract.GROUP, contract.VERSION, self.ns, contract.PLURAL, name, patch
        )

    def replace_job(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.replace_namespaced_custom_object(
            contract.GROUP, contract.VERSION, self.ns, contract.PLURAL, name, body
        )

    def delete_job(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            contract.GROUP,
            contract.VERSION,
            self.ns,
            contract.PLURAL,
            name,
            body=kubernetes.client.V1DeleteOptions(propagation_policy="Background"),
        )

    def status(self, name: str) -> dict[str, Any]:
        return self.job(name).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def statefulset(self, name: str) -> dict[str, Any] | None:
        try:
            return self.plain(self.apps.read_namespaced_stateful_set(name, self.ns))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def read(self, kind: str, name: str) -> dict[str, Any] | None:
        call = {
            "Service": self.core.read_namespaced_service,
            "ConfigMap": self.core.read_namespaced_config_map,
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "StatefulSet": self.apps.read_namespaced_stateful_set,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "NetworkPolicy": self.networking.read_namespaced_network_policy,
        }[kind]
        try:
            return self.plain(call(name, self.ns))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self, job_name: str) -> list[dict[str, Any]]:
        selector = f"{contract.LABEL_JOB_NAME}={job_name}"
        return [self.plain(p) for p in self.core.list_namespaced_pod(self.ns, label_selector=selector).items]

    def set_pod_phase(self, pod_name: str, phase: str) -> None:
        """What a kubelet would report (there is none)."""
        self.core.patch_namespaced_pod_status(pod_name, self.ns, {"status": {"phase": phase}})

    def run_all_pods(self, job_name: str, count: int) -> None:
        pods = wait_for(f"{count} pods of {job_name}", lambda: (p := self.pods(job_name)) and len(p) == count and p)
        for pod in pods:
            self.set_pod_phase(pod["metadata"]["name"], "Running")

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [self.plain(e) for e in items]


@pytest.fixture
def cluster(api_client: Any, namespace: str) -> Cluster:
    return Cluster(api_client, namespace)


WRITE_VERBS = ("POST", "PUT", "PATCH")
_METRIC_LABELS = re.compile(r'(\w+)="([^"]*)"')


def api_writes(control_plane: Any) -> Counter[tuple[str, str, str]]:
    """JSON write requests the apiserver has served so far, by (verb, resource, subresource), from
    its /metrics (apiserver_request_total). Counts writes that changed nothing, too."""
    status, body = control_plane.get("/metrics")
    assert status == 200, body[:200]
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in body.decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(_METRIC_LABELS.findall(line))
        # JSON only: the operator's (and the tests') requests; the controllers speak protobuf.
        if labels.get("verb") in WRITE_VERBS and labels.get("contentType", "").startswith("application/json"):
            counts[(labels["verb"], labels.get("resource", ""), labels.get("subresource", ""))] += int(
                float(line.rsplit(" ", 1)[1])
            )
    return counts


@pytest.fixture
def writes(control_plane: Any) -> Callable[[], Counter[tuple[str, str, str]]]:
    """Call it twice; the difference is what was written in between."""
    return lambda: api_writes(control_plane)
