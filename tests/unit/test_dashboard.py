"""The chart's Grafana dashboard names only metrics the operator exposes, and shows every one of
the operator's own."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sft_operator.metrics import JOB_GAUGES, OperatorMetrics, metric_names

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "sft-operator" / "dashboards" / "sft-operator.json"
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not a function, a
    keyword, a label name (in a matcher or a by/without/on/ignoring list) or inside a string."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, $variables)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery windows
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):  # not in 5m or 1e3
        following = expr[match.end() :].lstrip()
        if following.startswith("(") or match.group() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def label_values_metric(query: str) -> set[str]:
    """label_values(METRIC{...}, label) -> the metric (Grafana's template query)."""
    match = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\)", query.strip())
    assert match, query
    return promql_metric_names(match.group(1))


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queried_metrics() -> dict[str, set[str]]:
    """{where: metric names} for every panel target and template variable query."""
    found = {}
    for panel in panels():
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = promql_metric_names(target["expr"])
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            found[f"variable {variable['name']}"] = label_values_metric(variable["query"]["query"])
    return found


def test_the_parser_finds_metric_names_only() -> None:
    assert promql_metric_names(
        "histogram_quantile(0.95, sum by (le, phase) (rate(sft_operator_reconcile_duration_seconds_bucket"
        '{namespace=~"$namespace", job!="x"}[5m]))) / on (le) group_left sum(up) or vector(0)'
    ) == {"sft_operator_reconcile_duration_seconds_bucket", "up"}
    assert promql_metric_names('sft_operator_jobs{phase="Running"} offset 5m > bool 0') == {"sft_operator_jobs"}
    assert label_values_metric('label_values(sft_operator_jobs{namespace=~"$ns"}, namespace)') == {"sft_operator_jobs"}


def test_every_queried_metric_exists_in_the_registry() -> None:
    known = metric_names(OperatorMetrics().registry)
    unknown = {where: names - known for where, names in queried_metrics().items() if names - known}
    assert unknown == {}
    assert all(queried_metrics().values()), "a query that names no metric"


def test_every_operator_metric_is_on_a_panel() -> None:
    shown = set().union(*queried_metrics().values())
    ours = {
        "sft_operator_jobs",
        "sft_operator_failed_jobs",
        *JOB_GAUGES,
        "sft_operator_reconciles_total",
        "sft_operator_reconcile_duration_seconds_bucket",
        "sft_operator_handler_retries_total",
        "sft_operator_api_requests_total",
        "sft_operator_api_errors_total",
        "sft_operator_status_patches_total",
    }
    assert ours - shown == set()


def test_panels_are_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "sft-operator" and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel["targets"]:
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= variables, target["expr"]


@pytest.mark.parametrize("name", ["sft_operator_job_loss", "sft_operator_no_such_metric"])
def test_a_missing_metric_would_be_caught(name: str) -> None:
    known = metric_names(OperatorMetrics().registry)
    assert (promql_metric_names(f'max({name}{{sftjob="a"}})') <= known) == (name == "sft_operator_job_loss")
