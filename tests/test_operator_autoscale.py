"""Mitosis scaling by the real operator on the Kubernetes emulator: grow, shrink, split (pods relabeled, not
recreated), merge, cooldown, autoscaling disabled, manual scaling respected. The routers' `/ecoserve/status` is
served by a stand-in whose figures each test sets (the operator reads it over real HTTP)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kube_emulator import MACROINSTANCES, kube_fixture  # noqa: F401
from operator_harness import NS, TIMEOUT, macro, operator_fixture, workers  # noqa: F401

from ecoserve.operator.labels import INSTANCE_INDEX, MACRO_INSTANCE

pytestmark = pytest.mark.k8s

# Figures as a router reports them (`planner` in /ecoserve/status), against the default SLO (TTFT 5 s, 90 %).
HOT = {"requests": 50, "ttft_mean": 9.0, "ttft_attainment": 0.4, "saved_tpot": 0.1, "rejected": 0}
STEADY = {"requests": 50, "ttft_mean": 2.0, "ttft_attainment": 0.95, "saved_tpot": 3.0, "rejected": 0}
IDLE = {"requests": 0, "ttft_mean": None, "ttft_attainment": None, "saved_tpot": None, "rejected": 0}
# Overloaded: 2 serving instances finished 20 requests (10 each) while 80 arrived (30 wait at the router); 80
# arrivals need ceil(80 / 8.5) = 10 instances.
SURGE = HOT | {"requests": 20, "arrived": 80, "serving": 2, "queued": 30}


class Routers:
    """Stand-in routers: `figures[name]` is what macro instance `name`'s router reports; `reads` counts reads."""

    def __init__(self) -> None:
        self.figures: dict[str, dict] = {}
        self.reads: Counter[str] = Counter()
        routers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                _, _namespace, name, *_ = self.path.split("/")
                routers.reads[name] += 1
                figures = routers.figures.get(name)
                body = json.dumps({"planner": figures}).encode() if figures is not None else b"{}"
                self.send_response(200 if figures is not None else 503)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{{namespace}}/{{name}}"


@pytest.fixture
def routers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Routers]:
    stand_in = Routers()
    monkeypatch.setenv("ECOSERVE_OPERATOR_ROUTER_URL", stand_in.url_template)
    monkeypatch.setenv("ECOSERVE_OPERATOR_AUTOSCALE_TICK_SECONDS", "0.3")
    yield stand_in
    stand_in.server.shutdown()


def autoscaled(name: str = "demo", instances: int = 2, **spec) -> dict:
    """Autoscaled, planning every second; the long cooldown lets a test see exactly one step (the first step
    needs none: no step came before it)."""
    autoscaling = {"enabled": True, "intervalSeconds": 1, "cooldownSeconds": 3600}
    body = {"instances": instances, "minInstances": 1, "maxInstances": 4, "autoscaling": autoscaling} | spec
    return macro(name, **body)


def wanted(kube, name: str = "demo") -> int | None:
    cr = kube.get(*MACROINSTANCES, name, NS)
    return None if cr is None else cr["spec"]["instances"]


def last_scaling(kube, name: str = "demo") -> dict:
    return ((kube.get(*MACROINSTANCES, name, NS) or {}).get("status") or {}).get("lastScaling") or {}


def uids(pods: list[dict]) -> dict[str, str]:
    """uid -> the macro instance the pod belongs to now."""
    return {p["metadata"]["uid"]: p["metadata"]["labels"][MACRO_INSTANCE] for p in pods}


def test_grow_when_ttft_misses_the_slo(kube, operator, routers):
    routers.figures["demo"] = HOT
    with operator() as runner:
        kube.create(*MACROINSTANCES, autoscaled(instances=2), NS)
        kube.wait_for(lambda: wanted(kube) == 3, TIMEOUT, runner=runner)
        routers.figures["demo"] = STEADY
        kube.wait_for(lambda: len(workers(kube)) == 3, TIMEOUT, runner=runner)
    record = last_scaling(kube)
    assert (record["action"], record["reason"], record["instances"]) == ("grow", "ttft", 3)
    assert record["figures"]["ttft_mean"] == 9.0 and record["sizes"] == {"demo": 3}
    grow = [e for e in kube.events(NS, kind="MacroInstance", name="demo") if e["reason"] == "Grow"]
    assert grow and "grow demo to 3 instances" in grow[0]["message"] and "ttft_mean=9" in grow[0]["message"]


