"""The MacroInstance CRD: valid for the real Kubernetes schemas, well-formed, and refusing bad specs."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
from crdcheck import admit, load_crd, schema_of

GOOD = {
    "apiVersion": "ecoserve.io/v1alpha1",
    "kind": "MacroInstance",
    "metadata": {"name": "llama", "namespace": "default"},
    "spec": {"model": "llama-2-7b", "group": "llama", "instances": 2, "engine": {"kind": "sim"}},
}


def with_spec(**changes) -> dict:
    cr = copy.deepcopy(GOOD)
    cr["spec"] |= changes
    return cr


def test_crd_is_valid_for_the_kubernetes_schemas():
    kubernetes_validate.validate(load_crd(), "1.33", strict=True)


def test_crd_is_well_formed():
    crd = load_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert [v["name"] for v in spec["versions"] if v["storage"]] == ["v1alpha1"]
    version = spec["versions"][0]
    scale = version["subresources"]["scale"]
    assert (scale["specReplicasPath"], scale["statusReplicasPath"]) == (".spec.instances", ".status.instances")
    assert scale["labelSelectorPath"] == ".status.selector"
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Group", "Model", "Wanted", "Instances", "Ready", "Phase", "Scaling", "Age"]
    assert "mi" in spec["names"]["shortNames"]


def defaults_match_types(schema: dict) -> list[str]:
    bad = []
    kinds = {"integer": int, "number": (int, float), "string": str, "boolean": bool, "object": dict, "array": list}
    if "default" in schema and not isinstance(schema["default"], kinds[schema["type"]]):
        bad.append(str(schema))
    for sub in schema.get("properties", {}).values():
        bad += defaults_match_types(sub)
    return bad


def test_every_default_has_its_fields_type():
    assert defaults_match_types(schema_of(load_crd())) == []


def test_a_minimal_spec_is_accepted_and_defaulted():
    obj, errors = admit({**GOOD, "spec": {"model": "m", "group": "g"}})
    assert errors == []
    spec = obj["spec"]
    assert (spec["instances"], spec["minInstances"], spec["maxInstances"]) == (1, 1, 8)
    assert spec["slo"] == {"ttftMs": 5000, "tpotMs": 100, "attainment": 0.9}
    assert spec["engine"]["kind"] == "sim" and spec["autoscaling"]["enabled"] is False


@pytest.mark.parametrize(
    ("cr", "expected"),
    [
        (with_spec(instances=-1), "instances"),
        (with_spec(minInstances=5, maxInstances=3, instances=4), "minInstances must not exceed maxInstances"),
        (with_spec(instances=9), "instances must lie within"),
        (with_spec(engine={"kind": "tensorrt"}), "engine.kind"),
        (with_spec(slo={"ttftMs": 0}), "slo.ttftMs"),
        (with_spec(slo={"attainment": 0}), "attainment must be above 0"),
        (with_spec(group="Not_A_Label"), "group"),
        (with_spec(replicaz=3), "Additional properties"),
        (with_spec(autoscaling={"enabled": True}, minInstances=6, maxInstances=10, instances=6), "split"),
        ({**GOOD, "spec": {"group": "g"}}, "model"),
    ],
)
def test_bad_specs_are_refused_with_a_reason(cr, expected):
    _, errors = admit(cr)
    assert errors and any(expected in e for e in errors), errors


def test_good_autoscaling_spec_passes_the_cel_rules():
    cr = with_spec(autoscaling={"enabled": True}, minInstances=6, maxInstances=11, instances=8)
    assert admit(cr)[1] == []
