"""One reconcile pass of a MacroInstance against the API server: apply the desired children, carry out the
worker-pod plan, report events and status. All decisions come from the pure modules (children, plan, status);
this module only reads, writes and reports, so the kopf handlers stay thin and restarts converge."""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from kubernetes.client.exceptions import ApiException

from ecoserve.router.upstream import parse_worker_metrics

from . import metrics
from .children import API_VERSION, KIND, PORT, OperatorSettings, desired_children, read_spec, worker_pod
from .kube import Kube, Manifest
from .labels import DRAINING, member_selector
from .plan import DRAIN_DEADLINE, is_draining, plan_pods, utcnow
from .spec import MacroInstanceSpec
from .status import macro_status

APPLIED_HASH = "ecoserve.io/applied-hash"
EventFn = Callable[[Manifest, str, str, str], None]  # (object, type Normal|Warning, reason, message)


def _digest(manifest: Manifest) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def apply(kube: Kube, manifest: Manifest) -> str | None:
    """Create the object, or patch it when the builder's output changed since it was last applied (a hash in an
    annotation, so fields the API server defaults never cause a patch). Returns "created", "updated" or None."""
    digest = _digest(manifest)
    meta = manifest["metadata"]
    wanted = {**manifest, "metadata": {**meta, "annotations": {**meta.get("annotations", {}), APPLIED_HASH: digest}}}
    current = kube.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
    if current is None:
        try:
            kube.create(wanted)
            return "created"
        except ApiException as err:
            if err.status != 409:  # created concurrently: fall through to the comparison next pass
                raise
            return None
    if (current["metadata"].get("annotations") or {}).get(APPLIED_HASH) == digest:
        return None
    body = {k: v for k, v in wanted.items() if k not in ("apiVersion", "kind")}
    body["metadata"] = {k: wanted["metadata"][k] for k in ("labels", "annotations", "ownerReferences")}
    kube.patch(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"], body)
    return "updated"


def worker_idle(pod: Manifest, timeout: float = 2.0, port: int = PORT) -> bool:
    """A draining worker with no request left, by its vLLM metrics; a pod without an IP never served any."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return True
    try:
        resp = httpx.get(f"http://{ip}:{port}/metrics", timeout=timeout)
        info = parse_worker_metrics(resp.text) if resp.status_code == 200 else None
    except httpx.HTTPError:
        return False
    return info is not None and info.requests == 0


def _suffix() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


@dataclass
class Reconciler:
    kube: Kube
    event: EventFn
    settings: OperatorSettings = field(default_factory=OperatorSettings)
    clock: Callable[[], datetime] = utcnow
    idle: Callable[[Manifest], bool] = field(default=lambda pod: worker_idle(pod))  # late-bound for tests

    def reconcile(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One pass; returns the status written (None if the MacroInstance is gone or being deleted)."""
        cr = self.kube.get(API_VERSION, KIND, namespace, name)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            return None
        spec = read_spec(cr)
        with metrics.RECONCILE_SECONDS.time():
            namespace_crs = self.kube.list(API_VERSION, KIND, namespace)
            for manifest in desired_children(cr, namespace_crs, self.settings):
                action = apply(self.kube, manifest)
                if action is not None:
                    self.event(
                        cr, "Normal", action.capitalize(), f"{action} {manifest['kind']} {manifest['metadata']['name']}"
                    )
            self._reconcile_pods(cr, spec)
            pods = self.kube.list("v1", "Pod", namespace, member_selector(name))
            now = self.clock()
            status = macro_status(cr, pods, plan_pods(spec.instances, pods, now, frozenset()), now)
            current = {k: v for k, v in (cr.get("status") or {}).items() if k in status}  # not lastScaling
            if _without_times(status) != _without_times(current):
                self.kube.patch(API_VERSION, KIND, namespace, name, {"status": status}, subresource="status")
        return status

    def _reconcile_pods(self, cr: Manifest, spec: MacroInstanceSpec) -> None:
        namespace, name = cr["metadata"]["namespace"], cr["metadata"]["name"]
        instances = spec.instances
        pods = self.kube.list("v1", "Pod", namespace, member_selector(name))
        draining = [p for p in pods if is_draining(p)]
        idle = frozenset(p["metadata"]["name"] for p in draining if self.idle(p))
        now = self.clock()
        plan = plan_pods(instances, pods, now, idle)
        serving = len(pods) - len(draining)
        if plan.create or plan.drain:
            target = serving + len(plan.create) - len(plan.drain)
            self.event(cr, "Normal", "Scaling", f"worker pods {serving} -> {target} (spec.instances={instances})")
        for index in plan.create:
            pod = worker_pod(cr, spec, index, _suffix(), self.settings)
            self.kube.create(pod)
            metrics.POD_ACTIONS.labels("created").inc()
            self.event(cr, "Normal", "CreatedWorker", f"created worker pod {pod['metadata']['name']} (index {index})")
        deadline = (now + timedelta(seconds=spec.drain_timeout_seconds)).isoformat()
        for pod_name in plan.drain:
            patch = {"metadata": {"labels": {DRAINING: "true"}, "annotations": {DRAIN_DEADLINE: deadline}}}
            self.kube.patch("v1", "Pod", namespace, pod_name, patch)
            metrics.POD_ACTIONS.labels("drained").inc()
            self.event(cr, "Normal", "DrainingWorker", f"draining worker pod {pod_name} until {deadline}")
        for pod_name in plan.undrain:
            patch = {"metadata": {"labels": {DRAINING: None}, "annotations": {DRAIN_DEADLINE: None}}}
            self.kube.patch("v1", "Pod", namespace, pod_name, patch)
            metrics.POD_ACTIONS.labels("undrained").inc()
            self.event(cr, "Normal", "UndrainedWorker", f"worker pod {pod_name} is wanted again")
        for pod_name, reason in plan.delete:
            self.kube.delete("v1", "Pod", namespace, pod_name)
            metrics.POD_ACTIONS.labels("deleted").inc()
            kind = "Warning" if reason == "failed" else "Normal"
            self.event(cr, kind, "DeletedWorker", f"deleted worker pod {pod_name}: {reason}")


def _without_times(status: dict[str, Any]) -> dict[str, Any]:
    conditions = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []]
    return {**status, "conditions": conditions}
