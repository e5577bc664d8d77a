"""Pure builders of everything a MacroInstance owns (DESIGN.md §5): worker Pods (managed directly, so a pod can
move between macro instances without a restart), a router Deployment + Service, the group's gateway Deployment
+ Service, an optional Ingress, and the ServiceAccount/Role the routers and gateways use to watch pods.

Nothing here talks to the API server: `desired_children(cr, settings)` returns manifests and the reconciler
diffs and applies them, so every manifest is unit-tested and validated against the Kubernetes schemas."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .labels import GROUP, INSTANCE_INDEX, MACRO_INSTANCE, ROLE, Role, worker_selector
from .spec import MacroInstanceSpec

Manifest = dict[str, Any]

API_GROUP = "ecoserve.io"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "MacroInstance"
PORT = 8000
# A router or gateway that goes (a merged macro instance's, a rollout) stops taking requests at once but lets the
# streams it carries finish for this long (a long generation takes minutes at worst).
SHUTDOWN_GRACE = 120
DISCOVERY_ACCOUNT = "ecoserve-discovery"
NON_ROOT_UID = 10001


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """Images and defaults the chart sets through the operator's environment."""

    control_image: str = "ecoserve/control:0.1.0"  # router, gateway, operator and the sim worker
    worker_image: str = "ecoserve/worker:0.1.0"  # vLLM + this package
    image_pull_policy: str = "IfNotPresent"

    @classmethod
    def from_env(cls) -> OperatorSettings:
        default = cls()
        return cls(
            os.environ.get("ECOSERVE_CONTROL_IMAGE", default.control_image),
            os.environ.get("ECOSERVE_WORKER_IMAGE", default.worker_image),
            os.environ.get("ECOSERVE_IMAGE_PULL_POLICY", default.image_pull_policy),
        )


