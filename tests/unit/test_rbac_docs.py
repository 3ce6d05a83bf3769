"""docs/rbac.md and docs/helm.md say what the chart grants, line by line: the chart is rendered
by a real Helm in both watch modes, and every Role and ClusterRole it holds, each rule (API
group, resource, resource names, verbs), where each goes and whom it is bound to, is compared
with the docs' tables. Whatever the chart holds: a Role or a rule added to it (or taken out)
fails here until the tables say so.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml


def _chart_tests() -> Any:
    """test_helm_chart.py's Helm runner, loaded by path (works in any pytest import mode)."""
    spec = importlib.util.spec_from_file_location(
        "_helm_chart_tests_rbac_docs", Path(__file__).with_name("test_helm_chart.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_chart = _chart_tests()
MODES, ROOT, Helm, by_kind = _chart.MODES, _chart.ROOT, _chart.Helm, _chart.by_kind
RBAC_MD, HELM_MD = ROOT / "docs" / "rbac.md", ROOT / "docs" / "helm.md"
RELEASE_NAMESPACE = "sft-system"  # Helm.template's
WATCHED = ["team-a", "team-b"]  # NAMESPACES_MODE's
FULLNAME = "rel-sft-operator"  # release "rel", chart "sft-operator"
PLACEHOLDER = "<fullname>"
# The docs' words for where a Role goes.
CLUSTER_WIDE, EACH_WATCHED, RELEASE = "cluster-wide", "each watched namespace", "the release namespace"

Grant = tuple[str, str, str, tuple[str, ...]]  # (role, apiGroup, resource, resourceNames)


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return Helm.provision(tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def rendered(helm: Any) -> dict[str, list[dict[str, Any]]]:
    return {mode: helm.template(*args) for mode, args in MODES.items()}


def templated(name: str) -> str:
    return name.replace(FULLNAME, PLACEHOLDER)


def roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return by_kind(docs, "ClusterRole") + by_kind(docs, "Role")


def rule_grants(role: str, rules: list[dict[str, Any]]) -> dict[Grant, set[str]]:
    out: dict[Grant, set[str]] = {}
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "resourceNames", "verbs"}, f"{role}: {rule}"
        names = tuple(sorted(templated(n) for n in rule.get("resourceNames") or []))
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((role, group, resource, names), set()).update(rule["verbs"])
    return out


def chart_grants(docs: list[dict[str, Any]]) -> dict[Grant, set[str]]:
    """Every rule of every Role and ClusterRole, by the Role's name as the docs write it; a Role
    placed in several namespaces must hold the same rules in each."""
    by_role: dict[str, dict[Grant, set[str]]] = {}
    for role in roles(docs):
        name = templated(role["metadata"]["name"])
        grants = rule_grants(name, role["rules"])
        assert by_role.setdefault(name, grants) == grants, f"{name} differs between namespaces"
    return {grant: verbs for grants in by_role.values() for grant, verbs in grants.items()}


def chart_placement(docs: list[dict[str, Any]]) -> dict[str, str]:
    """Where each Role goes: cluster-wide, each watched namespace, or the release namespace."""
    places: dict[str, set[str | None]] = {}
    for role in roles(docs):
        namespace = role["metadata"].get("namespace") if role["kind"] == "Role" else None
        places.setdefault(templated(role["metadata"]["name"]), set()).add(namespace)
    words = {frozenset({None}): CLUSTER_WIDE, frozenset(WATCHED): EACH_WATCHED, frozenset({RELEASE_NAMESPACE}): RELEASE}
    out = {}
    for name, namespaces in places.items():
        assert frozenset(namespaces) in words, f"{name} is in {sorted(map(str, namespaces))}: add the words for it here"
        out[name] = words[frozenset(namespaces)]
    return out


# --- the docs' tables ---------------------------------------------------------------------------

CODE = re.compile(r"`([^`]*)`")


def table_after(path: Path, marker: str) -> list[dict[str, str]]:
    """The rows (header -> cell) of the first Markdown table after the line with ``marker``."""
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if marker in line), None)
    assert start is not None, f"{path.name} lost its {marker!r} table"
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, separator, *body = rows
    assert set("".join(separator)) <= set("-: "), f"{path.name}: no table under {marker!r}"
    return [dict(zip(header, row, strict=True)) for row in body]


def code_spans(cell: str) -> list[str]:
    return CODE.findall(cell)


def documented_grants(path: Path) -> dict[Grant, set[str]]:
    out: dict[Grant, set[str]] = {}
    for row in table_after(path, "rbac-grants"):
        (role,) = code_spans(row["Role"])
        group = "" if row["API group"] == "core" else code_spans(row["API group"])[0]
        (resource,) = code_spans(row["Resource"])
        names = () if row["Resource names"] == "any" else tuple(sorted(code_spans(row["Resource names"])[:1]))
        grant = (role, group, resource, names)
        assert grant not in out, f"{path.name}: {grant} twice"
        out[grant] = set(code_spans(row["Verbs"]))
    return out


def documented_placement(path: Path, mode: str) -> dict[str, str]:
    column = next(header for header in table_after(path, "rbac-placement")[0] if f"watch.mode: {mode}" in header)
    out = {}
    for row in table_after(path, "rbac-placement"):
        (role,) = code_spans(row["Role"])[:1]
        cell = row[column]
        kind = code_spans(cell)[0]
        if kind == "ClusterRole" and CLUSTER_WIDE in cell:
            out[role] = CLUSTER_WIDE
        elif kind == "Role" and f"in {EACH_WATCHED}" in cell:
            out[role] = EACH_WATCHED
        elif kind == "Role" and f"in {RELEASE}" in cell:
            out[role] = RELEASE
        else:
            raise AssertionError(f"{path.name}: cannot read where {role} goes in {mode} mode: {cell!r}")
    return out


