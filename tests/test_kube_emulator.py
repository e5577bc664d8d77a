"""The kopf-on-kmock harness (tests/kube_emulator.py) proven on a tiny operator, and the API-server behaviour it
adds to kmock's emulator checked on its own."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx
import pytest
from kube_emulator import MACROINSTANCES, kube_fixture, labels_match, parse_label_selector  # noqa: F401

pytestmark = pytest.mark.k8s

# A tiny operator in the style ours will have: the official client for children, the status subresource for
# status, kopf's events. Idempotent: it looks for its pod by label selector before creating one (generateName,
# so a second create would not fail on a name clash but leave a duplicate).
DEMO_OPERATOR = """
import kopf
import kubernetes

LABEL = "ecoserve.io/macroinstance"


@kopf.on.resume("ecoserve.io", "v1alpha1", "macroinstances")
@kopf.on.create("ecoserve.io", "v1alpha1", "macroinstances")
def ensure_worker(body, name, namespace, uid, reason, **_):
    kubernetes.config.load_kube_config()
    core = kubernetes.client.CoreV1Api()
    selector = f"app=ecoserve-worker,{LABEL}={name}"
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    if not pods:
        owner = {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": name, "uid": uid,
                 "controller": True, "blockOwnerDeletion": True}
        pod = core.create_namespaced_pod(namespace, {
            "metadata": {"generateName": f"{name}-worker-", "labels": {"app": "ecoserve-worker", LABEL: name},
                         "ownerReferences": [owner]},
            "spec": {"containers": [{"name": "worker", "image": "ecoserve:test"}]},
        })
        pods = [pod]
    kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
        "ecoserve.io", "v1alpha1", namespace, "macroinstances", name,
        {"status": {"phase": "Pending", "instances": len(pods), "selector": selector}},
    )
    kopf.info(body, reason="Reconciled", message=f"{reason}: {[p.metadata.name for p in pods]}")


@kopf.on.delete("ecoserve.io", "v1alpha1", "macroinstances")
def goodbye(body, **_):
    kopf.info(body, reason="Deleting", message="the finalizer held the object until now")
