"""The Helm chart, rendered by a real Helm (scripts/provision-helm.sh): lint, strict validation of
every rendered object against the Kubernetes schemas, the values schema, the Deployment's shape.

RBAC has its own file (test_helm_rbac.py); installing onto a real API server is in
tests/integration/test_helm_install.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sft_operator import admission, render_meta
from sft_operator.policy import ENV_POLICY, AdmissionPolicy, load_policy

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sft-operator"
PROVISION_HELM = ROOT / "scripts" / "provision-helm.sh"
# kubernetes-validate's oldest schemas (our local API server is 1.20) and its newest.
SCHEMA_VERSIONS = ("1.25.0", "1.37.0")
NAMESPACES_MODE = ["--set", "watch.mode=namespaces", "--set", "watch.namespaces={team-a,team-b}"]
MODES = {"cluster": [], "namespaces": NAMESPACES_MODE}


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> "Helm":
    return Helm.provision(tmp_path_factory.mktemp("helm-home"))


class Helm:
    """The provisioned helm binary, with its cache/config/data homes in a temp dir (no state
    leaks into or out of the developer's own Helm setup)."""

    def __init__(self, binary: str, home: Path):
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    @classmethod
    def provision(cls, home: Path) -> "Helm":
        proc = subprocess.run(["bash", str(PROVISION_HELM)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not proc.stdout.strip():
            pytest.fail(f"{PROVISION_HELM.name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", pytrace=False)
        return cls(proc.stdout.strip().splitlines()[-1], home)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, *args], capture_output=True, text=True, env=self.env, timeout=120)

    def template(self, *args: str, namespace: str = "sft-system") -> list[dict[str, Any]]:
        proc = self.run("template", "rel", str(CHART), "--namespace", namespace, *args)
        assert proc.returncode == 0, proc.stderr
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


DEFAULT_POLICY_JSON = json.dumps(AdmissionPolicy().to_api(), sort_keys=True, separators=(",", ":"))


def the_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(docs, "Deployment")
    return deployment


def test_provisioned_helm_is_the_pinned_version(helm: Helm) -> None:
    proc = helm.run("version", "--template", "{{.Version}}")
    assert proc.returncode == 0 and proc.stdout == "v4.1.4", proc.stdout + proc.stderr


def test_provision_script_answers_from_its_cache_or_sft_helm(helm: Helm, tmp_path: Path) -> None:
    again = subprocess.run(["bash", str(PROVISION_HELM)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == helm.binary
    chosen = subprocess.run(
        ["bash", str(PROVISION_HELM)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SFT_HELM": helm.binary},
    )
    assert chosen.stdout.strip() == helm.binary
    bad = subprocess.run(
        ["bash", str(PROVISION_HELM)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SFT_HELM": str(tmp_path / "no-helm")},
    )
    assert bad.returncode == 1 and "is not an executable" in bad.stderr and not bad.stdout


@pytest.mark.parametrize("mode", MODES)
def test_lint_strict(helm: Helm, mode: str) -> None:
    proc = helm.run("lint", "--strict", str(CHART), *MODES[mode])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("mode", MODES)
def test_every_rendered_object_is_strictly_valid(helm: Helm, mode: str, version: str) -> None:
    """What a GitOps repository would hold: the templates and the CRD."""
    docs = helm.template("--include-crds", *MODES[mode])
    assert "CustomResourceDefinition" in {d["kind"] for d in docs}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {e.message} at {list(e.path)}"
            )


def test_what_each_mode_renders(helm: Helm) -> None:
    cluster = sorted((d["kind"], d["metadata"].get("namespace")) for d in helm.template())
    assert cluster == [
        ("ClusterRole", None),
        ("ClusterRoleBinding", None),
        ("ConfigMap", "sft-system"),
        ("Deployment", "sft-system"),
        ("PodDisruptionBudget", "sft-system"),
        ("Role", "sft-system"),
        ("RoleBinding", "sft-system"),
        ("Secret", "sft-system"),
        ("Service", "sft-system"),
        ("Service", "sft-system"),
        ("ServiceAccount", "sft-system"),
        ("ValidatingWebhookConfiguration", None),
    ]
    namespaced = sorted((d["kind"], d["metadata"].get("namespace")) for d in helm.template(*NAMESPACES_MODE))
    assert namespaced == [
        ("ConfigMap", "sft-system"),
        ("Deployment", "sft-system"),
        ("PodDisruptionBudget", "sft-system"),
        ("Role", "sft-system"),
        ("Role", "team-a"),
        ("Role", "team-b"),
        ("RoleBinding", "sft-system"),
        ("RoleBinding", "team-a"),
        ("RoleBinding", "team-b"),
        ("Secret", "sft-system"),
        ("Service", "sft-system"),
        ("Service", "sft-system"),
        ("ServiceAccount", "sft-system"),
        ("ValidatingWebhookConfiguration", None),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_bindings_name_the_operator_service_account(helm: Helm, mode: str) -> None:
    docs = helm.template(*MODES[mode])
    (account,) = by_kind(docs, "ServiceAccount")
    pod = the_deployment(docs)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    bindings = by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding")
    assert bindings
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "sft-system"}
        ]
        role_kind = "ClusterRole" if binding["kind"] == "ClusterRoleBinding" else "Role"
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": binding["metadata"]["name"],
        }


def test_deployment_runs_two_replicas_one_leading_with_a_liveness_probe(helm: Helm) -> None:
    docs = helm.template()
    deployment = the_deployment(docs)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == [
        "--liveness=http://0.0.0.0:8080/healthz",
        "--readiness=http://0.0.0.0:8081/readyz",
        "--metrics-port=8000",
        "--webhook-port=9443",
        "--webhook-cert-dir=/etc/sft-operator/webhook",
        "--leader-elect",
        "--leader-election-lease=rel-sft-operator",
    ]
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in container["env"]
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    (budget,) = by_kind(docs, "PodDisruptionBudget")
    assert budget["spec"] == {"minAvailable": 1, "selector": spec["selector"]}
    assert container["ports"] == [
        {"name": "health", "containerPort": 8080, "protocol": "TCP"},
        {"name": "ready", "containerPort": 8081, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8000, "protocol": "TCP"},
        {"name": "webhook", "containerPort": 9443, "protocol": "TCP"},
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"] == {
        "httpGet": {"path": "/readyz", "port": "ready"},
        "initialDelaySeconds": 2,
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 1,
    }
    assert container["image"] == "sft-operator:0.1.0"


def test_without_leader_election_one_replica_recreated(helm: Helm) -> None:
    docs = helm.template("--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
    spec = the_deployment(docs)["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    assert "--leader-elect" not in spec["template"]["spec"]["containers"][0]["args"]
    assert by_kind(docs, "PodDisruptionBudget") == []
    refused = helm.run("template", "rel", str(CHART), "--set", "leaderElection.enabled=false")
    assert refused.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled" in refused.stderr


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


@pytest.mark.parametrize(
    ("args", "image"),
    [
        ((), "sft-operator:0.1.0"),
        (
            ("--set", "image.repository=example.test/ml/sft-operator", "--set", "image.tag=1.2.3"),
            "example.test/ml/sft-operator:1.2.3",
        ),
        (
            ("--set", "image.repository=example.test/ml/sft-operator", "--set", "image.digest=sha256:" + "b" * 64),
            "example.test/ml/sft-operator@sha256:" + "b" * 64,
        ),
    ],
)
def test_reporter_image_is_the_operators_own(helm: Helm, args: tuple[str, ...], image: str) -> None:
    """The operator puts the reporter sidecar in every training pod with the image it is told
    by SFT_REPORTER_IMAGE: the chart tells it its own image, whatever the values say."""
    (container,) = the_deployment(helm.template(*args))["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image
    assert env_of(container)[render_meta.ENV_REPORTER_IMAGE] == image
    extra = the_deployment(helm.template(*args, "--set", "extraEnv[0].name=X", "--set-string", "extraEnv[0].value=1"))
    (container,) = extra["spec"]["template"]["spec"]["containers"]
    assert env_of(container) == {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "POD_ID": None,
        "POD_NAMESPACE": None,
        render_meta.ENV_REPORTER_IMAGE: image,
        ENV_POLICY: DEFAULT_POLICY_JSON,
        "X": "1",
    }
    # kopf's peering identity from the pod's name: without it kopf calls getpass.getuser(), which
    # fails for the image's uid 65532 (no passwd entry) and the operator pod crash-loops.
    (pod_id,) = [e for e in container["env"] if e["name"] == "POD_ID"]
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_namespaces_mode_passes_each_namespace(helm: Helm) -> None:
    (container,) = the_deployment(helm.template(*NAMESPACES_MODE))["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "--liveness=http://0.0.0.0:8080/healthz",
        "--readiness=http://0.0.0.0:8081/readyz",
        "--metrics-port=8000",
        "--webhook-port=9443",
        "--webhook-cert-dir=/etc/sft-operator/webhook",
        "--leader-elect",
        "--leader-election-lease=rel-sft-operator",
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_operator_container_is_restricted(helm: Helm) -> None:
    """What Pod Security Standards' "restricted" profile demands, and a read-only root."""
    pod = the_deployment(helm.template())["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert not any("hostPath" in v for v in pod["volumes"])
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


def test_platform_assigned_user_ids(helm: Helm) -> None:
    """runAsUser/runAsGroup null (OpenShift assigns them): omitted, runAsNonRoot stays."""
    pod = the_deployment(helm.template("--set", "runAsUser=null", "--set", "runAsGroup=null"))["spec"]["template"][
        "spec"
    ]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def test_values_are_passed_through(helm: Helm) -> None:
    docs = helm.template(
        "--set",
        "image.repository=example.test/ml/sft-operator",
        "--set",
        "image.digest=sha256:" + "a" * 64,
        "--set",
        "extraArgs={--verbose}",
        "--set",
        "nodeSelector.pool=system",
        "--set",
        "serviceAccount.annotations.team=ml",
        "--set",
        "fullnameOverride=sft",
    )
    deployment = the_deployment(docs)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "example.test/ml/sft-operator@sha256:" + "a" * 64
    assert container["args"][-1] == "--verbose"
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "system"}
    assert deployment["metadata"]["name"] == "sft"
    (account,) = by_kind(docs, "ServiceAccount")
    assert account["metadata"]["annotations"] == {"team": "ml"}


def test_existing_service_account_without_rbac(helm: Helm) -> None:
    docs = helm.template(
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=ops-sa",
        "--set",
        "rbac.create=false",
        "--set",
        "metrics.enabled=false",
        "--set",
        "webhook.enabled=false",
    )
    assert [d["kind"] for d in docs] == ["PodDisruptionBudget", "Deployment"]
    assert the_deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "watch.mode=everywhere"], "/watch/mode"),
        (["--set", "watch.mode=namespaces"], "/watch/namespaces"),
        (["--set", "watch.namespaces={team-a}"], "/watch/namespaces"),
        (["--set", "watch.mode=namespaces", "--set", "watch.namespaces={Team_A}"], "/watch/namespaces/0"),
        (["--set", "runAsUser=0"], "/runAsUser"),
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["--set", "image.digest=latest"], "/image/digest"),
        (["--set", "health.port=80"], "/health/port"),
        (["--set", "health.path=healthz"], "/health/path"),
        (["--set", "metrics.port=80"], "/metrics/port"),
        (["--set", "metrics.serviceMonitor.interval=often"], "/metrics/serviceMonitor/interval"),
        (["--set", "metrics.dashboard.labels.grafana_dashboard=1"], "/metrics/dashboard/labels/grafana_dashboard"),
        (["--set", "metrics.dashboard.namespace=Monitoring"], "/metrics/dashboard/namespace"),
        (["--set", "serviceAccount.create=false"], "/serviceAccount"),
        (["--set", "extraArgs={verbose}"], "/extraArgs/0"),
        # A container's env value is a string: caught here, not by the API server after the install.
        (["--set", "extraEnv[0].name=X", "--set", "extraEnv[0].value=5"], "/extraEnv/0/value"),
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "resources.cpu=1"], "additional properties 'cpu' not allowed"),
        (["--set", "podLabels.app\\.kubernetes\\.io/instance=x"], "invalid propertyName 'app.kubernetes.io/instance'"),
        (["--set", "webhook.failurePolicy=Sometimes"], "/webhook/failurePolicy"),
        (["--set", "webhook.port=443"], "/webhook/port"),
        (["--set", "policy.allowedVolumeTypes={emptyDir,hostPath}"], "/policy/allowedVolumeTypes/1"),
        (["--set", "policy.allowHostPath=maybe"], "/policy/allowHostPath"),
        (["--set", "policy.allowedPriorityClasses={High}"], "/policy/allowedPriorityClasses/0"),
        (["--set", "policy.allowHostPaths=true"], "additional properties 'allowHostPaths' not allowed"),
    ],
)
def test_values_schema_rejects(helm: Helm, args: list[str], expected: str) -> None:
    proc = helm.run("template", "rel", str(CHART), *args)
    assert proc.returncode != 0, f"helm accepted {args}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_metrics_service_dashboard_and_service_monitor(helm: Helm) -> None:
    """/metrics behind a Service that selects the operator's pod, the dashboard ConfigMap with the
    sidecar's label, and a ServiceMonitor only when asked for."""
    docs = helm.template("--set", "webhook.enabled=false")
    deployment = the_deployment(docs)
    (service,) = by_kind(docs, "Service")
    assert service["metadata"]["name"] == "rel-sft-operator-metrics"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}]
    (dashboard,) = by_kind(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "sft-system"
    assert json.loads(dashboard["data"]["sft-operator.json"]) == json.loads(
        (CHART / "dashboards" / "sft-operator.json").read_text()
    )
    assert not by_kind(docs, "ServiceMonitor")

    docs = helm.template(
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=kps",
        "--set",
        "metrics.port=9100",
        "--set",
        "metrics.dashboard.labels.grafana_dashboard=null",
        "--set-string",
        "metrics.dashboard.labels.dashboards=sft",
        "--set",
        "metrics.dashboard.namespace=monitoring",
        "--set",
        "webhook.enabled=false",
    )
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    (service,) = by_kind(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["sft-system"]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s", "honorLabels": True}
    ]
    (container,) = the_deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=9100" in container["args"]
    (dashboard,) = by_kind(docs, "ConfigMap")
    assert "grafana_dashboard" not in dashboard["metadata"]["labels"]
    assert dashboard["metadata"]["labels"]["dashboards"] == "sft"
    assert dashboard["metadata"]["namespace"] == "monitoring"

    off = helm.template("--set", "metrics.enabled=false", "--set", "webhook.enabled=false")
    assert not by_kind(off, "Service") and not by_kind(off, "ConfigMap")
    (container,) = the_deployment(off)["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=0" in container["args"]
    assert [p["name"] for p in container["ports"]] == ["health", "ready"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "metrics.port=8080"], "metrics.port must differ from health.port"),
        (
            ["--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"],
            "metrics.serviceMonitor.enabled needs metrics.enabled",
        ),
    ],
)
def test_metrics_values_that_cannot_work_fail(helm: Helm, args: list[str], expected: str) -> None:
    proc = helm.run("template", "rel", str(CHART), *args)
    assert proc.returncode != 0 and expected in proc.stderr, proc.stderr


