"""The generated CRD: in sync with the models, structural, and it accepts/rejects as it should."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from devtools.crd import CRD_FILE, build_crd, render_yaml
from sft_core import contract

ROOT = Path(__file__).resolve().parents[2]


def schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for name, child in node.get("properties", {}).items():
            yield from walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_crd_file_matches_the_models() -> None:
    committed = (ROOT / CRD_FILE).read_text()
    assert committed == render_yaml(), "crds/ is stale: run `make crd`"


def test_chart_copy_matches_when_the_chart_exists() -> None:
    chart_copy = ROOT / "charts" / "sft-operator" / "crds" / CRD_FILE.name
    if chart_copy.exists():
        assert chart_copy.read_text() == render_yaml(), "chart CRD is stale: run `make crd`"


def test_schema_is_structural() -> None:
    for path, node in walk(schema()):
        free_form = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert "type" in node or free_form, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        if node.get("type") == "object" and "properties" in node:
            assert set(node.get("required", [])) <= set(node["properties"]), path


def test_identity_printer_columns_and_status_subresource() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == f"{contract.PLURAL}.{contract.GROUP}"
    assert crd["spec"]["names"]["shortNames"] == ["sft"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Nodes",
        "Epoch",
        "Progress",
        "Loss",
        "Latest checkpoint",
        "Age",
    ]


def test_defaults_live_in_the_schema() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    assert spec["nnodes"]["default"] == 1
    assert spec["rdzvPort"]["default"] == contract.DEFAULT_RDZV_PORT
    assert spec["device"] == {**spec["device"], "enum": ["cuda", "cpu"], "default": "cuda"}
    assert spec["pod"]["default"] == {}
    assert spec["pod"]["properties"]["imagePullPolicy"]["default"] == "IfNotPresent"
    assert spec["checkpoints"]["properties"]["deleteWithJob"]["default"] is False
    assert spec["learningRate"]["minimum"] == 0 and spec["learningRate"]["exclusiveMinimum"] is True


def _validator() -> jsonschema.Draft4Validator:
    # OpenAPI v3's boolean exclusiveMinimum/Maximum is draft 4's; x-kubernetes-* keys are ignored.
    return jsonschema.Draft4Validator(schema())


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")))
def test_examples_pass_the_openapi_schema(example: Path) -> None:
    errors = list(_validator().iter_errors(yaml.safe_load(example.read_text())))
    assert errors == []


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"numEpochs": "two"}, ["spec", "numEpochs"]),
        ({"numEpochs": 0}, ["spec", "numEpochs"]),
        ({"device": "tpu"}, ["spec", "device"]),
        ({"beta1": 1}, ["spec", "beta1"]),
        ({"checkpoints": {"claim": {}}}, ["spec", "checkpoints", "claim"]),
        ({"pod": {"env": [{"value": "x"}]}}, ["spec", "pod", "env", 0]),
    ],
)
def test_schema_rejects_bad_types_at_the_field(patch: dict[str, Any], path: list[Any]) -> None:
    body = yaml.safe_load((ROOT / "examples" / "sftjob-minimal.yaml").read_text())
    body["spec"].update(patch)
    errors = list(_validator().iter_errors(body))
    assert errors and any(list(e.absolute_path) == path for e in errors), [
        (list(e.absolute_path), e.message) for e in errors
    ]


def test_api_doc_field_table_matches_the_models() -> None:
    from devtools.crd import API_DOC, update_api_doc

    text = (ROOT / API_DOC).read_text()
    assert text == update_api_doc(text), "docs/api.md's field table is stale: run `make crd`"


def test_the_generator_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    from devtools.crd import main

    main([])
    assert capsys.readouterr().out == render_yaml()


@pytest.mark.parametrize(
    ("name", "ok"), [("a" * 52, True), ("a" * 53, False), ("Job", False), ("9job", False), ("a.b", False)]
)
def test_job_name_is_limited_by_the_schema(name: str, ok: bool) -> None:
    """metadata.name restrictions are plain OpenAPI: enforced on every cluster, 1.20 included."""
    body = yaml.safe_load((ROOT / "examples" / "sftjob-minimal.yaml").read_text())
    body["metadata"]["name"] = name
    errors = [e for e in _validator().iter_errors(body) if list(e.absolute_path) == ["metadata", "name"]]
    assert (errors == []) == ok
