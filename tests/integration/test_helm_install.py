"""The chart installed for real: `helm install` onto the local control plane, then the operator,
holding exactly the chart ServiceAccount's permissions (a TokenRequest token for it), reconciles
an SFTJob into its children; `helm uninstall` leaves no operator object but keeps SFTJobs and
their checkpoint claims.

One test per watch mode. Each runs the operator as a subprocess with the very arguments the
installed Deployment carries (no kubelet runs the Deployment's pod here).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import admission_webhook
import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from operator_logs import refusals

from devtools.controlplane import free_port, request_service_account_token, service_account_kubeconfig
from devtools.stack import wait_until
from sft_core import contract

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sft-operator"
PROVISION_HELM = ROOT / "scripts" / "provision-helm.sh"
CRD_NAME = f"{contract.PLURAL}.{contract.GROUP}"
WAIT_S = 60.0


class Helm:
    """The provisioned helm, isolated from any user Helm config, aimed at the control plane."""

    def __init__(self, binary: str, home: Path, kubeconfig: Path):
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(kubeconfig),
        }

    def __call__(self, *args: str) -> str:
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, env=self.env, timeout=180)
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
        return proc.stdout


@pytest.fixture(scope="module")
def helm(control_plane: Any, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    proc = subprocess.run(["bash", str(PROVISION_HELM)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.fail(f"{PROVISION_HELM.name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", pytrace=False)
    return Helm(proc.stdout.strip().splitlines()[-1], tmp_path_factory.mktemp("helm-home"), control_plane.kubeconfig)


@pytest.fixture
def job_namespace(control_plane: Any, api_client: Any) -> Iterator[str]:
    """A second namespace, for the SFTJobs (the operator lives in the `namespace` fixture's)."""
    core = kubernetes.client.CoreV1Api(api_client)
    name = f"sft-jobs-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": name}})
    control_plane.wait_for_default_service_account(name)  # 1.20 admits pods only after it
    yield name
    core.delete_namespace(name)


def wait_for(
    what: str, probe: Callable[[], Any], timeout_s: float = WAIT_S, log: Callable[[], str] | None = None
) -> Any:
    """stack.wait_until, with the operator's log in the failure."""
    try:
        return wait_until(what, probe, timeout_s, interval_s=0.3)
    except TimeoutError as exc:
        tail = f"\noperator log (tail):\n{log()[-4000:]}" if log else ""
        raise AssertionError(f"{exc}{tail}") from None


def absent(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def install(helm: Helm, release: str, namespace: str, *values: str) -> None:
    # --server-side=false: Helm 4 applies server-side by default, and a 1.20 API server's
    # OpenAPI does not know the CRD's x-kubernetes-validations, so its typed patch fails. Servers
    # from 1.25 on accept the default.
    helm("install", release, str(CHART), "--namespace", namespace, "--server-side=false", *values)


def crd_established(api_client: Any) -> bool:
    crd = kubernetes.client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME)
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def operator_args(
    api_client: Any, namespace: str, release: str, liveness_port: int, webhook_port: int, cert_dir: Path
) -> list[str]:
    """The installed Deployment's container args, each endpoint moved to loopback on a free port
    (several operators share this machine): liveness on ``liveness_port``, the webhook on
    ``webhook_port`` with a certificate for 127.0.0.1 (admission_webhook), /metrics off."""
    deployment = kubernetes.client.AppsV1Api(api_client).read_namespaced_deployment(
        f"{release}-sft-operator", namespace
    )
    (container,) = deployment.spec.template.spec.containers
    args = list(container.args)
    assert "--liveness=http://0.0.0.0:8080/healthz" in args and "--metrics-port=8000" in args, args
    assert "--webhook-port=9443" in args and "--webhook-cert-dir=/etc/sft-operator/webhook" in args, args
    local = {
        "--liveness": f"http://127.0.0.1:{liveness_port}/healthz",
        "--metrics-port": "0",
        "--webhook-port": str(webhook_port),
        "--webhook-cert-dir": str(cert_dir),
    }
    moved = []
    for arg in args:
        flag, _, value = arg.partition("=")
        if flag in local:
            moved.append(f"{flag}={local[flag]}")
        elif value.startswith("http://0.0.0.0:"):  # another endpoint (a probe's): a port of its own
            path = value.split("/", 3)[3] if value.count("/") >= 3 else ""
            moved.append(f"{flag}=http://127.0.0.1:{free_port()}/{path}")
        else:
            moved.append(arg)
    return moved


