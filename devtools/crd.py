"""models -> the SFTJob CustomResourceDefinition.

The OpenAPI schema is derived from the pydantic models (pydantic's JSON schema, made structural:
refs inlined, optionals unwrapped, free-form maps marked x-kubernetes-preserve-unknown-fields).
Cross-field rules and immutability are CEL ``x-kubernetes-validations``; they mirror
models.cross_field_problems, which the operator applies itself on clusters without CEL.
Apiservers before CEL (the 1.20 test control plane included) accept the CRD and silently drop
x-kubernetes-validations, so one file serves every cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from sft_core import contract
from sft_models import algorithms
from sft_models.models import (
    COLLECTIVE_TIMEOUT_ENV,
    GPU_RESOURCE,
    IMMUTABLE_FIELDS,
    JOB_NAME_PATTERN,
    MAPPED_TRAINING_ARGS,
    MAX_JOB_NAME_LENGTH,
    POSITIVE_INTEGER_PATTERN,
    RESERVED_ENV,
    RESERVED_MOUNT_PATHS,
    RESERVED_VOLUMES,
    SFTJobSpec,
    SFTJobStatus,
)
from sft_models.training_args import TRAINING_ARGS_FIELDS, UNSERIALIZABLE_FIELDS

CRD_NAME = f"{contract.PLURAL}.{contract.GROUP}"
CRD_FILE = Path("crds") / f"{CRD_NAME}.yaml"
CHART_CRD_DIR = Path("charts") / "sft-operator" / "crds"
HEADER = "# Generated from core/sft_models/models.py by `make crd`; do not edit.\n"

# kubectl get sftjobs: where the job is, how far training is, the newest checkpoint.
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Nodes", "type": "string", "jsonPath": ".status.nodes", "description": "ready/total pods"},
    {"name": "Epoch", "type": "string", "jsonPath": ".status.progress.epochDisplay", "description": "epoch/numEpochs"},
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress.percentDisplay",
        "description": "samples seen / total",
    },
    {"name": "Loss", "type": "string", "jsonPath": ".status.progress.lastLoss", "description": "last step's loss"},
    {
        "name": "Latest checkpoint",
        "type": "string",
        "jsonPath": ".status.progress.latestCheckpoint",
        "description": "newest complete hf_format checkpoint",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

EXTRA_ARGS_ALLOWED = sorted(TRAINING_ARGS_FIELDS - set(MAPPED_TRAINING_ARGS) - UNSERIALIZABLE_FIELDS)


def _cel_list(values: Any) -> str:
    return "[" + ", ".join(json.dumps(v) for v in sorted(values)) + "]"


# (schema path below spec, rule, message). "" is spec itself. Messages name the field.
SPEC_RULES: list[tuple[str, str, str]] = (
    [
        (
            "",
            "!has(self.validationSplit) || self.validationSplit == 0.0 || has(self.validationFrequency)",
            "spec.validationFrequency: required when spec.validationSplit > 0",
        ),
        (
            "",
            "!has(self.isPretraining) || !self.isPretraining || has(self.blockSize)",
            "spec.blockSize: required when spec.isPretraining is true",
        ),
        (
            "",
            "self.effectiveBatchSize >= (has(self.nnodes) ? self.nnodes : 1) * "
            "(has(self.nprocPerNode) ? self.nprocPerNode : 1)",
            "spec.effectiveBatchSize: must be at least nnodes * nprocPerNode (one sample per GPU per step)",
        ),
        (
            "",
            "!has(self.maxTokensPerGpu) || self.maxTokensPerGpu >= self.maxSeqLen",
            "spec.maxTokensPerGpu: must be at least spec.maxSeqLen (one full sequence per GPU)",
        ),
        (
            "",
            "!has(self.nnodes) || self.nnodes <= 1 || !has(self.checkpoints.claim) || "
            "!has(self.checkpoints.claim.accessModes) || 'ReadWriteMany' in self.checkpoints.claim.accessModes",
            "spec.checkpoints.claim.accessModes: nnodes > 1 needs ReadWriteMany: every rank reads full_state/ "
            "when it resumes",
        ),
        (
            "extraArgs",
            f"self.all(k, k in {_cel_list(EXTRA_ARGS_ALLOWED)})",
            "spec.extraArgs: unknown instructlab-training argument, or one set from a spec field (see docs/api.md)",
        ),
        (
            "checkpoints",
            "has(self.existingClaim) != has(self.claim)",
            "spec.checkpoints: set exactly one of existingClaim or claim",
        ),
        (
            "checkpoints",
            "!has(self.path) || (!self.path.startsWith('/') && !self.path.matches('(^|/)[.][.](/|$)'))",
            "spec.checkpoints.path: must be a relative path inside the volume, without '..'",
        ),
        (
            "pod.env",
            f"self.all(e, !(e.name in {_cel_list(RESERVED_ENV)}))",
            "spec.pod.env: these variables are set by the operator: " + ", ".join(sorted(RESERVED_ENV)),
        ),
        (
            "pod.env",
            f"self.all(e, e.name != '{COLLECTIVE_TIMEOUT_ENV}' || !has(e.value) || e.value.matches('{POSITIVE_INTEGER_PATTERN}'))",
            f"spec.pod.env: {COLLECTIVE_TIMEOUT_ENV} must be a positive integer (milliseconds)",
        ),
        (
            "pod.volumes",
            f"self.all(v, !(v.name in {_cel_list(RESERVED_VOLUMES)}))",
            "spec.pod.volumes: these names are reserved: " + ", ".join(sorted(RESERVED_VOLUMES)),
        ),
        (
            "pod.volumeMounts",
            f"self.all(m, !(m.mountPath in {_cel_list(RESERVED_MOUNT_PATHS)}))",
            "spec.pod.volumeMounts: these paths are used by the operator: " + ", ".join(sorted(RESERVED_MOUNT_PATHS)),
        ),
    ]
    + algorithms.cel_rules()
    + [
        (
            "",
            f"!has(self.pod) || !has(self.pod.resources) || !has(self.pod.resources.{kind}) || "
            f"!('{GPU_RESOURCE}' in self.pod.resources.{kind}) || "
            f"string(self.pod.resources.{kind}['{GPU_RESOURCE}']) == "
            "((has(self.device) && self.device == 'cpu') ? '0' : string(has(self.nprocPerNode) ? self.nprocPerNode : 1))",
            f"spec.pod.resources.{kind}[{GPU_RESOURCE}]: must equal spec.nprocPerNode with device cuda (leave it out: "
            "the operator requests nprocPerNode GPUs), and be 0 or unset with device cpu (CPU mode uses no GPU)",
        )
        for kind in ("limits", "requests")
    ]
)

# A job's name also names its StatefulSet and headless Service. The apiserver allows a CRD to
# restrict metadata.name, and enforces it on every version (no CEL needed).
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {
            "type": "string",
            "maxLength": MAX_JOB_NAME_LENGTH,
            "pattern": JOB_NAME_PATTERN,
            "description": f"At most {MAX_JOB_NAME_LENGTH} characters (a pod's controller-revision-hash label is "
            "<statefulset>-<10 characters>, at most 63); a DNS-1035 label (it names the headless Service).",
        }
    },
}


def immutability_rules(schema: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Transition rules: each immutable field keeps its value; an optional one (no default, not
    required) is also neither added nor removed, which a rule on the field itself cannot see."""
    rules = []
    for path in IMMUTABLE_FIELDS:
        parent, _, leaf = path.rpartition(".")
        message = f"spec.{path}: immutable once the job is created"
        rules.append((path, "self == oldSelf", message))
        parent_schema = _at(schema, parent)
        optional = leaf not in parent_schema.get("required", []) and "default" not in _at(schema, path)
        if optional:
            rules.append((parent, f"has(self.{leaf}) == has(oldSelf.{leaf})", message))
    return rules