def test_grow_by_what_the_arrivals_need_at_the_learned_capacity(kube, operator, routers):
    routers.figures["demo"] = SURGE
    with operator() as runner:
        kube.create(*MACROINSTANCES, autoscaled(instances=2, maxInstances=8), NS)
        kube.wait_for(lambda: wanted(kube) == 6, TIMEOUT, runner=runner)  # + maxGrowStep (4) of the 8 missing
        routers.figures["demo"] = STEADY
        kube.wait_for(lambda: len(workers(kube)) == 6, TIMEOUT, runner=runner)
    record = last_scaling(kube)
    assert (record["action"], record["instances"], record["sizes"]) == ("grow", 6, {"demo": 6})
    assert (record["figures"]["capacity"], record["figures"]["needed"], record["figures"]["arrived"]) == (10, 10, 80)


def test_shrink_after_sustained_idleness_drains_one_instance(kube, operator, routers):
    routers.figures["demo"] = IDLE
    with operator() as runner:
        kube.create(*MACROINSTANCES, autoscaled(instances=3), NS)
        kube.wait_for(lambda: wanted(kube) == 2, TIMEOUT, runner=runner)  # after three idle windows
        routers.figures["demo"] = STEADY
        kube.wait_for(lambda: len(workers(kube)) == 2, TIMEOUT, runner=runner)
    assert (last_scaling(kube)["action"], last_scaling(kube)["reason"]) == ("shrink", "saved_tpot")
    assert sorted(p["metadata"]["labels"][INSTANCE_INDEX] for p in workers(kube)) == ["0", "1"]


def test_split_at_max_instances_moves_running_pods_to_a_sibling(kube, operator, routers):
    routers.figures["demo"] = HOT
    with operator() as runner:
        kube.create(*MACROINSTANCES, autoscaled(instances=5, minInstances=2, maxInstances=5), NS)
        before = kube.wait_for(lambda: len(workers(kube)) == 5 and workers(kube), TIMEOUT, runner=runner)
        moving = {p["metadata"]["uid"] for p in before if p["metadata"]["labels"][INSTANCE_INDEX] in ("3", "4")}
        routers.figures["demo-2"] = STEADY
        kube.wait_for(lambda: kube.get(*MACROINSTANCES, "demo-2", NS), TIMEOUT, runner=runner)
        routers.figures["demo"] = STEADY
        # demo keeps 3 pods, demo-2 gets the 2 moved ones (same uids) plus 1 new one.
        kube.wait_for(lambda: len(workers(kube, "demo")) == 3 and len(workers(kube, "demo-2")) == 3, TIMEOUT)
        time.sleep(1.5)  # a resync or two: nothing is recreated behind the move
        after = workers(kube)
    assert len(after) == 6
    owners = uids(after)
    assert {u: owners[u] for u in moving} == {u: "demo-2" for u in moving}  # not recreated: relabeled
    assert set(uids(before)) - moving <= {u for u, mi in owners.items() if mi == "demo"}
    sibling = kube.get(*MACROINSTANCES, "demo-2", NS)
    assert (sibling["spec"]["instances"], sibling["spec"]["group"], wanted(kube)) == (3, "demo", 3)
    for pod in workers(kube, "demo-2"):
        (owner,) = pod["metadata"]["ownerReferences"]
        assert (owner["name"], owner["uid"], owner["controller"]) == ("demo-2", sibling["metadata"]["uid"], True)
    assert sorted(p["metadata"]["labels"][INSTANCE_INDEX] for p in workers(kube, "demo-2")) == ["0", "1", "2"]
    assert last_scaling(kube)["action"] == last_scaling(kube, "demo-2")["action"] == "split"
    assert last_scaling(kube)["sizes"] == {"demo": 3, "demo-2": 3}
    assert kube.get("apps/v1", "deployments", "demo-2-router", NS)  # the sibling's router follows its pods