def operator_env(api_client: Any, namespace: str, release: str) -> dict[str, str]:
    """The installed Deployment's container environment: plain values, and the downward API's
    pod name and namespace as the kubelet would fill them in."""
    deployment = kubernetes.client.AppsV1Api(api_client).read_namespaced_deployment(
        f"{release}-sft-operator", namespace
    )
    (container,) = deployment.spec.template.spec.containers
    downward = {"metadata.namespace": namespace, "metadata.name": f"{release}-local-{secrets.token_hex(3)}"}
    env = {}
    for e in container.env or []:
        if e.value is not None:
            env[e.name] = e.value
        elif e.value_from is not None and e.value_from.field_ref is not None:
            env[e.name] = downward[e.value_from.field_ref.field_path]
    return env


def deployment_image(api_client: Any, namespace: str, release: str) -> str:
    deployment = kubernetes.client.AppsV1Api(api_client).read_namespaced_deployment(
        f"{release}-sft-operator", namespace
    )
    (container,) = deployment.spec.template.spec.containers
    return container.image


class Operator:
    """`sft-operator run ARGS` as a subprocess with only the given kubeconfig's identity."""

    def __init__(
        self,
        args: list[str],
        kubeconfig: Path,
        log_path: Path,
        liveness_port: int,
        extra_env: dict[str, str] | None = None,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env.update(extra_env or {})
        env["KUBECONFIG"] = str(kubeconfig)
        self.log_path = log_path
        self.liveness_url = f"http://127.0.0.1:{liveness_port}/healthz"
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sft_operator", "run", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def alive(self) -> bool:
        assert self.proc.poll() is None, f"operator exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
        try:
            with urllib.request.urlopen(self.liveness_url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def unexpected_forbidden(self) -> list[str]:
        """Any refusal: kopf's scanning is disabled, so the chart's rules must cover every call
        (kopf would say "Not enough permissions" for a scan it could not do)."""
        return refusals(self.log())


@pytest.fixture
def run_operator(tmp_path: Path) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def start(args: list[str], kubeconfig: Path, liveness_port: int, env: dict[str, str] | None = None) -> Operator:
        operator = Operator(args, kubeconfig, tmp_path / f"operator-{len(started)}.log", liveness_port, env)
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()


def create_job(api_client: Any, namespace: str) -> str:
    body = yaml.safe_load((ROOT / "examples" / "sftjob-minimal.yaml").read_text())
    body["metadata"] = {"name": f"helm-{secrets.token_hex(3)}", "namespace": namespace}
    # No GPU nodes here; the permissions a job needs do not depend on its device.
    body["spec"]["device"] = "cpu"
    kubernetes.client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL, body
    )
    return body["metadata"]["name"]


def get_job(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    return kubernetes.client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, contract.PLURAL, name
    )


def reconciled(api_client: Any, namespace: str, name: str) -> bool:
    """The StatefulSet and checkpoint claim exist and the operator has written a status."""
    apps, core = kubernetes.client.AppsV1Api(api_client), kubernetes.client.CoreV1Api(api_client)
    if absent(lambda: apps.read_namespaced_stateful_set(name, namespace)):
        return False
    if absent(lambda: core.read_namespaced_persistent_volume_claim(f"{name}-checkpoints", namespace)):
        return False
    return bool((get_job(api_client, namespace, name).get("status") or {}).get("phase"))


def check_reporter_identity(control_plane: Any, api_client: Any, namespace: str, job: str) -> None:
    """What the operator created per job for the status reporter, with nothing but the chart
    ServiceAccount's token: the pods' ServiceAccount, a Role + RoleBinding (the API server
    refuses a Role that grants more than its creator holds, so their existence proves the chart's
    rules allow it) and the empty progress ConfigMap; the reporter's token may patch it."""
    core, rbac = kubernetes.client.CoreV1Api(api_client), kubernetes.client.RbacAuthorizationV1Api(api_client)
    assert core.read_namespaced_service_account(job, namespace).metadata.name == job
    role = rbac.read_namespaced_role(f"{job}-reporter", namespace)
    assert [(r.resources, r.resource_names, r.verbs) for r in role.rules] == [
        (["configmaps"], [f"{job}-progress"], ["get", "patch"])
    ]
    binding = rbac.read_namespaced_role_binding(f"{job}-reporter", namespace)
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", job, namespace)]
    assert not core.read_namespaced_config_map(f"{job}-progress", namespace).data
    token = request_service_account_token(api_client, namespace, job)
    with control_plane.api_client(token) as reporter:
        kubernetes.client.CoreV1Api(reporter).patch_namespaced_config_map(
            f"{job}-progress", namespace, {"data": {"progress.json": '{"stage": "Initializing"}'}}
        )


def release_objects(api_client: Any, namespace: str, release: str) -> list[str]:
    """Every object of the release still there: by the chart's instance label, and Helm's own
    release records."""
    selector = f"app.kubernetes.io/instance={release}"
    core, apps = kubernetes.client.CoreV1Api(api_client), kubernetes.client.AppsV1Api(api_client)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    listings = {
        "Deployment": apps.list_namespaced_deployment(namespace, label_selector=selector),
        "ReplicaSet": apps.list_namespaced_replica_set(namespace, label_selector=selector),
        "Pod": core.list_namespaced_pod(namespace, label_selector=selector),
        "ServiceAccount": core.list_namespaced_service_account(namespace, label_selector=selector),
        "Service": core.list_namespaced_service(namespace, label_selector=selector),
        "Secret(helm release)": core.list_namespaced_secret(namespace, label_selector=f"owner=helm,name={release}"),
        "Secret": core.list_namespaced_secret(namespace, label_selector=selector),
        # A configuration left behind would refuse every SFTJob in the cluster (failurePolicy Fail).
        "ValidatingWebhookConfiguration": kubernetes.client.AdmissionregistrationV1Api(
            api_client
        ).list_validating_webhook_configuration(label_selector=selector),
        "ClusterRole": rbac.list_cluster_role(label_selector=selector),
        "ClusterRoleBinding": rbac.list_cluster_role_binding(label_selector=selector),
        "Role": rbac.list_role_for_all_namespaces(label_selector=selector),
        "RoleBinding": rbac.list_role_binding_for_all_namespaces(label_selector=selector),
    }
    return [
        f"{kind} {item.metadata.namespace or ''}/{item.metadata.name}"
        for kind, listing in listings.items()
        for item in listing.items
    ]


def check_uninstall(api_client: Any, helm: Helm, namespace: str, release: str, job_ns: str, job: str) -> None:
    helm("uninstall", release, "--namespace", namespace)
    # The garbage collector removes the ReplicaSet and Pod after the Deployment: wait for it.
    wait_for("no object of the release left", lambda: not release_objects(api_client, namespace, release))
    assert crd_established(api_client), "helm uninstall must keep the CRD"
    assert get_job(api_client, job_ns, job)["metadata"]["name"] == job, "SFTJobs must survive the uninstall"
    claim = kubernetes.client.CoreV1Api(api_client).read_namespaced_persistent_volume_claim(
        f"{job}-checkpoints", job_ns
    )
    assert claim.metadata.deletion_timestamp is None, "checkpoint claims must survive the uninstall"


def check_operator_reconciles(
    control_plane: Any, api_client: Any, operator: Operator, job_namespace: str, image: str
) -> str:
    """The operator, holding only the chart's permissions, reconciles a job: its pods run the
    reporter from the chart's image, the reporter's identity works, and its summary reaches the
    status, with no permission refused on the way. Returns the job's name."""
    wait_for("the operator's liveness endpoint", operator.alive, log=operator.log)
    job = create_job(api_client, job_namespace)
    wait_for(f"SFTJob {job} to be reconciled", lambda: reconciled(api_client, job_namespace, job), log=operator.log)
    assert operator.unexpected_forbidden() == []
    statefulset = kubernetes.client.AppsV1Api(api_client).read_namespaced_stateful_set(job, job_namespace)
    images = {c.name: c.image for c in statefulset.spec.template.spec.containers}
    assert images["reporter"] == image, images

    check_reporter_identity(control_plane, api_client, job_namespace, job)
    wait_for(
        "status.progress from the reporter's summary",
        lambda: (
            (get_job(api_client, job_namespace, job).get("status") or {}).get("progress", {}).get("stage")
            == "Initializing"
        ),
        log=operator.log,
    )
    assert operator.unexpected_forbidden() == []
    return job


def test_cluster_mode_install_reconcile_uninstall(
    control_plane: Any,
    api_client: Any,
    helm: Helm,
    namespace: str,
    job_namespace: str,
    run_operator: Callable[..., Operator],
    tmp_path: Path,
) -> None:
    release = f"sft-{secrets.token_hex(3)}"
    # A tag of its own: the reporter sidecar must come from the operator's image, not a default.
    install(helm, release, namespace, "--set", "image.tag=9.9.9")
    wait_for("the CRD to be established", lambda: crd_established(api_client))
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    assert rbac.read_cluster_role(f"{release}-sft-operator").rules
    assert rbac.read_cluster_role_binding(f"{release}-sft-operator").subjects[0].namespace == namespace
    # Accepted: the Deployment controller made a ReplicaSet whose pod passed admission.
    core = kubernetes.client.CoreV1Api(api_client)
    pod, *_ = wait_for(
        "the operator pods to be created",
        lambda: core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={release}").items,
    )
    # The API server kept the restricted settings (an old server drops fields it does not know).
    (container,) = pod.spec.containers
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.seccomp_profile.type == "RuntimeDefault"
    assert container.security_context.capabilities.drop == ["ALL"]
    assert pod.spec.security_context.run_as_non_root is True

    # Fail closed: the chart's webhook has no operator behind it yet, and nothing is admitted.
    with pytest.raises(ApiException) as refused:
        create_job(api_client, job_namespace)
    assert 'failed calling webhook "validate.sftjobs.finetune.dev"' in json.loads(refused.value.body)["message"]

    port, webhook_port = free_port(), free_port()
    cert_dir, ca_pem = admission_webhook.serving_cert(tmp_path / "webhook")
    webhook = admission_webhook.point_at(api_client, f"{release}-sft-operator", webhook_port, ca_pem)
    assert webhook["clientConfig"]["service"] == {
        "name": f"{release}-sft-operator-webhook",
        "namespace": namespace,
        "path": "/validate-sftjobs",
        "port": 443,
    }
    kubeconfig = service_account_kubeconfig(
        control_plane, namespace, f"{release}-sft-operator", tmp_path / "sa.kubeconfig"
    )
    env = operator_env(api_client, namespace, release)
    image = deployment_image(api_client, namespace, release)
    assert (image, env["SFT_REPORTER_IMAGE"]) == ("sft-operator:9.9.9", "sft-operator:9.9.9")
    args = operator_args(api_client, namespace, release, port, webhook_port, cert_dir)
    operator = run_operator(args, kubeconfig, port, env)
    wait_for("the operator's webhook", lambda: admission_webhook.listening(webhook_port), log=operator.log)
    job = check_operator_reconciles(control_plane, api_client, operator, job_namespace, image)
    operator.stop()
    check_uninstall(api_client, helm, namespace, release, job_namespace, job)


def test_namespaces_mode_install_reconcile_uninstall(
    control_plane: Any,
    api_client: Any,
    helm: Helm,
    namespace: str,
    job_namespace: str,
    run_operator: Callable[..., Operator],
    tmp_path: Path,
) -> None:
    release = f"sft-{secrets.token_hex(3)}"
    install(
        helm, release, namespace, "--set", "watch.mode=namespaces", "--set", f"watch.namespaces={{{job_namespace}}}"
    )
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    selector = f"app.kubernetes.io/instance={release}"
    assert rbac.list_cluster_role(label_selector=selector).items == []
    # The operator's rules in the watched namespace only; its own namespace holds just the Lease's Role.
    roles = rbac.list_role_for_all_namespaces(label_selector=selector).items
    assert sorted((r.metadata.namespace, r.metadata.name) for r in roles) == sorted(
        [(job_namespace, f"{release}-sft-operator"), (namespace, f"{release}-sft-operator-leader-election")]
    )

    port, webhook_port = free_port(), free_port()
    cert_dir, ca_pem = admission_webhook.serving_cert(tmp_path / "webhook")
    admission_webhook.point_at(api_client, f"{release}-sft-operator", webhook_port, ca_pem)
    kubeconfig = service_account_kubeconfig(
        control_plane, namespace, f"{release}-sft-operator", tmp_path / "sa.kubeconfig"
    )
    args = operator_args(api_client, namespace, release, port, webhook_port, cert_dir)
    assert [a for a in args if a.startswith("--namespace")] == [f"--namespace={job_namespace}"]
    image = deployment_image(api_client, namespace, release)
    operator = run_operator(args, kubeconfig, port, operator_env(api_client, namespace, release))
    wait_for("the operator's webhook", lambda: admission_webhook.listening(webhook_port), log=operator.log)
    job = check_operator_reconciles(control_plane, api_client, operator, job_namespace, image)
    with control_plane.api_client(kubeconfig_token(kubeconfig)) as sa_client:
        # Confined: nothing in the operator's own namespace, let alone elsewhere.
        with pytest.raises(ApiException) as refused:
            kubernetes.client.CustomObjectsApi(sa_client).list_namespaced_custom_object(
                contract.GROUP, contract.VERSION, namespace, contract.PLURAL
            )
        assert refused.value.status == 403
    operator.stop()
    check_uninstall(api_client, helm, namespace, release, job_namespace, job)


def kubeconfig_token(path: Path) -> str:
    (user,) = yaml.safe_load(path.read_text())["users"]
    return user["user"]["token"]
