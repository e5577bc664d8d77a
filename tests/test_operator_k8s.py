"""The real operator (`ecoserve.operator.handlers` under kopf's KopfRunner) against kmock's Kubernetes emulator
on 127.0.0.1 (tests/kube_emulator.py): children, scaling with drain, replacement of lost or failed workers,
status and events, restart without duplicates, deletion. Pods never become ready by themselves here (no
kubelet): tests set their status as a kubelet would."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from kube_emulator import MACROINSTANCES, EmulatedCluster, kube_fixture  # noqa: F401
from operator_harness import NS, TIMEOUT, macro, make_ready, operator_fixture, settle, status, workers  # noqa: F401

from ecoserve.operator.labels import DRAINING, GROUP, INSTANCE_INDEX, MACRO_INSTANCE, ROLE

pytestmark = pytest.mark.k8s


def test_create_makes_every_child_and_reports_status(kube, operator):
    with operator() as runner:
        kube.create(*MACROINSTANCES, macro(), NS)
        pods = kube.wait_for(lambda: len(workers(kube)) == 2 and workers(kube), TIMEOUT, runner=runner)
        uid = kube.get(*MACROINSTANCES, "demo", NS)["metadata"]["uid"]
        assert sorted(p["metadata"]["labels"][INSTANCE_INDEX] for p in pods) == ["0", "1"]
        for pod in pods:
            labels, (owner,) = pod["metadata"]["labels"], pod["metadata"]["ownerReferences"]
            assert (labels[GROUP], labels[MACRO_INSTANCE], owner["uid"], owner["kind"]) == (
                "demo",
                "demo",
                uid,
                "MacroInstance",
            )
            assert pod["spec"]["containers"][0]["args"][:2] == ["--engine", "sim"]
        for plural, name in [("deployments", "demo-router"), ("deployments", "demo-gateway")]:
            assert kube.wait_for(lambda p=plural, n=name: kube.get("apps/v1", p, n, NS), TIMEOUT, runner=runner)
        for name in ("demo-router", "demo-gateway"):
            assert kube.get("v1", "services", name, NS)["spec"]["selector"][ROLE] in ("router", "gateway")
        assert kube.get("v1", "serviceaccounts", "ecoserve-discovery", NS)
        settle(kube, runner, lambda: status(kube).get("phase") == "Pending" and status(kube)["instances"] == 2)
        make_ready(kube, pods)
        settle(kube, runner, lambda: status(kube).get("phase") == "Running")
    final = status(kube)
    assert final["readyInstances"] == 2 and final["observedGeneration"] == 1
    assert final["selector"] == f"{MACRO_INSTANCE}=demo,{ROLE}=worker,{DRAINING}!=true"
    conditions = {c["type"]: c["status"] for c in final["conditions"]}
    assert conditions == {"Ready": "True", "Progressing": "False", "Degraded": "False"}
    reasons = [e["reason"] for e in kube.events(NS, kind="MacroInstance", name="demo")]
    assert reasons.count("CreatedWorker") == 2 and "Scaling" in reasons and "Created" in reasons


def test_scale_up_and_down_drains_the_highest_indices(kube, operator):
    with operator() as runner:
        kube.create(*MACROINSTANCES, macro(), NS)
        make_ready(kube, kube.wait_for(lambda: len(workers(kube)) == 2 and workers(kube), TIMEOUT, runner=runner))
        kube.patch(*MACROINSTANCES, "demo", {"spec": {"instances": 4}}, NS)
        make_ready(kube, kube.wait_for(lambda: len(workers(kube)) == 4 and workers(kube), TIMEOUT, runner=runner))
        settle(kube, runner, lambda: status(kube).get("readyInstances") == 4)
        kept = {p["metadata"]["uid"] for p in workers(kube) if p["metadata"]["labels"][INSTANCE_INDEX] == "0"}
        kube.patch(*MACROINSTANCES, "demo", {"spec": {"instances": 1}}, NS)
        # Pods without an IP never served a request: drained at once, then deleted.
        remaining = kube.wait_for(lambda: len(workers(kube)) == 1 and workers(kube), TIMEOUT, runner=runner)
        assert {p["metadata"]["uid"] for p in remaining} == kept
        settle(kube, runner, lambda: status(kube).get("instances") == 1 and status(kube)["phase"] == "Running")
    reasons = [e["reason"] for e in kube.events(NS, kind="MacroInstance", name="demo")]
    assert reasons.count("DrainingWorker") == 3 and reasons.count("DeletedWorker") == 3


def test_a_draining_worker_with_requests_is_kept_until_the_deadline(kube, operator, monkeypatch):
    import ecoserve.operator.reconcile as reconcile

    busy = {"value": True}
    monkeypatch.setattr(reconcile, "worker_idle", lambda pod, timeout=2.0: not busy["value"])
    with operator() as runner:
        kube.create(*MACROINSTANCES, macro(drainTimeoutSeconds=600), NS)
        make_ready(kube, kube.wait_for(lambda: len(workers(kube)) == 2 and workers(kube), TIMEOUT, runner=runner))
        kube.patch(*MACROINSTANCES, "demo", {"spec": {"instances": 1}}, NS)
        draining = kube.wait_for(lambda: [p for p in workers(kube) if p["metadata"]["labels"].get(DRAINING)], TIMEOUT)
        settle(kube, runner, lambda: status(kube).get("phase") == "Scaling")
        time.sleep(2.5)  # two resyncs: still busy, so still there
        assert [p["metadata"]["name"] for p in workers(kube)] != [] and len(workers(kube)) == 2
        assert len(workers(kube, serving=True)) == 1  # the router's selector no longer picks it
        busy["value"] = False
        kube.wait_for(lambda: len(workers(kube)) == 1, TIMEOUT, runner=runner)
        assert draining[0]["metadata"]["name"] not in [p["metadata"]["name"] for p in workers(kube)]


def test_a_deleted_or_failed_worker_is_replaced(kube, operator):
    with operator() as runner:
        kube.create(*MACROINSTANCES, macro(), NS)
        pods = kube.wait_for(lambda: len(workers(kube)) == 2 and workers(kube), TIMEOUT, runner=runner)
        make_ready(kube, pods)
        lost, failing = pods
        kube.delete("v1", "pods", lost["metadata"]["name"], NS)
        kube.patch_status("v1", "pods", failing["metadata"]["name"], {"phase": "Failed"}, NS)
        old = {lost["metadata"]["uid"], failing["metadata"]["uid"]}
        fresh = kube.wait_for(
            lambda: (
                len(workers(kube)) == 2 and not old & {p["metadata"]["uid"] for p in workers(kube)} and workers(kube)
            ),
            TIMEOUT,
            runner=runner,
        )
        assert sorted(p["metadata"]["labels"][INSTANCE_INDEX] for p in fresh) == ["0", "1"]
    warnings = [e for e in kube.events(NS, kind="MacroInstance", name="demo") if e["type"] == "Warning"]
    assert any("failed" in e["message"] for e in warnings)


def test_restarting_the_operator_changes_nothing(kube, operator):
    with operator() as runner:
        kube.create(*MACROINSTANCES, macro(instances=3), NS)
        make_ready(kube, kube.wait_for(lambda: len(workers(kube)) == 3 and workers(kube), TIMEOUT, runner=runner))
        settle(kube, runner, lambda: status(kube).get("phase") == "Running")

    def snapshot() -> dict:
        objects = workers(kube) + kube.objects("apps/v1", "deployments", NS) + kube.objects("v1", "services", NS)
        return {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"] for o in objects}

    before, mi_version = snapshot(), kube.get(*MACROINSTANCES, "demo", NS)["metadata"]["resourceVersion"]
    with operator():
        time.sleep(3)  # resume, then two resyncs
    assert snapshot() == before
    assert kube.get(*MACROINSTANCES, "demo", NS)["metadata"]["resourceVersion"] == mi_version


def test_group_gateway_is_shared_and_deletion_cleans_up(kube, operator):
    with operator() as runner:
        kube.create(*MACROINSTANCES, macro("demo", instances=1), NS)
        kube.create(*MACROINSTANCES, macro("demo-2", instances=1), NS)

        def gateway_owners() -> list[str]:
            gateway = kube.get("apps/v1", "deployments", "demo-gateway", NS) or {"metadata": {}}
            return sorted(o["name"] for o in gateway["metadata"].get("ownerReferences", []))

        kube.wait_for(lambda: gateway_owners() == ["demo", "demo-2"], TIMEOUT, runner=runner)
        kube.wait_for(lambda: len(workers(kube)) == 2, TIMEOUT, runner=runner)
        kube.delete(*MACROINSTANCES, "demo-2", NS)
        kube.wait_for(lambda: kube.get(*MACROINSTANCES, "demo-2", NS) is None, TIMEOUT, runner=runner)
        kube.wait_for(lambda: workers(kube, "demo-2") == [], TIMEOUT, runner=runner)  # garbage-collected
        assert kube.get("apps/v1", "deployments", "demo-2-router", NS) is None
        kube.wait_for(lambda: gateway_owners() == ["demo"], TIMEOUT, runner=runner)
        kube.delete(*MACROINSTANCES, "demo", NS)
        kube.wait_for(lambda: kube.get("apps/v1", "deployments", "demo-gateway", NS) is None, TIMEOUT, runner=runner)
        kube.wait_for(lambda: workers(kube) == [], TIMEOUT, runner=runner)


def test_a_spec_the_operator_cannot_serve_is_reported(kube, operator):
    with operator() as runner:
        kube.create(*MACROINSTANCES, macro(model="my-org/finetune", engine={"kind": "vllm"}), NS)
        event = kube.wait_for(
            lambda: [e for e in kube.events(NS, kind="MacroInstance") if "costModel" in e["message"]],
            TIMEOUT,
            runner=runner,
        )
        assert (event[0]["type"], event[0]["reason"]) == ("Warning", "InvalidSpec")
        assert workers(kube) == []


def test_drain_idleness_is_read_from_the_workers_metrics():
    from ecoserve.operator.reconcile import worker_idle

    class Metrics(BaseHTTPRequestHandler):
        running = 1

        def do_GET(self):
            body = (
                'vllm:cache_config_info{block_size="16",num_gpu_blocks="100"} 1.0\n'
                f"vllm:num_requests_running {Metrics.running}\nvllm:num_requests_waiting 0\n"
            ).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pod = {"metadata": {"name": "w"}, "status": {"podIP": "127.0.0.1"}}
    try:
        assert worker_idle(pod, port=server.server_port) is False
        Metrics.running = 0
        assert worker_idle(pod, port=server.server_port) is True
        assert worker_idle({"metadata": {}, "status": {}}) is True  # never had an IP: never served
    finally:
        server.shutdown()


def test_router_discovery_follows_ready_pods_through_the_api(kube):
    """The routers' and gateways' UrlSource, against the emulator: list, watch, and list again on any change."""
    import asyncio

    from ecoserve.operator.labels import worker_selector
    from ecoserve.router.discovery import kube_pods

    def add_pod(name: str, ip: str) -> None:
        labels = {MACRO_INSTANCE: "demo", ROLE: "worker"}
        spec = {"containers": [{"name": "worker", "image": "x"}]}
        kube.create("v1", "pods", {"metadata": {"name": name, "labels": labels}, "spec": spec}, NS)
        ready = {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
        kube.patch_status("v1", "pods", name, ready, NS)

    async def follow() -> list[list[str]]:
        seen: list[list[str]] = []
        updates = kube_pods(NS, worker_selector("demo"), 8000, resync_seconds=5)()
        seen.append(await asyncio.wait_for(anext(updates), TIMEOUT))
        add_pod("b", "10.0.0.2")
        seen.append(await asyncio.wait_for(anext(updates), TIMEOUT))
        kube.patch("v1", "pods", "a", {"metadata": {"labels": {DRAINING: "true"}}}, NS)
        seen.append(await asyncio.wait_for(anext(updates), TIMEOUT))
        await updates.aclose()
        return seen

    add_pod("a", "10.0.0.1")
    assert asyncio.run(follow()) == [
        ["http://10.0.0.1:8000"],
        ["http://10.0.0.1:8000", "http://10.0.0.2:8000"],
        ["http://10.0.0.2:8000"],
    ]