def test_values_file_satisfies_its_schema() -> None:
    """The same check without Helm: values.yaml is valid, and the schema itself is well-formed."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_every_value_is_in_the_schema_and_documented() -> None:
    """values.yaml's comments are the values reference: every top-level key has a comment above
    it, or above the group of keys (no blank line between) it belongs to, or as its first line."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])
    lines = (CHART / "values.yaml").read_text().splitlines()
    for key in values:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        first_child = lines[index + 1] if index + 1 < len(lines) else ""
        above = index - 1
        while above >= 0 and lines[above] and not lines[above].startswith(("#", " ")):
            above -= 1  # another top-level key of the same group
        documented = (above >= 0 and lines[above].startswith("#")) or first_child.lstrip().startswith("#")
        assert documented, f"values.yaml: {key} has no comment"


def test_chart_ships_the_generated_crd() -> None:
    """Helm installs crds/ before the templates; the copy must be the generated file (the drift
    against the models is test_crd.py's job)."""
    copies = sorted((CHART / "crds").iterdir())
    assert [p.name for p in copies] == ["sftjobs.finetune.dev.yaml"]
    assert copies[0].read_text() == (ROOT / "crds" / "sftjobs.finetune.dev.yaml").read_text()


def test_notes_render_for_each_mode(helm: Helm) -> None:
    for mode, expected in (("cluster", "in every namespace"), ("namespaces", "only in: team-a, team-b")):
        proc = helm.run("install", "rel", str(CHART), "--dry-run=client", "--namespace", "sft-system", *MODES[mode])
        assert proc.returncode == 0, proc.stderr
        assert expected in proc.stdout


