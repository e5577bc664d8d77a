"""The operator's pure parts: the spec model against the CRD, the children it builds (validated against the real
Kubernetes schemas), the worker-pod plan, the status, and label-selector discovery."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import kubernetes_validate
import pytest
from crdcheck import admit, load_crd, schema_of

from ecoserve.brain.hardware import GPUS, MODELS
from ecoserve.operator.children import (
    OperatorSettings,
    desired_children,
    read_spec,
    worker_pod,
)
from ecoserve.operator.labels import DRAINING, GROUP, INSTANCE_INDEX, MACRO_INSTANCE, ROLE
from ecoserve.operator.plan import DRAIN_DEADLINE, plan_pods
from ecoserve.operator.scaling import changed_by_hand, last_change, move_patch, movers
from ecoserve.operator.spec import MacroInstanceSpec
from ecoserve.operator.status import macro_status
from ecoserve.router.discovery import matches, pod_urls

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def cr(name: str = "llama", group: str = "llama", uid: str = "uid-1", **spec) -> dict:
    return {
        "apiVersion": "ecoserve.io/v1alpha1",
        "kind": "MacroInstance",
        "metadata": {"name": name, "namespace": "serving", "uid": uid, "generation": 3},
        "spec": {"model": "llama-2-7b", "group": group, "instances": 2} | spec,
    }


def by_kind(manifests: list[dict]) -> dict[tuple[str, str], dict]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


# --- the spec model and the CRD agree ------------------------------------------------------------------------------


def test_spec_defaults_equal_the_crds():
    minimal = {"model": "llama-2-7b", "group": "g"}
    admitted, errors = admit({**cr(), "spec": minimal})
    assert errors == []
    assert MacroInstanceSpec.model_validate(minimal) == MacroInstanceSpec.model_validate(admitted["spec"])
    assert set(admitted["spec"]) <= set(MacroInstanceSpec.model_json_schema(by_alias=True)["properties"])


def test_crd_enums_are_the_presets():
    engine = schema_of(load_crd())["properties"]["spec"]["properties"]["engine"]["properties"]
    assert sorted(engine["gpu"]["enum"]) == sorted(GPUS)
    assert sorted(engine["costModel"]["enum"]) == sorted(MODELS)


@pytest.mark.parametrize(
    ("model", "cost_model", "expected"),
    [
        ("llama-2-70b", None, "llama-2-70b"),
        ("meta-llama/Llama-2-70b-chat-hf", None, "llama-2-70b"),
        ("my-org/finetune", "llama-3-8b", "llama-3-8b"),
    ],
)
def test_cost_model_preset(model, cost_model, expected):
    spec = MacroInstanceSpec(model=model, group="g", engine={"kind": "vllm", "cost_model": cost_model})
    assert spec.cost_model_preset() == expected


def test_unknown_model_needs_a_cost_model():
    with pytest.raises(ValueError, match=r"spec\.engine\.costModel"):
        MacroInstanceSpec(model="my-org/finetune", group="g").cost_model_preset()


# --- children -------------------------------------------------------------------------------------------------------


def all_manifests(resource: dict, others: list[dict] = ()) -> list[dict]:
    spec = read_spec(resource)
    pods = [worker_pod(resource, spec, i, f"s{i}") for i in range(spec.instances)]
    return pods + desired_children(resource, [resource, *others])


@pytest.mark.parametrize(
    "resource",
    [
        cr(),
        cr(
            model="meta-llama/Llama-2-70b-hf",
            engine={"kind": "vllm", "tensorParallelSize": 8, "gpu": "h100", "args": ["--max-num-seqs", "128"]},
            ingress={"enabled": True, "host": "llm.example.com", "className": "nginx"},
            podTemplate={
                "nodeSelector": {"gpu": "h100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
            },
        ),
    ],
)
def test_every_child_is_valid_for_the_kubernetes_schemas(resource):
    manifests = all_manifests(resource)
    for manifest in manifests:
        kubernetes_validate.validate(manifest, "1.33", strict=True)
    kinds = {m["kind"] for m in manifests} - {"Ingress"}
    assert kinds == {"Deployment", "Pod", "Role", "RoleBinding", "Service", "ServiceAccount"}
    assert ("Ingress" in {m["kind"] for m in manifests}) == read_spec(resource).ingress.enabled


def test_worker_pods_carry_labels_owner_gpus_probes_and_overrides():
    resource = cr(
        model="meta-llama/Llama-2-70b-hf",
        engine={
            "kind": "vllm",
            "tensorParallelSize": 4,
            "pipelineParallelSize": 2,
            "resources": {"limits": {"memory": "900Gi"}},
        },
        podTemplate={"nodeSelector": {"pool": "gpu"}, "env": [{"name": "A", "value": "1"}]},
        servedModelName="llama70",
    )
    pod = worker_pod(resource, read_spec(resource), 1, "abcde", OperatorSettings(worker_image="reg/w:1"))
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "llama-worker-1-abcde"
    assert meta["labels"][GROUP] == "llama" and meta["labels"][MACRO_INSTANCE] == "llama"
    assert meta["labels"][ROLE] == "worker" and meta["labels"][INSTANCE_INDEX] == "1"
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "MacroInstance",
        "llama",
        "uid-1",
        True,
    )
    (container,) = spec["containers"]
    assert container["image"] == "reg/w:1"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8", "memory": "900Gi"}
    assert container["args"][:3] == ["--engine", "vllm", "meta-llama/Llama-2-70b-hf"]
    assert container["args"][container["args"].index("--served-model-name") + 1] == "llama70"
    assert {
        p["httpGet"]["path"] for p in (container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe"))
    } == {"/health"}
    assert container["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 10001
    assert spec["nodeSelector"] == {"pool": "gpu"} and container["env"] == [{"name": "A", "value": "1"}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_sim_workers_run_on_the_control_image_without_gpus():
    resource = cr()
    pod = worker_pod(resource, read_spec(resource), 0, "x", OperatorSettings(control_image="reg/c:1"))
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "reg/c:1" and "nvidia.com/gpu" not in str(container["resources"])
    assert container["args"][:4] == ["--engine", "sim", "--model-preset", "llama-2-7b"]


def test_router_watches_its_serving_workers_and_prices_the_slo():
    children = by_kind(desired_children(cr(slo={"ttftMs": 2500, "tpotMs": 50}), [cr()]))
    args = children["Deployment", "llama-router"]["spec"]["template"]["spec"]["containers"][0]["args"]
    selector = args[args.index("--discover-selector") + 1]
    assert selector == f"{MACRO_INSTANCE}=llama,{ROLE}=worker,{DRAINING}!=true"
    assert args[args.index("--discover-namespace") + 1] == "serving"
    assert args[args.index("--ttft") + 1] == "2.5" and args[args.index("--tpot") + 1] == "0.05"
    service = children["Service", "llama-router"]
    assert service["spec"]["selector"] == {GROUP: "llama", MACRO_INSTANCE: "llama", ROLE: "router"}


def test_owners_never_go_empty_when_the_list_saw_the_reconciled_resource_being_deleted():
    """A pass that read `cr` live, then listed the namespace after its deletion began, must still name `cr` as an
    owner: an empty owner list would orphan the gateway and the RBAC forever (CI saw this race)."""
    one = cr("llama", uid="u1")
    deleting = one | {"metadata": one["metadata"] | {"deletionTimestamp": "2026-11-21T00:00:00Z"}}
    gone = cr("llama-2", uid="u2")
    gone["metadata"]["deletionTimestamp"] = "2026-11-21T00:00:00Z"
    children = by_kind(desired_children(one, [deleting, gone]))
    for kind, name in [("Deployment", "llama-gateway"), ("Service", "llama-gateway"), ("Role", "ecoserve-discovery")]:
        assert [o["uid"] for o in children[kind, name]["metadata"]["ownerReferences"]] == ["u1"]


def test_gateway_is_owned_by_every_macro_instance_of_the_group_only():
    one, two = cr("llama", uid="u1"), cr("llama-2", uid="u2")
    other = cr("mistral", group="mistral", uid="u3")
    children = by_kind(desired_children(one, [one, two, other]))
    gateway = children["Deployment", "llama-gateway"]
    assert [o["uid"] for o in gateway["metadata"]["ownerReferences"]] == ["u1", "u2"]
    assert not any(o["controller"] for o in gateway["metadata"]["ownerReferences"])
    assert [o["uid"] for o in children["Role", "ecoserve-discovery"]["metadata"]["ownerReferences"]] == [
        "u1",
        "u2",
        "u3",
    ]
    assert ("Ingress", "llama-gateway") not in children
    with_ingress = by_kind(desired_children(one, [one, cr("llama-2", uid="u2", ingress={"enabled": True})]))
    assert (
        with_ingress["Ingress", "llama-gateway"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        == "llama-gateway"
    )


def test_builders_are_deterministic():
    assert all_manifests(cr()) == all_manifests(cr())


# --- the pod plan ---------------------------------------------------------------------------------------------------


def pod(index: int, name: str | None = None, *, ready=True, phase="Running", draining=False, deadline=None, t=0):
    labels = {INSTANCE_INDEX: str(index)} | ({DRAINING: "true"} if draining else {})
    annotations = {DRAIN_DEADLINE: deadline.isoformat()} if deadline else {}
    return {
        "metadata": {
            "name": name or f"w{index}",
            "labels": labels,
            "annotations": annotations,
            "creationTimestamp": f"2026-11-21T00:00:{t:02d}Z",
        },
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_plan_creates_missing_indices():
    plan = plan_pods(3, [pod(1)], NOW)
    assert plan.create == [0, 2] and not (plan.drain or plan.delete or plan.undrain)


def test_plan_replaces_a_failed_pod():
    plan = plan_pods(2, [pod(0), pod(1, phase="Failed")], NOW)
    assert plan.delete == [("w1", "failed")] and plan.create == [1]


def test_plan_drains_the_highest_indices_then_deletes_when_idle_or_late():
    plan = plan_pods(1, [pod(0), pod(1), pod(2)], NOW)
    assert plan.drain == ["w1", "w2"] and plan.create == [] and plan.delete == []
    later = NOW + timedelta(seconds=60)
    draining = [pod(0), pod(1, draining=True, deadline=later), pod(2, draining=True, deadline=later)]
    plan = plan_pods(1, draining, NOW, idle=frozenset({"w2"}))
    assert plan.delete == [("w2", "drained")]
    assert plan_pods(1, draining, later).delete == [("w1", "drain timeout"), ("w2", "drain timeout")]


def test_plan_takes_back_a_draining_pod_when_scaled_up_again():
    plan = plan_pods(2, [pod(0), pod(1, draining=True, deadline=NOW + timedelta(seconds=60))], NOW)
    assert plan.undrain == ["w1"] and plan.create == []


def test_plan_removes_a_duplicate_index_keeping_the_oldest():
    plan = plan_pods(1, [pod(0, "new", t=5), pod(0, "old", t=1)], NOW)
    assert plan.delete == [("new", "duplicate index")] and plan.create == []


def test_plan_of_a_converged_macro_instance_is_empty():
    assert plan_pods(2, [pod(0), pod(1)], NOW).empty


# --- status ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pods", "phase", "ready"),
    [
        ([], "Pending", "False"),
        ([pod(0, ready=False), pod(1, ready=False)], "Pending", "False"),
        ([pod(0), pod(1, ready=False)], "Degraded", "False"),
        ([pod(0)], "Scaling", "False"),
        ([pod(0), pod(1), pod(2, draining=True)], "Scaling", "True"),
        ([pod(0), pod(1)], "Running", "True"),
        ([pod(0), pod(1, phase="Failed")], "Degraded", "False"),
    ],
)
def test_status_phase_and_conditions(pods, phase, ready):
    resource = cr()
    status = macro_status(resource, pods, plan_pods(2, pods, NOW), NOW)
    assert status["phase"] == phase
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == ready
    assert status["observedGeneration"] == 3 and status["selector"].endswith(f"{DRAINING}!=true")
    assert status["routerEndpoint"] == "http://llama-router.serving.svc:8000"
    _, errors = admit({**resource, "status": status})  # the status fits the CRD's status schema
    assert errors == []


def test_condition_times_survive_an_unchanged_status():
    resource = cr()
    first = macro_status(resource, [pod(0), pod(1)], plan_pods(2, [pod(0), pod(1)], NOW), NOW)
    again = macro_status({**resource, "status": first}, [pod(0), pod(1)], plan_pods(2, [], NOW), NOW + timedelta(1))
    assert first["conditions"][0]["lastTransitionTime"] == again["conditions"][0]["lastTransitionTime"]


# --- discovery ------------------------------------------------------------------------------------------------------


def test_label_selector_terms():
    labels = {"a": "1", "b": "2"}
    assert matches(labels, "a=1,b==2") and matches(labels, "a,!c") and matches(labels, "c!=x")
    assert not matches(labels, "a=2") and not matches(labels, "!a") and not matches(labels, "b!=2")


def test_pod_urls_are_ready_selected_pods_with_an_ip():
    ready = copy.deepcopy(pod(0)) | {"status": pod(0)["status"] | {"podIP": "10.0.0.1"}}
    unready = pod(1, ready=False) | {"status": pod(1, ready=False)["status"] | {"podIP": "10.0.0.2"}}
    draining = pod(2, draining=True)
    draining["status"]["podIP"] = "10.0.0.3"
    no_ip = pod(3)
    assert pod_urls([ready, unready, draining, no_ip], f"{DRAINING}!=true", 8000) == ["http://10.0.0.1:8000"]


def test_operator_settings_from_env(monkeypatch):
    monkeypatch.setenv("ECOSERVE_WORKER_IMAGE", "reg/w:2")
    settings = OperatorSettings.from_env()
    assert settings.worker_image == "reg/w:2" and settings.control_image == OperatorSettings().control_image


# --- mitosis: the pure parts of a split or merge -------------------------------------------------------------------


def test_movers_are_the_highest_serving_indices_and_keep_running_under_a_new_owner():
    def pod(index: int, draining: bool = False) -> dict:
        labels = {INSTANCE_INDEX: str(index)} | ({DRAINING: "true"} if draining else {})
        return {"metadata": {"name": f"p{index}", "labels": labels}}

    pods = [pod(2), pod(0), pod(4, draining=True), pod(1), pod(3)]
    assert [p["metadata"]["name"] for p in movers(pods, 2)] == ["p2", "p3"]  # the draining p4 stays to finish
    assert movers(pods, 0) == []
    patch = move_patch(cr("llama-2", uid="u2"), 1)
    assert patch["metadata"]["labels"] == {MACRO_INSTANCE: "llama-2", INSTANCE_INDEX: "1"}
    assert [(o["uid"], o["controller"]) for o in patch["metadata"]["ownerReferences"]] == [("u2", True)]


def test_a_spec_written_by_someone_else_is_told_from_the_autoscalers_own():
    fresh = cr()
    fresh["metadata"]["generation"] = 1
    assert not changed_by_hand(fresh)  # as created
    edited = cr()  # generation 3, never touched by the autoscaler
    assert changed_by_hand(edited)
    edited["status"] = {"lastScaling": {"generation": 3, "time": "2026-11-21T10:00:00+00:00"}}
    assert not changed_by_hand(edited)
    other = cr("llama-2")
    other["status"] = {"lastScaling": {"time": "not a time"}}
    assert last_change([edited, other, cr()]).isoformat() == "2026-11-21T10:00:00+00:00"
    assert last_change([cr()]) is None


def test_control_containers_args_parse_with_the_real_cli_and_outlive_their_streams():
    """The router and gateway the operator runs are started with flags `ecoserve` accepts; when one goes (a
    merged macro instance's router), its streams get SHUTDOWN_GRACE seconds and the pod a little more."""
    from ecoserve.cli.main import build_parser
    from ecoserve.operator.children import SHUTDOWN_GRACE

    parser = build_parser()
    children = by_kind(desired_children(cr(), [cr()]))
    for name in ("llama-router", "llama-gateway"):
        pod = children["Deployment", name]["spec"]["template"]["spec"]
        args = parser.parse_args(pod["containers"][0]["args"])
        assert args.shutdown_grace == SHUTDOWN_GRACE < pod["terminationGracePeriodSeconds"]