def differences(documented: dict[Grant, set[str]], granted: dict[Grant, set[str]]) -> list[str]:
    def show(grant: Grant) -> str:
        role, group, resource, names = grant
        return f"{role}: {group or 'core'}/{resource}" + (f" {list(names)}" if names else "")

    return (
        [
            f"granted, not in the docs: {show(g)} {sorted(granted[g])}"
            for g in sorted(granted.keys() - documented.keys())
        ]
        + [
            f"in the docs, not granted: {show(g)} {sorted(documented[g])}"
            for g in sorted(documented.keys() - granted.keys())
        ]
        + [
            f"verbs differ: {show(g)}: docs {sorted(documented[g])}, chart {sorted(granted[g])}"
            for g in sorted(granted.keys() & documented.keys())
            if granted[g] != documented[g]
        ]
    )


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [RBAC_MD, HELM_MD], ids=lambda p: p.name)
@pytest.mark.parametrize("mode", MODES)
def test_the_docs_list_every_rule_the_chart_grants(rendered: dict[str, Any], mode: str, doc: Path) -> None:
    assert differences(documented_grants(doc), chart_grants(rendered[mode])) == []


@pytest.mark.parametrize("doc", [RBAC_MD, HELM_MD], ids=lambda p: p.name)
@pytest.mark.parametrize("mode", MODES)
def test_the_docs_say_where_each_role_goes(rendered: dict[str, Any], mode: str, doc: Path) -> None:
    assert documented_placement(doc, mode) == chart_placement(rendered[mode])


@pytest.mark.parametrize("mode", MODES)
def test_every_role_is_bound_to_the_operators_service_account_alone(rendered: dict[str, Any], mode: str) -> None:
    """What the docs say of the bindings: one per Role, same name and place, the operator's
    ServiceAccount its only subject; no binding of anything else."""
    docs = rendered[mode]
    binding_kind = {"ClusterRole": "ClusterRoleBinding", "Role": "RoleBinding"}
    bindings = {
        (b["kind"], b["metadata"]["name"], b["metadata"].get("namespace")): b
        for b in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding")
    }
    expected = set()
    for role in roles(docs):
        key = (binding_kind[role["kind"]], role["metadata"]["name"], role["metadata"].get("namespace"))
        expected.add(key)
        assert key in bindings, f"no binding for {role['kind']} {key[1]} in {key[2]}"
        binding = bindings[key]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role["kind"],
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}]
    assert set(bindings) == expected


def test_the_clusterrole_block_is_the_fullname_rows() -> None:
    """docs/rbac.md's YAML block (what tests/integration/test_operator_rbac.py runs the operator
    with) holds exactly the table's <fullname> rows."""
    block = re.search(r"As a ClusterRole:\s*```yaml\n(.*?)```", RBAC_MD.read_text(), re.S)
    assert block, "docs/rbac.md lost its ClusterRole block"
    in_block = rule_grants(PLACEHOLDER, yaml.safe_load(block.group(1))["rules"])
    in_table = {grant: verbs for grant, verbs in documented_grants(RBAC_MD).items() if grant[0] == PLACEHOLDER}
    assert differences(in_table, in_block) == []


def test_the_tables_are_read_whole() -> None:
    """Guards the parser: every row of each table is read, and what it reads is what is written."""
    after = RBAC_MD.read_text().split("<!-- rbac-grants", 1)[1].splitlines()[1:]
    table = [line for line in after[: next(i for i, line in enumerate(after) if not line.startswith("|"))]]
    assert len(documented_grants(RBAC_MD)) == len(table) - 2 > 10
    assert documented_grants(RBAC_MD)[(PLACEHOLDER, "", "pods", ())] == {"list", "watch", "delete"}
    assert documented_grants(RBAC_MD)[
        (f"{PLACEHOLDER}-leader-election", "coordination.k8s.io", "leases", (PLACEHOLDER,))
    ] == {"get", "update"}
    assert documented_placement(RBAC_MD, "namespaces")[PLACEHOLDER] == EACH_WATCHED
    assert documented_placement(RBAC_MD, "cluster")[PLACEHOLDER] == CLUSTER_WIDE
    # A grant the docs leave out is reported, and so are different verbs.
    granted = {(PLACEHOLDER, "", "pods", ()): {"list"}, (PLACEHOLDER, "", "secrets", ()): {"get"}}
    assert differences({(PLACEHOLDER, "", "pods", ()): {"list", "delete"}}, granted) == [
        "granted, not in the docs: <fullname>: core/secrets ['get']",
        "verbs differ: <fullname>: core/pods: docs ['delete', 'list'], chart ['list']",
    ]


def test_what_the_docs_say_of_the_switches(helm: Any) -> None:
    """rbac.create: false renders no Role and no binding; leaderElection.enabled: false (one
    replica) leaves out <fullname>-leader-election alone."""
    assert not [
        d
        for d in helm.template("--set", "rbac.create=false")
        if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
    ]
    single = helm.template("--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
    assert sorted(chart_placement(single)) == [PLACEHOLDER]
    text = RBAC_MD.read_text()
    assert "`rbac.create: false`" in text and "`leaderElection.enabled: false`" in text
