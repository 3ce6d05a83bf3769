"""Least privilege: the chart's RBAC grants exactly the written allow-list below, no wildcard,
the same rules in both modes, and covers what the operator's code calls.

Proof that the rules suffice on a real API server is tests/integration/test_helm_install.py.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sft_core import contract
from sft_models.models import parse_job
from sft_operator import render, render_meta


def _chart_tests() -> Any:
    """test_helm_chart.py's Helm runner, loaded by path (works in any pytest import mode)."""
    spec = importlib.util.spec_from_file_location("_helm_chart_tests", Path(__file__).with_name("test_helm_chart.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_chart = _chart_tests()
MODES, NAMESPACES_MODE, ROOT, Helm, by_kind = (
    _chart.MODES,
    _chart.NAMESPACES_MODE,
    _chart.ROOT,
    _chart.Helm,
    _chart.by_kind,
)

PACKAGE = ROOT / "operator" / "sft_operator"
OPERATOR_ENTRY = "operator_main"  # the module `sft-operator run` runs; what it imports runs with it

GANG_GROUPS = sorted({api_version.split("/")[0] for api_version in render_meta.PODGROUP_API_VERSION.values()})

# (apiGroup, resource) -> verbs. Change it only together with the chart's rules and docs/rbac.md.
ALLOW_LIST: dict[tuple[str, str], set[str]] = {
    # kopf lists/watches SFTJobs and patches its progress and diff-base annotations onto them;
    # the operator reads a job before re-creating a deleted child.
    (contract.GROUP, contract.PLURAL): {"get", "list", "watch", "patch", "delete"},
    # The operator writes status through the subresource only.
    (contract.GROUP, f"{contract.PLURAL}/status"): {"patch"},
    # Children's owner references set blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
    (contract.GROUP, f"{contract.PLURAL}/finalizers"): {"update"},
    # Events on SFTJobs.
    ("", "events"): {"create"},
    # The admission webhook: may the requesting user create the job's pods (and claim)?
    ("authorization.k8s.io", "localsubjectaccessreviews"): {"create"},
    # Children: read, created, updated (replace); watched to derive the status or to re-create
    # a deleted one.
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "update"},
    ("", "services"): {"get", "list", "watch", "create"},
    # list: an operator restart lists the unwatched children per namespace, not per job.
    ("", "persistentvolumeclaims"): {"get", "list", "create", "update"},
    # patch is held so that the per-job Role may grant it to the reporter.
    ("", "configmaps"): {"get", "list", "watch", "create", "update", "patch"},
    ("", "pods"): {"list", "watch", "delete"},
    # The reporter's per-job ServiceAccount, Role and RoleBinding.
    ("", "serviceaccounts"): {"get", "list", "create", "update"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "list", "create", "update"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "list", "create", "update"},
    # The job's NetworkPolicy: listed at a restart, watched to re-create a deleted one, updated
    # when its rules differ.
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "update"},
    # A gang job's PodGroup, for either gang scheduler (spec.scheduling.gang.provider).
    **{(group, render_meta.PODGROUP_PLURAL): {"get", "create", "update"} for group in GANG_GROUPS},
}

# What the per-job Role grants the status reporter (resourceNames: the job's progress ConfigMap).
REPORTER_GRANT = {("", "configmaps"): {"get", "patch"}}


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return Helm.provision(tmp_path_factory.mktemp("helm-home"))


LEADER_ELECTION_ROLE = "rel-sft-operator-leader-election"


