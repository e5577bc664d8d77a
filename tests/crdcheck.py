"""An approximation of what the API server does with a MacroInstance at apply time: structural defaults,
the OpenAPI schema (unknown fields pruned-as-errors, types, ranges, enums, patterns) and the CEL rules.

No library applies Kubernetes' structural-schema rules; jsonschema with this small adapter comes close, and
cel-python evaluates the core-CEL rules (the CRD keeps to core CEL so this is faithful). Kubernetes' own CEL
libraries, its type-check of rules against the schema and its cost budget are not reproduced.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

CRD_PATH = Path(__file__).resolve().parents[1] / "crds" / "macroinstances.ecoserve.io.yaml"


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    return version["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: a missing field with a default gets it, then defaults apply inside."""
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        if isinstance(schema.get("additionalProperties"), dict):
            for name in value:
                value[name] = apply_defaults(schema["additionalProperties"], value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Objects with declared properties reject unknown fields unless they preserve them, as the API server's
    strict field validation does."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema:
        out["properties"] = {k: to_json_schema(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(schema["additionalProperties"])
    if "items" in schema:
        out["items"] = to_json_schema(schema["items"])
    return out


def typed(schema: dict[str, Any], value: Any) -> Any:
    """Values as CEL sees them through the schema: a `number` field is a double even when written as 0."""
    if schema.get("type") == "number" and isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: typed(props.get(k, {}), v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(schema.get("items", {}), v) for v in value]
    return value


def cel_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    errors: list[str] = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        try:
            result = program.evaluate({"self": celpy.json_to_cel(typed(schema, value))})
        except celpy.CELEvalError as err:
            result = err
        if result is not True and not (
            hasattr(result, "__bool__") and bool(result) and not isinstance(result, Exception)
        ):
            errors.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += cel_errors(sub, value[name], f"{path}.{name}")
    return errors


def admit(cr: dict[str, Any], crd: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The defaulted object and every reason the API server would refuse it (empty: accepted)."""
    schema = schema_of(crd or load_crd())
    obj = apply_defaults(schema, copy.deepcopy(cr))
    validator = jsonschema.Draft7Validator(to_json_schema(schema))
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
    if not errors:
        errors = cel_errors(schema, obj)
    return obj, errors