def owner_reference(cr: Manifest, controller: bool = True) -> dict[str, Any]:
    meta = cr["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def router_name(mi: str) -> str:
    return f"{mi}-router"


def gateway_name(group: str) -> str:
    return f"{group}-gateway"


def worker_name(mi: str, index: int, suffix: str) -> str:
    """Unique per pod (the suffix), so a replacement never waits for its predecessor's name to be freed and a
    pod that moved in from another macro instance keeps its own."""
    return f"{mi}-worker-{index}-{suffix}"


def router_endpoint(mi: str, namespace: str) -> str:
    return f"http://{router_name(mi)}.{namespace}.svc:{PORT}"


def _labels(spec: MacroInstanceSpec, role: Role, mi: str | None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": f"ecoserve-{role.value}",
        "app.kubernetes.io/part-of": "ecoserve",
        "app.kubernetes.io/managed-by": "ecoserve-operator",
        GROUP: spec.group,
        ROLE: role.value,
    }
    if mi is not None:
        labels[MACRO_INSTANCE] = mi
    return labels


def _selector_labels(labels: dict[str, str]) -> dict[str, str]:
    """The labels that identify a Deployment's or Service's pods (the others may change without a rollout)."""
    return {k: v for k, v in labels.items() if k in (GROUP, MACRO_INSTANCE, ROLE)}


def _meta(name: str, namespace: str, labels: dict[str, str], owners: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owners}


SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": NON_ROOT_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _probes(startup_seconds: int) -> dict[str, Any]:
    """Startup allows for model loading; readiness gates routing; liveness restarts a hung engine."""
    get = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        "startupProbe": {**get, "periodSeconds": 5, "failureThreshold": max(startup_seconds // 5, 1)},
        "readinessProbe": {**get, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**get, "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 5},
    }


def worker_args(spec: MacroInstanceSpec) -> list[str]:
    """`ecoserve worker` flags: the engine, its parallelism, the hardware its cost model prices."""
    e = spec.engine
    common = ["--host", "0.0.0.0", "--port", str(PORT), "--served-model-name", spec.api_model_name]
    common += ["--gpu", e.gpu, "--tp", str(e.tensor_parallel_size), "--pp", str(e.pipeline_parallel_size)]
    if e.kind == "vllm":
        return ["--engine", "vllm", spec.model, *common, *e.args]
    return ["--engine", "sim", "--model-preset", spec.model, *common, *e.args]


def worker_resources(spec: MacroInstanceSpec) -> dict[str, Any]:
    """GPUs are TP×PP for vLLM; the spec's resources are merged over that (it may change anything)."""
    if spec.engine.kind == "vllm":
        gpus = str(spec.gpus_per_instance)
        base: dict[str, Any] = {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}}
    else:
        base = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    for key, value in (spec.engine.resources or {}).items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def worker_pod(
    cr: Manifest, spec: MacroInstanceSpec, index: int, suffix: str, settings: OperatorSettings = OperatorSettings()
) -> Manifest:
    mi, namespace = cr["metadata"]["name"], cr["metadata"]["namespace"]
    vllm = spec.engine.kind == "vllm"
    labels = _labels(spec, Role.WORKER, mi) | {INSTANCE_INDEX: str(index)}
    volumes = list(spec.pod_template.volumes)
    mounts = list(spec.pod_template.volume_mounts)
    if vllm:  # tensor parallelism exchanges tensors through shared memory
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    container = {
        "name": "worker",
        "image": spec.engine.image or (settings.worker_image if vllm else settings.control_image),
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["ecoserve", "worker"],
        "args": worker_args(spec),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": list(spec.pod_template.env),
        "resources": worker_resources(spec),
        "securityContext": SECURITY_CONTEXT,
        "volumeMounts": mounts,
        **_probes(1800 if vllm else 60),
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID, "fsGroup": NON_ROOT_UID},
        "volumes": volumes,
        "tolerations": list(spec.pod_template.tolerations),
    }
    if spec.pod_template.node_selector:
        pod_spec["nodeSelector"] = dict(spec.pod_template.node_selector)
    meta = _meta(worker_name(mi, index, suffix), namespace, labels, [owner_reference(cr)])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def router_args(spec: MacroInstanceSpec, mi: str, namespace: str) -> list[str]:
    s, e = spec.scheduler, spec.engine
    return [
        "router",
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--shutdown-grace", str(SHUTDOWN_GRACE),
        "--discover-namespace", namespace,
        "--discover-selector", worker_selector(mi),
        "--discover-port", str(PORT),
        "--ttft", f"{spec.slo.ttft_ms / 1000:g}",
        "--tpot", f"{spec.slo.tpot_ms / 1000:g}",
        "--attainment", f"{spec.slo.attainment:g}",
        "--slack-aggregate", s.slack_aggregate,
        "--kv-reservation", s.kv_reservation,
        "--queue-limit", str(s.queue_limit),
        "--max-batched-tokens", str(s.max_batched_tokens),
        "--model-preset", spec.cost_model_preset(),
        "--gpu", e.gpu,
        "--tp", str(e.tensor_parallel_size),
        "--pp", str(e.pipeline_parallel_size),
    ]  # fmt: skip


def _deployment(
    name: str,
    namespace: str,
    labels: dict[str, str],
    owners: list[dict[str, Any]],
    image: str,
    args: list[str],
    resources: dict[str, Any],
    settings: OperatorSettings,
) -> Manifest:
    """A one-replica control-plane Deployment (router or gateway) that watches pods through the API."""
    match = _selector_labels(labels)
    container = {
        "name": labels[ROLE],
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["ecoserve"],
        "args": args,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "resources": resources,
        "securityContext": SECURITY_CONTEXT,
        **_probes(60),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, labels, owners),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": DISCOVERY_ACCOUNT,
                    "terminationGracePeriodSeconds": SHUTDOWN_GRACE + 10,
                    "containers": [container],
                    "securityContext": {"runAsNonRoot": True, "runAsUser": NON_ROOT_UID},
                },
            },
        },
    }