def rules_of(docs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The rules of the operator's job (every Role and ClusterRole but leader election's)."""
    return [
        role["rules"]
        for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
        if role["metadata"]["name"] != LEADER_ELECTION_ROLE
    ]


@pytest.mark.parametrize("mode", MODES)
def test_leader_election_gets_its_one_lease_in_the_release_namespace(helm: Any, mode: str) -> None:
    """create on leases (it cannot be limited by name), get and update on the one Lease only."""
    docs = helm.template(*MODES[mode])
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == LEADER_ELECTION_ROLE]
    assert role["metadata"]["namespace"] == "sft-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["rel-sft-operator"],
            "verbs": ["get", "update"],
        },
    ]
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == LEADER_ELECTION_ROLE]
    assert binding["roleRef"]["name"] == LEADER_ELECTION_ROLE and binding["metadata"]["namespace"] == "sft-system"
    assert not [
        r
        for r in by_kind(helm.template("--set", "leaderElection.enabled=false", "--set", "replicaCount=1"), "Role")
        if r["metadata"]["name"] == LEADER_ELECTION_ROLE
    ]


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def covers(granted: dict[tuple[str, str], set[str]], needed: dict[tuple[str, str], set[str]]) -> list[str]:
    return [
        f"{group or 'core'}/{resource}: {verb}"
        for (group, resource), verbs in sorted(needed.items())
        for verb in sorted(verbs - granted.get((group, resource), set()))
    ]


@pytest.mark.parametrize("mode", MODES)
def test_no_wildcards_and_nothing_beyond_the_allow_list(helm: Any, mode: str) -> None:
    roles = rules_of(helm.template(*MODES[mode]))
    assert roles, "no Role or ClusterRole rendered"
    for rules in roles:
        for rule in rules:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected keys (nonResourceURLs?): {rule}"
            for key in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule[key]), f"wildcard in {key}: {rule}"
        assert grants(rules) == ALLOW_LIST


def test_both_modes_grant_the_same_rules(helm: Any) -> None:
    (cluster_rules,) = rules_of(helm.template())
    namespaced = rules_of(helm.template(*NAMESPACES_MODE))
    assert len(namespaced) == 2
    assert all(rules == cluster_rules for rules in namespaced)


def test_no_escalation_verbs(helm: Any) -> None:
    """The operator grants the reporter only what it holds itself: no bind, escalate or
    impersonate, and no access to Secrets."""
    granted = grants(rules_of(helm.template())[0])
    assert not any(verbs & {"bind", "escalate", "impersonate"} for verbs in granted.values())
    assert ("", "secrets") not in granted


def test_operator_holds_what_the_per_job_role_grants(helm: Any) -> None:
    granted = grants(rules_of(helm.template())[0])
    assert covers(granted, REPORTER_GRANT) == []


def sample_job() -> Any:
    body = yaml.safe_load((ROOT / "examples" / "sftjob-minimal.yaml").read_text())
    body["metadata"].update(namespace="team-a", uid="00000000-0000-0000-0000-000000000001")
    return parse_job(body)


def gang_jobs() -> list[Any]:
    """The sample job with each gang scheduler (each renders a PodGroup of its own group)."""
    jobs = []
    for provider in render_meta.PODGROUP_API_VERSION:
        body = yaml.safe_load((ROOT / "examples" / "sftjob-minimal.yaml").read_text())
        body["metadata"].update(namespace="team-a", uid="00000000-0000-0000-0000-000000000001")
        body["spec"]["scheduling"] = {"gang": {"provider": provider.value}}
        jobs.append(parse_job(body))
    return jobs


def test_operator_may_create_every_child(helm: Any) -> None:
    """Every kind render.py produces for a job can be read and created (updates are covered by
    the code scan below); a per-job Role, once rendered, grants nothing the operator lacks."""
    granted = grants(rules_of(helm.template())[0])
    needed: dict[tuple[str, str], set[str]] = {}
    children = [child for job in [sample_job(), *gang_jobs()] for child in render.render_children(job)]
    assert {c["apiVersion"] for c in children if c["kind"] == "PodGroup"} == set(
        render_meta.PODGROUP_API_VERSION.values()
    )
    for child in children:
        group = child["apiVersion"].rpartition("/")[0]
        needed[(group, render_meta.resource_plural(child["kind"]))] = {"get", "create"}
        if child["kind"] == "Role":
            for held in grants(child["rules"]).items():
                needed.setdefault(held[0], set()).update(held[1])
    assert covers(granted, needed) == []


# --- what the operator's code calls -------------------------------------------------------------

VERB_OF_METHOD = {
    "read": "get",
    "get": "get",  # get_namespaced_custom_object: CustomObjectsApi's read
    "create": "create",
    "replace": "update",
    "patch": "patch",
    "delete": "delete",
    "list": "list",
}
CLIENT_CALL = re.compile(r"\.(read|get|create|replace|patch|delete|list)_namespaced_([a-z_]+)\b")
# kubernetes-client method names -> (apiGroup, resource); custom objects are only ever ours.
RESOURCE_OF_METHOD = {
    "stateful_set": ("apps", "statefulsets"),
    "service": ("", "services"),
    "config_map": ("", "configmaps"),
    "persistent_volume_claim": ("", "persistentvolumeclaims"),
    "pod": ("", "pods"),
    "event": ("", "events"),
    "service_account": ("", "serviceaccounts"),
    "role": ("rbac.authorization.k8s.io", "roles"),
    "role_binding": ("rbac.authorization.k8s.io", "rolebindings"),
    "network_policy": ("networking.k8s.io", "networkpolicies"),
    "custom_object": (contract.GROUP, contract.PLURAL),
    "local_subject_access_review": ("authorization.k8s.io", "localsubjectaccessreviews"),
}
# custom_object calls are told apart by their plural argument (as the code spells it): our
# SFTJobs, or a gang's PodGroups (the group is the job's scheduler's: every GANG_GROUPS one).
CUSTOM_OBJECT_PLURALS: dict[str, list[tuple[str, str]]] = {
    "contract.PLURAL": [(contract.GROUP, contract.PLURAL)],
    "render_meta.PODGROUP_PLURAL": [(group, render_meta.PODGROUP_PLURAL) for group in GANG_GROUPS],
}
CUSTOM_OBJECT_CALL = re.compile(r"(read|get|create|replace|patch|delete|list)_namespaced_custom_object(_status)?")
# Referenced by the code but never reached, so not granted; each with the reason.
NEVER_CALLED = {
    # Kube._write's PUT is reached for every kind the scan sees, but ensure_child leaves an
    # existing Service's spec alone (only StatefulSet, ConfigMap and our claim are ever replaced).
    ("", "services"): {"update"},
}
# kube.Kube._write: a POST (create) or PUT (update) of a manifest by the path its apiVersion
# and kind name: every child the operator renders (a gang's PodGroup goes through custom_object
# calls) and, for POST, the Events it posts.
RAW_WRITE = re.compile(r'\._write\(\s*"(POST|PUT)"')
VERB_OF_RAW_WRITE = {"POST": "create", "PUT": "update"}
KOPF_RESOURCE_DECORATORS = {"index", "event", "create", "update", "resume", "delete", "field", "timer", "daemon"}
KOPF_WRITING_HANDLERS = {"create", "update", "resume", "delete", "field"}  # kopf patches annotations


def operator_modules() -> list[Path]:
    """The entry module and every sft_operator module it imports, transitively."""
    seen: dict[str, Path] = {}
    todo = [OPERATOR_ENTRY]
    while todo:
        name = todo.pop()
        path = PACKAGE / f"{name.replace('.', '/')}.py"
        if name in seen or not path.is_file():
            continue
        seen[name] = path
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "sft_operator":
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sft_operator."):
                todo.append(node.module.removeprefix("sft_operator."))
    return list(seen.values())


def kopf_resource(call: ast.Call) -> tuple[str, str]:
    """(apiGroup, plural) of a kopf decorator: ("pods"), (group, version, plural) or (*JOB)."""
    if len(call.args) == 1 and isinstance(call.args[0], ast.Starred):
        return (contract.GROUP, contract.PLURAL)
    strings = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if len(strings) == 1:
        return ("", strings[0])
    if len(strings) == 3:
        return (strings[0], strings[2])
    raise AssertionError(f"unrecognised kopf resource arguments at line {call.lineno}: add the form here")


def used_by_code() -> dict[tuple[str, str], set[str]]:
    used: dict[tuple[str, str], set[str]] = {}
    for path in operator_modules():
        source = path.read_text()
        for method, target in CLIENT_CALL.findall(source):
            status = target.endswith("_status")
            target = target.removesuffix("_status")
            if target == "custom_object":
                continue  # by the AST below: the plural argument names the resource
            assert target in RESOURCE_OF_METHOD, (
                f"{path.name}: {method}_namespaced_{target}: add it to RESOURCE_OF_METHOD"
            )
            group, resource = RESOURCE_OF_METHOD[target]
            used.setdefault((group, resource + ("/status" if status else "")), set()).add(VERB_OF_METHOD[method])
        for method in RAW_WRITE.findall(source):
            written = {
                (child["apiVersion"].rpartition("/")[0], render_meta.resource_plural(child["kind"]))
                for job in [sample_job(), *gang_jobs()]
                for child in render.render_children(job)
                if child["kind"] != render_meta.PODGROUP_KIND
            }
            for key in written | ({("", "events")} if method == "POST" else set()):
                used.setdefault(key, set()).add(VERB_OF_RAW_WRITE[method])
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            chain = ast.unparse(node.func)
            kind = chain.rsplit(".", 1)[-1]
            custom = CUSTOM_OBJECT_CALL.fullmatch(node.func.attr)
            if custom:
                args = [ast.unparse(arg) for arg in node.args]
                plurals = [arg for arg in args if arg in CUSTOM_OBJECT_PLURALS]
                assert len(plurals) == 1, (
                    f"{path.name}:{node.lineno}: {chain}({', '.join(args)}): "
                    "name the plural as contract.PLURAL or render_meta.PODGROUP_PLURAL, or add it to CUSTOM_OBJECT_PLURALS"
                )
                for group, resource in CUSTOM_OBJECT_PLURALS[plurals[0]]:
                    key = (group, resource + ("/status" if custom.group(2) else ""))
                    used.setdefault(key, set()).add(VERB_OF_METHOD[custom.group(1)])
                continue
            decorator = chain == "kopf.index" or chain.startswith("kopf.on.")
            if decorator and kind in KOPF_RESOURCE_DECORATORS and node.args:
                key = kopf_resource(node)
                used.setdefault(key, set()).update({"list", "watch"})
                if kind in KOPF_WRITING_HANDLERS:
                    used[key].add("patch")
            elif chain in ("kopf.event", "kopf.info", "kopf.warn", "kopf.exception"):
                used.setdefault(("", "events"), set()).add("create")
    return used


def test_code_scan_sees_the_operator() -> None:
    """Guards the scan itself: it must find the calls we know exist."""
    used = used_by_code()
    assert (
        used[("apps", "statefulsets")] == {"get", "list", "watch", "create", "update"} and "watch" in used[("", "pods")]
    )
    assert used[("", "events")] == {"create"}
    assert used[("rbac.authorization.k8s.io", "roles")] == {"get", "list", "create", "update"}
    assert used[(contract.GROUP, f"{contract.PLURAL}/status")] == {"patch"}
    assert used[(contract.GROUP, contract.PLURAL)] >= {"get", "delete"}
    for group in GANG_GROUPS:
        assert used[(group, render_meta.PODGROUP_PLURAL)] == {"get", "create", "update"}


def test_chart_grants_everything_the_operator_calls(helm: Any) -> None:
    granted = grants(rules_of(helm.template())[0])
    used = {key: verbs - NEVER_CALLED.get(key, set()) for key, verbs in used_by_code().items()}
    missing = covers(granted, used)
    assert missing == [], f"the operator calls these but the chart does not grant them: {missing}"


# --- docs/rbac.md ---------------------------------------------------------------------------------


def documented_grants() -> dict[tuple[str, str], set[str]]:
    text = (ROOT / "docs" / "rbac.md").read_text()
    block = re.search(r"As a ClusterRole:\s*```yaml\n(.*?)```", text, re.S)
    assert block, "docs/rbac.md lost its ClusterRole block"
    return grants(yaml.safe_load(block.group(1))["rules"])


def test_chart_rules_are_docs_rbac_md() -> None:
    """The chart grants exactly docs/rbac.md's rules (which tests/integration/test_operator_rbac.py
    runs the operator with): nothing cluster-scoped, since kopf's scanning is disabled."""
    assert documented_grants() == ALLOW_LIST


def test_reporter_role_grants_exactly_the_reporter_grant() -> None:
    """render.py's per-job Role: get and patch on the job's own progress ConfigMap, nothing else."""
    job = sample_job()
    role = next(child for child in render.render_children(job) if child["kind"] == "Role")
    assert grants(role["rules"]) == REPORTER_GRANT
    assert [rule["resourceNames"] for rule in role["rules"]] == [[contract.progress_configmap_name(job.metadata.name)]]