# --- pydantic JSON schema -> structural OpenAPI v3 --------------------------------------------


class _WithFactoryDefaults(GenerateJsonSchema):
    """Also state defaults made by default_factory, so the apiserver stores exactly what the
    models would: [] / {} for collections, {} for a nested model (its own defaults fill it)."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]  # takes no data: checked above
            return {} if isinstance(value, BaseModel) else value
        return super().get_default_value(schema)


_DROP_KEYS = {"title", "additionalProperties", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:  # X | None: optional, simply left out when unset
            return _structural({**options[0], **rest}, defs)
        raise ValueError(f"unsupported union in the schema: {node}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key in ("items",):
            out[key] = _structural(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "maxLength" and node.get("type") == "object":
            out["maxProperties"] = value
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    additional = node.get("additionalProperties")
    if node.get("x-kubernetes-int-or-string"):
        out.pop("pattern", None)
    if node.get("type") == "object":
        if isinstance(additional, dict) and additional:
            out["additionalProperties"] = _structural(additional, defs)
        elif additional is True or additional == {}:
            if "properties" in out:  # a typed core plus pass-through fields (EnvVar, Volume)
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:  # a free-form map of any JSON values (extraArgs, affinity)
                out["additionalProperties"] = {"x-kubernetes-preserve-unknown-fields": True}
                if "maxProperties" not in out and node.get("maxLength") is None:
                    out.pop("additionalProperties")
                    out["x-kubernetes-preserve-unknown-fields"] = True
    # Kubernetes' own order: type and description first, easier to read.
    first = {k: out.pop(k) for k in ("type", "description") if k in out}
    return {**first, **out}


def _at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in filter(None, path.split(".")):
        node = node["properties"][part]
    return node


def _add_rule(node: dict[str, Any], rule: str, message: str) -> None:
    node.setdefault("x-kubernetes-validations", []).append({"rule": rule, "message": message})


def spec_schema() -> dict[str, Any]:
    raw = SFTJobSpec.model_json_schema(by_alias=True, schema_generator=_WithFactoryDefaults)
    schema = _structural(raw, raw.get("$defs", {}))
    schema["description"] = (SFTJobSpec.__doc__ or "").strip()
    for path, rule, message in SPEC_RULES:
        _add_rule(_at(schema, path), rule, message)
    for path, rule, message in immutability_rules(schema):
        _add_rule(_at(schema, path), rule, message)
    return schema


def status_schema() -> dict[str, Any]:
    raw = SFTJobStatus.model_json_schema(by_alias=True, schema_generator=_WithFactoryDefaults)
    schema = _structural(raw, raw.get("$defs", {}))

    def strip_defaults(node: Any) -> None:  # status is written whole by the operator
        if isinstance(node, dict):
            node.pop("default", None)
            for value in node.values():
                strip_defaults(value)
        elif isinstance(node, list):
            for value in node:
                strip_defaults(value)

    strip_defaults(schema)
    schema["description"] = "Written only by the operator."
    return schema


def build_crd() -> dict[str, Any]:
    root: dict[str, Any] = {
        "type": "object",
        "description": "A supervised fine-tuning run with instructlab-training: one pod per node.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": METADATA_SCHEMA,
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": contract.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": contract.KIND,
                "listKind": f"{contract.KIND}List",
                "plural": contract.PLURAL,
                "singular": contract.SINGULAR,
                "shortNames": list(contract.SHORT_NAMES),
            },
            "versions": [
                {
                    "name": contract.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_yaml(crd: dict[str, Any] | None = None) -> str:
    return HEADER + yaml.safe_dump(crd or build_crd(), sort_keys=False, width=100)


def write(root: Path = Path(".")) -> list[Path]:
    """Write crds/, the chart's copy when the chart exists, and docs/api.md's field table."""
    text = render_yaml()
    written = []
    targets = [root / CRD_FILE]
    if (root / CHART_CRD_DIR).parent.is_dir():
        targets.append(root / CHART_CRD_DIR / CRD_FILE.name)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    doc = root / API_DOC
    if doc.exists():
        doc.write_text(update_api_doc(doc.read_text()))
        written.append(doc)
    return written


# --- the field reference in docs/api.md -------------------------------------------------------

API_DOC = Path("docs") / "api.md"
FIELDS_BEGIN = "<!-- fields:begin (generated by `make crd`) -->"
FIELDS_END = "<!-- fields:end -->"


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = node.get("type", "any")
    if kind == "array":
        return f"[]{_type_of(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    if "enum" in node:
        return " \\| ".join(str(v) for v in node["enum"])
    return str(kind)


def field_rows(node: dict[str, Any], prefix: str, required: set[str] | None = None) -> list[str]:
    rows = []
    immutable = set(IMMUTABLE_FIELDS)
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}.{name}"
        notes = []
        if name in (required or set()):
            notes.append("required")
        if "default" in child:
            notes.append(f"default `{json.dumps(child['default'])}`")
        for bound, inclusive, exclusive in (("minimum", "≥", ">"), ("maximum", "≤", "<")):
            if bound in child:
                strict = child.get(f"exclusive{bound.capitalize()}")
                notes.append(f"{exclusive if strict else inclusive} {child[bound]}")
        if path.removeprefix("spec.") in immutable:
            notes.append("immutable")
        description = " ".join((child.get("description") or "").split())
        rows.append(f"| `{path}` | {_type_of(child)} | {', '.join(notes)} | {description} |")
        if child.get("type") == "object" and "properties" in child and path.count(".") < 3:
            rows += field_rows(child, path, set(child.get("required", [])))
    return rows


def field_table() -> str:
    spec = spec_schema()
    lines = ["| Field | Type | Constraints | Description |", "|---|---|---|---|"]
    lines += field_rows(spec, "spec", set(spec.get("required", [])))
    return "\n".join(lines)


def update_api_doc(text: str) -> str:
    """docs/api.md with its generated field table replaced."""
    before, sep, rest = text.partition(FIELDS_BEGIN)
    if not sep:
        raise ValueError(f"{API_DOC} lacks the marker {FIELDS_BEGIN}")
    _, sep, after = rest.partition(FIELDS_END)
    if not sep:
        raise ValueError(f"{API_DOC} lacks the marker {FIELDS_END}")
    return f"{before}{FIELDS_BEGIN}\n{field_table()}\n{FIELDS_END}{after}"


def main(argv: list[str] | None = None) -> None:
    """`python -m devtools.crd [--write] [--root DIR]` (`make crd`): print the CRD, or write crds/,
    the chart's copy and docs/api.md."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devtools.crd", description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="write crds/, the chart's crds/ and docs/api.md")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository root for --write")
    args = parser.parse_args(argv)
    if args.write:
        for path in write(args.root):
            print(f"wrote {path}")
    else:
        print(render_yaml(), end="")


if __name__ == "__main__":
    main()