"""

MACRO = {"metadata": {"name": "demo"}, "spec": {"model": "facebook/opt-125m", "group": "demo"}}
SELECTOR = "app=ecoserve-worker,ecoserve.io/macroinstance=demo"


def pod(name: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "c", "image": "x"}]}}


@pytest.fixture
def operator_file(tmp_path: Path) -> Path:
    path = tmp_path / "demo_operator.py"
    path.write_text(textwrap.dedent(DEMO_OPERATOR))
    return path


def reconciled(kube, count: int = 1) -> list[dict]:
    """The operator's Reconciled events about `demo`, once there are `count` of them and kopf has finished the
    handling cycle (its last-handled annotation is written after the handlers): nothing is left in flight."""
    events = [e for e in kube.events("default", kind="MacroInstance", name="demo") if e["reason"] == "Reconciled"]
    macro = kube.get(*MACROINSTANCES, "demo", "default") or {"metadata": {}}
    handled = "kopf.zalando.org/last-handled-configuration" in macro["metadata"].get("annotations", {})
    return events if len(events) >= count and handled else []


# --------------------------------------------------------------------------------------------------------------
# The real kopf operator against the emulator.


@pytest.mark.parametrize("scope", ["default", None], ids=["namespace", "all-namespaces"])
def test_operator_creates_worker_pod_patches_status_posts_event(kube, operator_file, scope):
    # A decoy with the same app label but another owner: only a working labelSelector keeps it out.
    kube.create("v1", "pods", pod("decoy", app="ecoserve-worker", **{"ecoserve.io/macroinstance": "other"}), "default")
    with kube.operator(operator_file, namespace=scope) as runner:
        kube.create(*MACROINSTANCES, MACRO, "default")
        kube.wait_for(lambda: reconciled(kube), runner=runner, message="the Reconciled event")
    assert runner.exit_code == 0
    assert runner.exception is None

    macro = kube.get(*MACROINSTANCES, "demo", "default")
    (worker,) = kube.objects("v1", "pods", "default", label_selector=SELECTOR)
    assert worker["metadata"]["name"].startswith("demo-worker-")
    assert worker["metadata"]["labels"] == {"app": "ecoserve-worker", "ecoserve.io/macroinstance": "demo"}
    (owner,) = worker["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("MacroInstance", "demo", macro["metadata"]["uid"])
    assert macro["status"] == {"phase": "Pending", "instances": 1, "selector": SELECTOR}
    (event,) = reconciled(kube)
    assert event["involvedObject"]["uid"] == macro["metadata"]["uid"]
    assert event["message"] == f"create: ['{worker['metadata']['name']}']"

    # The selector filters, whoever asks: the operator (through the official client) and the helpers.
    assert len(kube.objects("v1", "pods", "default", label_selector="app=ecoserve-worker")) == 2
    assert [
        p["metadata"]["name"] for p in kube.objects("v1", "pods", label_selector="ecoserve.io/macroinstance!=demo")
    ] == ["decoy"]
    requests = kube.requests()
    assert f"GET /api/v1/namespaces/default/pods?labelSelector={SELECTOR}" in requests
    assert "PATCH /apis/ecoserve.io/v1alpha1/namespaces/default/macroinstances/demo/status" in requests
    assert "Handler 'ensure_worker' succeeded." in runner.output


def test_restarted_operator_resumes_without_a_duplicate_pod(kube, operator_file):
    with kube.operator(operator_file) as first:
        kube.create(*MACROINSTANCES, MACRO, "default")
        kube.wait_for(lambda: reconciled(kube), runner=first)
    with kube.operator(operator_file) as second:
        kube.wait_for(lambda: reconciled(kube, 2), runner=second, message="the resumed reconciliation")
    assert (first.exit_code, second.exit_code) == (0, 0)
    assert first.exception is None and second.exception is None

    (worker,) = kube.objects("v1", "pods", "default", label_selector=SELECTOR)
    messages = [e["message"] for e in reconciled(kube, 2)]
    assert sorted(messages) == sorted(
        [f"create: ['{worker['metadata']['name']}']", f"resume: ['{worker['metadata']['name']}']"]
    )


def test_deletion_waits_for_kopf_finalizer_then_collects_the_pod(kube, operator_file):
    with kube.operator(operator_file) as runner:
        kube.create(*MACROINSTANCES, MACRO, "default")
        kube.wait_for(lambda: reconciled(kube), runner=runner)
        finalizers = kube.wait_for(lambda: kube.get(*MACROINSTANCES, "demo", "default")["metadata"].get("finalizers"))
        assert finalizers == ["kopf.zalando.org/KopfFinalizerMarker"]

        marked = kube.delete(*MACROINSTANCES, "demo", "default")
        assert marked["metadata"]["deletionTimestamp"]  # held by kopf's finalizer until its handler ran
        kube.wait_for(lambda: kube.get(*MACROINSTANCES, "demo", "default") is None, runner=runner)
        kube.wait_for(lambda: len(kube.events("default", name="demo")) == 2, runner=runner)  # posted in background
    assert runner.exit_code == 0
    assert runner.exception is None
    assert [e["reason"] for e in kube.events("default", name="demo")] == ["Reconciled", "Deleting"]
    assert kube.objects("v1", "pods", "default", label_selector=SELECTOR) == []  # garbage-collected


# --------------------------------------------------------------------------------------------------------------
# The emulator's API-server behaviour on its own.


def test_failed_json_patch_test_op_answers_422_and_changes_nothing(kube):
    obj = kube.create("v1", "configmaps", {"metadata": {"name": "cm"}, "data": {"a": "1"}}, "default")
    url = f"{kube.url}/api/v1/namespaces/default/configmaps/cm"
    json_patch = {"Content-Type": "application/json-patch+json"}

    def ops(rv: str) -> list[dict]:
        test = {"op": "test", "path": "/metadata/resourceVersion", "value": rv}
        return [test, {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}]

    stale = httpx.patch(url, content=json.dumps(ops("1")), headers=json_patch)
    assert stale.status_code == 422
    assert stale.json()["reason"] == "Invalid"
    assert kube.get("v1", "configmaps", "cm", "default") == obj

    fresh = httpx.patch(url, content=json.dumps(ops(obj["metadata"]["resourceVersion"])), headers=json_patch)
    assert fresh.status_code == 200
    assert fresh.json()["metadata"]["finalizers"] == ["x/y"]

    bad_path = httpx.patch(url, content=json.dumps([{"op": "remove", "path": "/nope"}]), headers=json_patch)
    assert bad_path.status_code == 422
    stale_merge = httpx.patch(
        url, json={"metadata": {"resourceVersion": "1"}}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert stale_merge.status_code == 409


def test_metadata_is_stamped_like_the_api_server_does(kube):
    created = kube.create(*MACROINSTANCES, {**MACRO, "status": {"phase": "Running"}}, "default")
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    assert "status" not in created  # dropped on create: MacroInstance has a status subresource
    assert created["spec"]["instances"] == 1  # the CRD's defaults applied

    labelled = kube.patch(*MACROINSTANCES, "demo", {"metadata": {"labels": {"x": "y"}}}, "default")
    rescaled = kube.patch(*MACROINSTANCES, "demo", {"spec": {"maxInstances": 4}}, "default")
    status = kube.patch_status(*MACROINSTANCES, "demo", {"phase": "Running"}, "default")
    same = kube.patch(*MACROINSTANCES, "demo", {"spec": {"maxInstances": 4}}, "default")
    versions = [int(o["metadata"]["resourceVersion"]) for o in (created, labelled, rescaled, status, same)]
    assert versions[:4] == sorted(set(versions[:4])) and versions[4] == versions[3]  # a no-op bumps nothing
    assert [o["metadata"]["generation"] for o in (labelled, rescaled, status)] == [1, 2, 2]
    assert {o["metadata"]["uid"] for o in (labelled, rescaled, status)} == {meta["uid"]}

    sneaky = kube.patch(*MACROINSTANCES, "demo", {"status": {"phase": "Degraded"}, "spec": {"model": "m2"}}, "default")
    assert (sneaky["status"]["phase"], sneaky["spec"]["model"]) == ("Running", "m2")  # main resource: no status
    via_status = kube.patch(
        *MACROINSTANCES,
        "demo",
        {"status": {"phase": "Scaling", "unknown": 1}, "spec": {"model": "m3"}},
        "default",
        subresource="status",
    )
    assert via_status["status"] == {"phase": "Scaling"} and via_status["spec"]["model"] == "m2"  # pruned, status only

    kube.delete(*MACROINSTANCES, "demo", "default")
    recreated = kube.create(*MACROINSTANCES, MACRO, "default")
    assert recreated["metadata"]["uid"] != meta["uid"]
    assert int(recreated["metadata"]["resourceVersion"]) > versions[-1]


def test_official_client_sees_selectors_lists_scale_and_validation(kube):
    import kubernetes

    kubernetes.config.load_kube_config()  # from KUBECONFIG, set by the fixture
    core = kubernetes.client.CoreV1Api()
    for name, labels in [("a", {"tier": "gpu", "role": "prefill"}), ("b", {"tier": "cpu"}), ("c", {})]:
        core.create_namespaced_pod("default", pod(name, **labels))

    def names(selector: str) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod("default", label_selector=selector).items]

    assert names("tier=gpu") == ["a"]
    assert names("tier!=gpu") == ["b", "c"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names("tier in (gpu, cpu),role notin (decode)") == ["a", "b"]
    listing = httpx.get(f"{kube.url}/api/v1/namespaces/default/pods").json()
    assert (listing["kind"], listing["apiVersion"], len(listing["items"])) == ("PodList", "v1", 3)
    with pytest.raises(kubernetes.client.ApiException) as bad_selector:
        core.list_namespaced_pod("default", label_selector="tier in gpu")
    assert bad_selector.value.status == 400

    custom = kubernetes.client.CustomObjectsApi()
    custom.create_namespaced_custom_object("ecoserve.io", "v1alpha1", "default", "macroinstances", MACRO)
    custom.patch_namespaced_custom_object_scale(
        "ecoserve.io", "v1alpha1", "default", "macroinstances", "demo", {"spec": {"replicas": 3}}
    )
    assert kube.get(*MACROINSTANCES, "demo", "default")["spec"]["instances"] == 3
    with pytest.raises(kubernetes.client.ApiException) as invalid:
        custom.patch_namespaced_custom_object(
            "ecoserve.io", "v1alpha1", "default", "macroinstances", "demo", {"spec": {"instances": 99}}
        )
    assert invalid.value.status == 422
    assert "instances must lie within" in json.loads(invalid.value.body)["message"]


def test_finalizers_hold_deletion_and_owners_take_dependents_along(kube):
    owner = kube.create("v1", "configmaps", {"metadata": {"name": "owner", "finalizers": ["x/hold"]}}, "default")
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    kube.create("v1", "pods", {**pod("child"), "metadata": {"name": "child", "ownerReferences": [ref]}}, "default")

    held = kube.delete("v1", "configmaps", "owner", "default")
    assert held["metadata"]["deletionTimestamp"] and kube.get("v1", "configmaps", "owner", "default")
    with pytest.raises(Exception, match="no new finalizers"):
        kube.patch("v1", "configmaps", "owner", {"metadata": {"finalizers": ["x/hold", "x/more"]}}, "default")
    assert kube.get("v1", "pods", "child", "default")

    kube.patch("v1", "configmaps", "owner", {"metadata": {"finalizers": None}}, "default")
    assert kube.get("v1", "configmaps", "owner", "default") is None
    assert kube.get("v1", "pods", "child", "default") is None
    with pytest.raises(Exception, match="not found"):
        kube.create("v1", "pods", pod("nowhere"), "no-such-namespace")


def test_an_object_re_owned_by_owners_already_gone_is_collected(kube):
    owner = kube.create("v1", "configmaps", {"metadata": {"name": "owner"}}, "default")
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    kube.create("v1", "configmaps", {"metadata": {"name": "child"}}, "default")
    kube.delete("v1", "configmaps", "owner", "default")
    kube.patch("v1", "configmaps", "child", {"metadata": {"labels": {"a": "b"}}}, "default")
    assert kube.get("v1", "configmaps", "child", "default")  # no owners at all: kept
    kube.patch("v1", "configmaps", "child", {"metadata": {"ownerReferences": [ref]}}, "default")
    assert kube.get("v1", "configmaps", "child", "default") is None


def test_watch_from_a_listed_resource_version_misses_nothing(kube):
    listing = httpx.get(f"{kube.url}/api/v1/namespaces/default/configmaps").json()
    kube.create("v1", "configmaps", {"metadata": {"name": "between-list-and-watch"}}, "default")
    params = {"watch": "true", "resourceVersion": listing["metadata"]["resourceVersion"], "timeoutSeconds": "10"}
    with httpx.stream("GET", f"{kube.url}/api/v1/namespaces/default/configmaps", params=params) as stream:
        kube.wait_for_watch("v1", "configmaps", "default")
        kube.create("v1", "configmaps", {"metadata": {"name": "during-watch"}}, "default")
        kube.create("v1", "configmaps", {"metadata": {"name": "elsewhere"}}, "kube-system")  # not watched
        kube.delete("v1", "configmaps", "between-list-and-watch", "default")
        lines = stream.iter_lines()
        events = [json.loads(next(lines)) for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "between-list-and-watch"),
        ("ADDED", "during-watch"),
        ("DELETED", "between-list-and-watch"),
    ]
    kube.wait_for(lambda: kube.watch_count("v1", "configmaps", "default") == 0)  # noticed the disconnection


def test_label_selector_parser():
    requirements = parse_label_selector("a=1,b!=2,c,!d,e in (x, y),f notin (z)")
    assert labels_match({"a": "1", "c": "", "e": "y", "f": "q"}, requirements)
    assert not labels_match({"a": "1", "b": "2", "c": "", "e": "y"}, requirements)
    assert not labels_match({"a": "1", "c": "", "d": "", "e": "x"}, requirements)
    assert labels_match({}, parse_label_selector(""))
    for bad in ("a in x", "!a=1", "a=(1)", "=1"):
        with pytest.raises(ValueError):
            parse_label_selector(bad)
