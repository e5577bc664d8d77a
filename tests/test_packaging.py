"""The Helm chart, manifests/install.yaml, the examples and the Grafana dashboards: rendered with the real helm
binary (`make tools` fetches it), validated against the real Kubernetes schemas, and checked against the code
(RBAC covers what the operator does; every dashboard query names a metric the code exports)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from crdcheck import admit, load_crd

from ecoserve.operator.children import desired_children, read_spec, worker_pod

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "ecoserve"
HELM = ROOT / ".tools" / "helm" / "helm"
K8S_VERSION = "1.33"
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"


def helm(*args: str) -> subprocess.CompletedProcess:
    assert HELM.exists(), "helm is missing: run `make tools` (make test does)"
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def render(*flags: str) -> list[dict]:
    out = helm("template", "ecoserve", str(CHART), "--namespace", "ecoserve-system", "--include-crds",
               "--kube-version", f"{K8S_VERSION}.0", *flags)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_helm_lint_strict():
    out = helm("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--set", "operator.watchNamespaces={team-a,team-b}", "--set", "metrics.serviceMonitor.enabled=true"],
        ["--set", "grafana.dashboards.enabled=false", "--set", "operator.logLevel=debug"],
    ],
)
def test_chart_renders_valid_objects(flags):
    docs = render(*flags)
    for doc in docs:
        if doc["apiVersion"] == PROMETHEUS_OPERATOR:  # not a built-in kind: check the shape we rely on
            assert doc["kind"] in ("ServiceMonitor", "PodMonitor") and doc["spec"]["selector"]
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("CustomResourceDefinition") == 1 and kinds.count("Deployment") == 1
    (crd,) = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert crd == load_crd()  # the chart ships crds/ itself


def test_watch_namespaces_give_roles_there_and_flags_to_the_operator():
    docs = render("--set", "operator.watchNamespaces={team-a,team-b}")
    roles = {(d["kind"], d["metadata"]["namespace"]) for d in docs if d["kind"] in ("Role", "RoleBinding")}
    assert roles == {(k, ns) for k in ("Role", "RoleBinding") for ns in ("team-a", "team-b")}
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert all("pods" not in rule["resources"] for rule in cluster_role["rules"])


def test_values_schema_rejects_bad_values():
    out = helm("template", "x", str(CHART), "--set", "operator.logLevel=loud")
    assert out.returncode != 0 and "logLevel" in out.stderr
    out = helm("template", "x", str(CHART), "--set", "imagez.control.tag=1")
    assert out.returncode != 0 and "imagez" in out.stderr


def operator_rules(docs: list[dict]) -> set[tuple[str, str, str]]:
    granted = set()
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        granted |= {(group, resource, verb) for verb in rule["verbs"]}
    return granted


def test_operator_rbac_covers_what_it_does_and_no_more():
    granted = operator_rules(render())
    assert not any("*" in entry for entry in granted)
    cr = {
        "apiVersion": "ecoserve.io/v1alpha1",
        "kind": "MacroInstance",
        "metadata": {"name": "m", "namespace": "n", "uid": "u"},
        "spec": {"model": "llama-2-7b", "group": "g", "ingress": {"enabled": True}},
    }
    # create and delete: the autoscaler's split makes a sibling MacroInstance, its merge deletes the emptied one
    needed = {("ecoserve.io", "macroinstances", v) for v in ("get", "list", "watch", "patch", "create", "delete")}
    needed |= {("ecoserve.io", "macroinstances/status", "patch"), ("", "events", "create")}
    needed |= {("", "pods", v) for v in ("get", "list", "watch", "create", "patch", "delete")}
    for manifest in desired_children(cr, [cr]):  # apply(): get, then create or patch
        group = manifest["apiVersion"].rpartition("/")[0]
        resource = manifest["kind"].lower() + ("es" if manifest["kind"].endswith("s") else "s")
        needed |= {(group, resource, v) for v in ("get", "create", "patch")}
    assert needed <= granted, needed - granted
    # Routers and gateways only read pods.
    (discovery_role,) = [m for m in desired_children(cr, [cr]) if m["kind"] == "Role"]
    assert discovery_role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def test_install_yaml_is_the_rendered_chart():
    committed = (ROOT / "manifests" / "install.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(committed) if d]
    assert docs[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ecoserve-system"}}
    rendered = helm("template", "ecoserve", str(CHART), "--namespace", "ecoserve-system", "--include-crds")
    assert docs[1:] == [d for d in yaml.safe_load_all(rendered.stdout) if d], "run `make manifests`"
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("example", sorted((ROOT / "manifests" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_admitted_and_build_valid_children(example):
    cr = yaml.safe_load(example.read_text())
    admitted, errors = admit(cr)
    assert errors == []
    admitted["metadata"]["uid"] = "u"
    spec = read_spec(admitted)
    spec.cost_model_preset()
    for manifest in [worker_pod(admitted, spec, 0, "a"), *desired_children(admitted, [admitted])]:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def exported_metrics() -> set[str]:
    """Every sample name the router, gateway, worker and operator can export."""
    from prometheus_client import REGISTRY

    import ecoserve.operator.metrics  # noqa: F401  (registers the operator's metrics in the default registry)
    from ecoserve.router.metrics import RouterMetrics
    from ecoserve.worker.metrics import WorkerMetrics

    names = set()
    for registry in (RouterMetrics().registry, WorkerMetrics("m", 16, 100).registry, REGISTRY):
        for family in registry.collect():
            names |= {family.name, *(s.name for s in family.samples)}
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    gateway_source = (ROOT / "router" / "gateway.py").read_text()
    names |= {n + "_total" for n in re.findall(r'Counter\(\s*"([a-z_]+)"', gateway_source)}
    return names


@pytest.mark.parametrize("dashboard", sorted((CHART / "dashboards").glob("*.json")), ids=lambda p: p.name)
def test_dashboard_queries_name_exported_metrics(dashboard):
    board = json.loads(dashboard.read_text())
    exported = exported_metrics()
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    assert exprs and len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for expr in exprs:
        for name in re.findall(r"\b((?:ecoserve_|vllm:)[a-z_:]+)", expr):
            assert name in exported, f"{dashboard.name}: {name} is not exported"


def test_dashboards_cover_the_asked_panels():
    titles = " ".join(
        p["title"].lower() for f in (CHART / "dashboards").glob("*.json") for p in json.loads(f.read_text())["panels"]
    )
    for topic in ("slo attainment", "ttft", "tpot", "goodput", "queue depth", "phase", "kv", "reconcile"):
        assert topic in titles, topic