# --- docs/helm.md ---------------------------------------------------------------------------------

DOC = ROOT / "docs" / "helm.md"


def doc_sftjobs() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc and doc.get("kind") == "SFTJob"]


def test_doc_sftjobs_pass_the_chart_crd_schema_and_the_operator() -> None:
    """Custom resources are validated against the CRD the chart installs (jsonschema; OpenAPI's
    boolean exclusiveMinimum is draft 4's) and by the operator's own parser."""
    from sft_models.models import parse_job

    crd = yaml.safe_load((CHART / "crds" / "sftjobs.finetune.dev.yaml").read_text())
    validator = jsonschema.Draft4Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    jobs = doc_sftjobs()
    assert jobs, "docs/helm.md shows no SFTJob"
    for job in jobs:
        assert [e.message for e in validator.iter_errors(job)] == []
        parse_job({**job, "metadata": {**job["metadata"], "namespace": "team-a"}})


def leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        if isinstance(value, dict) and value and key != "resources":
            paths += leaf_paths(value, f"{prefix}{key}.")
        else:
            paths.append(f"{prefix}{key}")
    return paths


def test_doc_values_table_lists_every_value() -> None:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `")]
    documented = " ".join(row.split("|")[1] for row in rows)
    missing = [p for p in leaf_paths(yaml.safe_load((CHART / "values.yaml").read_text())) if f"`{p}`" not in documented]
    assert missing == [], f"docs/helm.md's values table lacks {missing}"


# --- the admission webhook ------------------------------------------------------------------------


def webhook_objects(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    (configuration,) = by_kind(docs, "ValidatingWebhookConfiguration")
    (service,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-webhook")]
    (webhook,) = configuration["webhooks"]
    return configuration, service, webhook


def test_webhook_is_wired_to_the_operator(helm: Helm) -> None:
    """The configuration calls the operator's handler path through the Service, which reaches the
    operator's webhook port; only CREATE and UPDATE of sftjobs (not sftjobs/status), failing
    closed; the serving certificate is mounted where the operator reads it."""
    docs = helm.template()
    configuration, service, webhook = webhook_objects(docs)
    assert configuration["metadata"]["name"] == "rel-sft-operator"
    assert webhook["clientConfig"]["service"] == {
        "name": "rel-sft-operator-webhook",
        "namespace": "sft-system",
        "path": f"/{admission.WEBHOOK_ID}",
        "port": 443,
    }
    assert webhook["rules"] == [
        {
            "apiGroups": ["finetune.dev"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["sftjobs"],
            "scope": "Namespaced",
        }
    ]
    assert (webhook["failurePolicy"], webhook["sideEffects"], webhook["timeoutSeconds"]) == ("Fail", "None", 10)
    assert webhook["admissionReviewVersions"] == ["v1"]
    deployment = the_deployment(docs)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    assert {"name": "webhook-tls", "mountPath": "/etc/sft-operator/webhook", "readOnly": True} in container[
        "volumeMounts"
    ]
    # Ready waits for the webhook to listen: /readyz checks the port it is told (readiness.py).
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ready"}
    assert "--webhook-port=9443" in container["args"] and "--readiness=http://0.0.0.0:8081/readyz" in container["args"]
    assert {"name": "webhook-tls", "secret": {"secretName": "rel-sft-operator-webhook-tls"}} in pod["volumes"]


def test_generated_certificate_serves_the_service_name(helm: Helm) -> None:
    """The Secret's certificate is signed by the CA in caBundle and names the Service as the API
    server dials it (<service>.<namespace>.svc); key and certificate belong together."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    docs = helm.template()
    _, _, webhook = webhook_objects(docs)
    (secret,) = by_kind(docs, "Secret")
    assert (secret["metadata"]["name"], secret["type"]) == ("rel-sft-operator-webhook-tls", "kubernetes.io/tls")
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(base64.b64decode(webhook["clientConfig"]["caBundle"]))
    assert data["ca.crt"] == base64.b64decode(webhook["clientConfig"]["caBundle"])
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "rel-sft-operator-webhook.sft-system.svc" in names
    key = serialization.load_pem_private_key(data["tls.key"], password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]  # RSA keys


def test_webhook_with_a_certificate_of_yours_or_off(helm: Helm) -> None:
    docs = helm.template(
        "--set",
        "webhook.tls.existingSecret=my-tls",
        "--set",
        "webhook.tls.caBundle=Q0E=",
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        "webhook.annotations.cert-manager\\.io/inject-ca-from=sft-system/my-cert",
    )
    configuration, _, webhook = webhook_objects(docs)
    assert not by_kind(docs, "Secret")
    assert (webhook["clientConfig"]["caBundle"], webhook["failurePolicy"]) == ("Q0E=", "Ignore")
    assert configuration["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "sft-system/my-cert"}
    pod = the_deployment(docs)["spec"]["template"]["spec"]
    assert {"name": "webhook-tls", "secret": {"secretName": "my-tls"}} in pod["volumes"]

    off = helm.template("--set", "webhook.enabled=false")
    assert not by_kind(off, "ValidatingWebhookConfiguration") and not by_kind(off, "Secret")
    (container,) = the_deployment(off)["spec"]["template"]["spec"]["containers"]
    assert not any(a.startswith("--webhook") for a in container["args"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ready"}  # the API check stays
    assert "webhook-tls" not in {v["name"] for v in the_deployment(off)["spec"]["template"]["spec"]["volumes"]}


def test_policy_values_reach_the_operator(helm: Helm) -> None:
    """SFT_ADMISSION_POLICY is the values' policy, in the form the operator loads."""
    (container,) = the_deployment(
        helm.template(
            "--set",
            "policy.allowHostPath=true",
            "--set",
            "policy.allowedPriorityClasses={training-high}",
        )
    )["spec"]["template"]["spec"]["containers"]
    policy = load_policy(env_of(container)[ENV_POLICY])
    assert policy == AdmissionPolicy(allow_host_path=True, allowed_priority_classes=["training-high"])


def test_namespaces_mode_webhook_selects_the_watched_namespaces(helm: Helm) -> None:
    """From 1.21 on (namespaces carry kubernetes.io/metadata.name) the webhook is asked only for
    the watched namespaces' jobs; before, and in cluster mode, for every namespace's (the operator
    admits jobs outside its namespaces unchecked)."""
    configuration, _, webhook = webhook_objects(helm.template(*NAMESPACES_MODE, "--kube-version", "1.25.0"))
    kubernetes_validate.validate(configuration, "1.25.0", strict=True)
    assert webhook["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]
    }
    _, _, webhook = webhook_objects(helm.template(*NAMESPACES_MODE, "--kube-version", "1.20.2"))
    assert "namespaceSelector" not in webhook
    _, _, webhook = webhook_objects(helm.template("--kube-version", "1.25.0"))
    assert "namespaceSelector" not in webhook


def test_notes_say_what_the_webhook_admits(helm: Helm) -> None:
    proc = helm.run("install", "rel", str(CHART), "--dry-run=client", "--namespace", "sft-system")
    assert proc.returncode == 0, proc.stderr
    assert "only from users who\nmay create pods in the job's namespace" in proc.stdout
    assert "(hostPath refused; see values `policy`)" in proc.stdout
    assert "While no operator pod answers, no SFTJob can be created or changed." in proc.stdout
    off = helm.run(
        "install", "rel", str(CHART), "--dry-run=client", "--namespace", "sft-system", "--set", "webhook.enabled=false"
    )
    assert off.returncode == 0 and "admitted by the operator's webhook" not in off.stdout