def test_two_macro_instances_that_fit_in_one_merge(kube, operator, routers):
    routers.figures |= {"demo": STEADY, "demo-2": STEADY}
    with operator() as runner:
        kube.create(*MACROINSTANCES, autoscaled("demo", instances=2), NS)
        kube.create(*MACROINSTANCES, autoscaled("demo-2", instances=2, group="demo"), NS)
        before = kube.wait_for(lambda: len(workers(kube)) == 4 and workers(kube), TIMEOUT, runner=runner)
        # Equal sizes: the first by name ("demo") merges into the other.
        kube.wait_for(lambda: kube.get(*MACROINSTANCES, "demo", NS) is None, TIMEOUT, runner=runner)
        kube.wait_for(lambda: len(workers(kube, "demo-2")) == 4, TIMEOUT, runner=runner)
        time.sleep(1.5)
        after = workers(kube)
    assert set(uids(after)) == set(uids(before)) and set(uids(after).values()) == {"demo-2"}
    assert wanted(kube, "demo-2") == 4
    assert sorted(p["metadata"]["labels"][INSTANCE_INDEX] for p in after) == ["0", "1", "2", "3"]
    record = last_scaling(kube, "demo-2")
    assert (record["action"], record["source"], record["target"], record["reason"]) == (
        "merge",
        "demo",
        "demo-2",
        "fits_in_one",
    )
    assert kube.get("apps/v1", "deployments", "demo-router", NS) is None  # the merged one's router is gone


def test_cooldown_holds_the_next_step(kube, operator, routers):
    routers.figures["demo"] = HOT
    with operator() as runner:
        kube.create(*MACROINSTANCES, autoscaled(instances=1), NS)
        kube.wait_for(lambda: wanted(kube) == 2, TIMEOUT, runner=runner)
        reads = routers.reads["demo"]
        kube.wait_for(lambda: routers.reads["demo"] >= reads + 3, TIMEOUT, runner=runner)  # three more rounds
        assert wanted(kube) == 2  # still hot, but cooling down


def test_autoscaling_disabled_leaves_sizing_to_the_user(kube, operator, routers):
    routers.figures |= {"manual": HOT, "auto": HOT}
    with operator() as runner:
        kube.create(*MACROINSTANCES, macro("manual", group="manual", instances=2), NS)
        kube.create(*MACROINSTANCES, autoscaled("auto", instances=1, group="auto"), NS)
        kube.wait_for(lambda: wanted(kube, "auto") == 2, TIMEOUT, runner=runner)  # the autoscaler is running
        kube.wait_for(lambda: routers.reads["auto"] >= 3, TIMEOUT, runner=runner)
    assert wanted(kube, "manual") == 2 and routers.reads["manual"] == 0 and not last_scaling(kube, "manual")


def test_a_manual_scale_is_recorded_and_not_fought_during_the_cooldown(kube, operator, routers):
    routers.figures["demo"] = STEADY
    with operator() as runner:
        kube.create(*MACROINSTANCES, autoscaled(instances=2), NS)
        kube.wait_for(lambda: routers.reads["demo"] >= 1, TIMEOUT, runner=runner)
        # kubectl scale mi demo --replicas 1, through the scale subresource; then load arrives.
        kube.patch(*MACROINSTANCES, "demo", {"spec": {"replicas": 1}}, NS, subresource="scale")
        kube.wait_for(lambda: last_scaling(kube).get("action") == "manual", TIMEOUT, runner=runner)
        routers.figures["demo"] = HOT
        reads = routers.reads["demo"]
        kube.wait_for(lambda: routers.reads["demo"] >= reads + 3, TIMEOUT, runner=runner)
        assert wanted(kube) == 1
    record = last_scaling(kube)
    assert (record["instances"], record["reason"]) == (1, "spec_changed_outside_the_autoscaler")
    assert any(e["reason"] == "ManualScaling" for e in kube.events(NS, kind="MacroInstance", name="demo"))