def _service(name: str, namespace: str, labels: dict[str, str], owners: list[dict[str, Any]]) -> Manifest:
    match = _selector_labels(labels)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, labels, owners),
        "spec": {
            "selector": match,
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


CONTROL_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def router_children(cr: Manifest, spec: MacroInstanceSpec, settings: OperatorSettings) -> list[Manifest]:
    mi, namespace = cr["metadata"]["name"], cr["metadata"]["namespace"]
    labels = _labels(spec, Role.ROUTER, mi)
    owners = [owner_reference(cr)]
    image = spec.router.image or settings.control_image
    resources = spec.router.resources or CONTROL_RESOURCES
    args = router_args(spec, mi, namespace)
    return [
        _deployment(router_name(mi), namespace, labels, owners, image, args, resources, settings),
        _service(router_name(mi), namespace, labels, owners),
    ]


def gateway_children(
    group_crs: list[Manifest], spec: MacroInstanceSpec, namespace: str, settings: OperatorSettings
) -> list[Manifest]:
    """The group's gateway, owned by every MacroInstance of the group: it goes when the last one goes."""
    labels = _labels(spec, Role.GATEWAY, None)
    owners = [owner_reference(cr, controller=False) for cr in sorted(group_crs, key=lambda c: c["metadata"]["name"])]
    router_pods = f"{GROUP}={spec.group},{ROLE}={Role.ROUTER.value}"
    args = ["gateway", "--host", "0.0.0.0", "--port", str(PORT), "--shutdown-grace", str(SHUTDOWN_GRACE)]
    args += ["--discover-namespace", namespace, "--discover-selector", router_pods, "--discover-port", str(PORT)]
    name = gateway_name(spec.group)
    children = [
        _deployment(name, namespace, labels, owners, settings.control_image, args, CONTROL_RESOURCES, settings),
        _service(name, namespace, labels, owners),
    ]
    ingress = next((s.ingress for s in map(read_spec, group_crs) if s.ingress.enabled), None)
    if ingress is not None:
        rule: dict[str, Any] = {
            "http": {
                "paths": [
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": name, "port": {"name": "http"}}},
                    }
                ]
            }
        }
        if ingress.host:
            rule["host"] = ingress.host
        ingress_spec: dict[str, Any] = {"rules": [rule]}
        if ingress.class_name:
            ingress_spec["ingressClassName"] = ingress.class_name
        children.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": _meta(name, namespace, labels, owners),
                "spec": ingress_spec,
            }
        )
    return children


def discovery_rbac(namespace: str, owners: list[dict[str, Any]]) -> list[Manifest]:
    """What routers and gateways need to discover pods by label: get/list/watch pods, nothing else."""
    labels = {"app.kubernetes.io/part-of": "ecoserve", "app.kubernetes.io/managed-by": "ecoserve-operator"}
    meta = _meta(DISCOVERY_ACCOUNT, namespace, labels, owners)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": DISCOVERY_ACCOUNT},
            "subjects": [{"kind": "ServiceAccount", "name": DISCOVERY_ACCOUNT, "namespace": namespace}],
        },
    ]


def read_spec(cr: Manifest) -> MacroInstanceSpec:
    return MacroInstanceSpec.model_validate(cr.get("spec") or {})


def desired_children(
    cr: Manifest, namespace_crs: list[Manifest], settings: OperatorSettings = OperatorSettings()
) -> list[Manifest]:
    """Everything `cr` should own besides its worker pods (whose reconciliation counts and drains; see
    `worker_pod`): its router, its group's gateway (owned by every CR of the group among `namespace_crs`,
    which includes `cr`) and the namespace's discovery RBAC (owned by every CR in the namespace)."""
    spec = read_spec(cr)
    namespace = cr["metadata"]["namespace"]
    # `cr` itself always owns: a list taken after its deletion started would otherwise leave owner lists empty
    # (an object with no owners is never garbage-collected)
    uid = cr["metadata"].get("uid")
    others = [c for c in namespace_crs if c["metadata"].get("uid") != uid]
    live = [cr, *(c for c in others if not c["metadata"].get("deletionTimestamp"))]
    group = [c for c in live if (c.get("spec") or {}).get("group") == spec.group]
    all_owners = [owner_reference(c, controller=False) for c in sorted(live, key=lambda c: c["metadata"]["name"])]
    return [
        *discovery_rbac(namespace, all_owners),
        *router_children(cr, spec, settings),
        *gateway_children(group, spec, namespace, settings),
    ]
