"""A Kubernetes API emulator on 127.0.0.1 for running the real kopf operator in tests.

`KubeEmulator` is a subclass of kmock's `KubernetesEmulator` (kmock 0.8) that behaves enough like a real API
server for kopf (`kopf.testing.KopfRunner`) and the official `kubernetes` client to work against it unchanged.
`EmulatedCluster` runs it in a background thread with its own event loop (so a test may block, e.g. in
`KopfRunner.__exit__`, without starving the server), writes a kubeconfig and gives tests synchronous helpers.
The `kube` fixture (`kube_fixture`) hands one fresh cluster to each test and points `KUBECONFIG` at it::

    from kube_emulator import MACROINSTANCES, kube_fixture  # noqa: F401  (the fixture is named `kube`)

    def test_operator(kube, tmp_path):
        with kube.operator(operator_file) as runner:  # kopf run --standalone --verbose --namespace default FILE
            kube.create(*MACROINSTANCES, {"metadata": {"name": "m"}, "spec": {...}}, namespace="default")
            pods = kube.wait_for(lambda: kube.objects("v1", "pods", "default", label_selector="app=x"), runner=runner)
        assert runner.exit_code == 0 and runner.exception is None
        assert kube.get(*MACROINSTANCES, "m", "default")["status"]["phase"] == "Running"

`kube.operator()` returns once kopf's watch of the custom resource is established (no sleeping, no race), with a
fresh kopf registry (with kopf's default login handlers) and settings, and prints kopf's output when it stops.
Before leaving the block, wait for the last thing the operator writes (e.g. kopf's
`kopf.zalando.org/last-handled-configuration` annotation), so that nothing is in flight when the operator stops.

What it adds to kmock's emulator (the gaps K8S-TOOLING.md lists, fixed):

- `metadata.uid` (per object, new on re-creation), `resourceVersion` (one increasing counter for the whole
  cluster, as etcd's), `creationTimestamp`, `generation` (1 on create; +1 when anything but `metadata`, and but
  `status` where status is a subresource, changes, and when deletion starts; kept on every kind, while a real
  server keeps it on some only); `generateName`; `apiVersion`/`kind`. Clients cannot overwrite these.
- PATCH by content type: JSON patch (a failed `test` op or a bad path answers 422 Invalid, not 500), JSON merge
  patch (RFC 7386), strategic merge patch (treated as merge patch, see gaps); PUT (replace) with optimistic
  concurrency (409 Conflict on a stale `metadata.resourceVersion`, for merge patches too); DELETE of collections.
- The status subresource: PATCH/PUT on `.../status` change only `status`; on the main resource they leave
  `status` unchanged; on create `status` is dropped (pods start as `{"phase": "Pending"}`). The scale subresource
  (`autoscaling/v1` Scale) reads/writes the CRD's `specReplicasPath` (`spec.replicas` for Deployments).
- A no-op patch does not bump `resourceVersion` and sends no watch event, as on a real server.
- Finalizers: DELETE of an object with finalizers sets `deletionTimestamp` (and keeps it); the object goes when
  the last finalizer is removed; new finalizers are refused (422) once deletion started.
- Garbage collection by `ownerReferences` (background propagation, immediately, unless DELETE asked for
  `propagationPolicy: Orphan`): dependents whose owners are all gone are deleted (their finalizers honoured),
  also one created, or re-owned, after its owners went; deleting a namespace deletes what is in it. Creating in a
  namespace that does not exist answers 404.
- Lists honour `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`) and
  `fieldSelector` (`path=v`, `path!=v` on any dotted path, e.g. `metadata.name`, `status.phase`), carry
  `kind: <Kind>List`, `apiVersion` and the cluster's current `metadata.resourceVersion`.
- Watches honour the same selectors, a name, `resourceVersion` (events after it are replayed from a full event
  log: list-then-watch, as kopf does, cannot miss anything), `sendInitialEvents` (with the closing BOOKMARK) and
  `timeoutSeconds`. The snapshot and the subscription are atomic, so there is no watch race. `watch_count()` /
  `EmulatedCluster.wait_for_watch()` tell deterministically when a client's watch is established.
- `v1/namespaces` is routed correctly (kmock parses `/api/v1/namespaces` wrongly); namespaces `default` and
  `kube-system` exist from the start.
- Declared resources: core v1 namespaces, pods, services, configmaps, secrets, events, serviceaccounts;
  apps/v1 deployments; networking.k8s.io/v1 ingresses;
  rbac.authorization.k8s.io/v1 roles, rolebindings; events.k8s.io/v1 events; apiextensions.k8s.io/v1
  customresourcedefinitions (kopf watches CRDs and needs namespaces and v1 events in its discovery); and
  every CRD given (by default crds/*.yaml: MacroInstance, ecoserve.io/v1alpha1, with status and scale).
  Posting a CRD through the API serves it too. Undeclared resources answer 404.
- Custom resources go through the CRD's structural schema: unknown fields are pruned (unless
  `x-kubernetes-preserve-unknown-fields`), defaults are applied, and the object is validated with
  tests/crdcheck.py (`admit`: jsonschema + core CEL, an approximation); 422 if invalid.

Known remaining gaps (test these at the unit level, or on a real cluster with the e2e suite):

- No controllers: Deployments get no ReplicaSets or Pods, pods are never scheduled, started or made Ready,
  services get no endpoints, nothing fills a status except what tests and the operator write
  (`EmulatedCluster.patch_status` simulates a kubelet or a controller).
- Strategic merge patch is a plain merge patch: lists are replaced, not merged by key, and `$patch` directives
  are ignored. No server-side apply (`application/apply-patch+yaml` answers 415). No `dryRun`.
- No validation or defaulting of built-in kinds (any pod body is accepted); schema-less fields of built-ins are
  kept as sent. The CRD validation is the crdcheck approximation (no CEL transition rules, no cost budget).
- No authentication, authorization or RBAC (every request is allowed), no admission webhooks, no quotas.
- Garbage collection is immediate and always "background": no foreground deletion, no `blockOwnerDeletion`,
  no grace periods (pods go at once). Namespace deletion is immediate (no Terminating phase).
- Lists ignore `limit`/`continue` (everything in one chunk); watches send no periodic bookmarks and never
  answer 410 Gone (the event log is never compacted). Label selectors on watches filter events by the object's
  current labels (an object leaving the selection sends no synthetic DELETED).
- No `/log`, `/exec`, `/eviction`, `/binding`, `/proxy` subresources; no `Table` output; no protobuf.
- kmock reactions (`cluster.emulator['...'] << ...`) still see the requests, but a mutation is applied before
  reactions run (kmock's semantics), so a reaction cannot make a mutation fail without it taking effect.
  Writing kmock's `emulator.objects[...]` directly bypasses the stamping and the watches: use the helpers.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import copy
import datetime
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import pytest
import yaml
from crdcheck import admit, apply_defaults
from kmock._internal import apps, enums, parsing, rendering

T = TypeVar("T")

CRDS_DIR = Path(__file__).resolve().parents[1] / "crds"
MACROINSTANCES = ("ecoserve.io/v1alpha1", "macroinstances")
VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

# (apiVersion, plural, kind, namespaced, subresources, shortnames)
BUILTIN_RESOURCES: tuple[tuple[str, str, str, bool, tuple[str, ...], tuple[str, ...]], ...] = (
    ("v1", "namespaces", "Namespace", False, ("status",), ("ns",)),
    ("v1", "pods", "Pod", True, ("status",), ("po",)),
    ("v1", "services", "Service", True, ("status",), ("svc",)),
    ("v1", "configmaps", "ConfigMap", True, (), ("cm",)),
    ("v1", "secrets", "Secret", True, (), ()),
    ("v1", "events", "Event", True, (), ("ev",)),
    ("v1", "serviceaccounts", "ServiceAccount", True, (), ("sa",)),
    ("apps/v1", "deployments", "Deployment", True, ("status", "scale"), ("deploy",)),
    ("networking.k8s.io/v1", "ingresses", "Ingress", True, ("status",), ("ing",)),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", True, (), ()),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", True, (), ()),
    ("events.k8s.io/v1", "events", "Event", True, (), ("ev",)),
    ("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False, ("status",), ("crd",)),
)
# Scale subresource paths of built-ins: (specReplicasPath, statusReplicasPath, labelSelectorPath).
BUILTIN_SCALE = {("apps/v1", "deployments"): (".spec.replicas", ".status.replicas", None)}
INITIAL_NAMESPACES = ("default", "kube-system")
WATCH_IDLE_CHECK = 0.1  # seconds between checks that an idle watch's client is still connected
_IDLE = object()  # a watch stream's internal tick, never sent
_SERVED = object()  # a mutation's result was served by our fallback (not by a user's kmock reaction)

# Fields of metadata that only the server sets; clients cannot change them by PATCH or PUT.
SERVER_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")


def res_of(api_version: str, plural: str) -> kmock.resource:
    group, _, version = api_version.rpartition("/")
    return kmock.resource(group=group, version=version, plural=plural)


def api_version_of(res: kmock.resource) -> str:
    return f"{res.group}/{res.version}" if res.group else str(res.version)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------------------
# Errors as the API server reports them (kmock renders KubernetesError as a v1 Status).


def api_error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details or {"causes": []})


def not_found(res: kmock.resource, name: str | None) -> kmock.KubernetesError:
    return api_error(404, "NotFound", f'{res.plural} "{name}" not found', name=name, kind=res.plural)


# --------------------------------------------------------------------------------------------------------------
# Label and field selectors.

_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<val>[-A-Za-z0-9_.]*)|\s+(?P<setop>in|notin)\s*\((?P<vals>[^()]*)\))?\s*$"
)
Requirement = tuple[str, str, frozenset[str]]  # (key, operator, values)


def _split_top_level(selector: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def parse_label_selector(selector: str | None) -> list[Requirement]:
    """`a=b,c!=d,e,!f,g in (x,y),h notin (z)` as requirements; ValueError if malformed."""
    requirements: list[Requirement] = []
    for part in _split_top_level(selector or ""):
        m = _REQUIREMENT.match(part)
        if m is None or (m["neg"] and (m["op"] or m["setop"])):
            raise ValueError(f"unable to parse requirement: {part.strip()!r}")
        if m["neg"]:
            requirements.append((m["key"], "!exists", frozenset()))
        elif m["op"]:
            requirements.append((m["key"], "!=" if m["op"] == "!=" else "=", frozenset([m["val"]])))
        elif m["setop"]:
            values = frozenset(v.strip() for v in m["vals"].split(",") if v.strip())
            requirements.append((m["key"], m["setop"], values))
        else:
            requirements.append((m["key"], "exists", frozenset()))
    return requirements


def labels_match(labels: dict[str, str] | None, requirements: Iterable[Requirement]) -> bool:
    labels = labels or {}
    for key, op, values in requirements:
        present = key in labels
        ok = {
            "=": present and labels.get(key) in values,
            "in": present and labels.get(key) in values,
            "!=": not present or labels.get(key) not in values,
            "notin": not present or labels.get(key) not in values,
            "exists": present,
            "!exists": not present,
        }[op]
        if not ok:
            return False
    return True


def parse_field_selector(selector: str | None) -> list[tuple[str, bool, str]]:
    """`metadata.name=x,status.phase!=Running` as (dotted path, must equal, value); ValueError if malformed."""
    out = []
    for part in _split_top_level(selector or ""):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if m is None:
            raise ValueError(f"invalid field selector: {part.strip()!r}")
        out.append((m[1], m[2] != "!=", m[3]))
    return out


def get_path(obj: Any, path: str) -> Any:
    for key in path.strip(".").split("."):
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.strip(".").split(".")
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[last] = value


def fields_match(obj: dict[str, Any], requirements: Iterable[tuple[str, bool, str]]) -> bool:
    for path, equal, value in requirements:
        actual = get_path(obj, path)
        actual_str = "" if actual is None else str(actual).lower() if isinstance(actual, bool) else str(actual)
        if (actual_str == value) != equal:
            return False
    return True


# --------------------------------------------------------------------------------------------------------------
# Patching and structural schemas.


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strip_directives(patch: Any) -> Any:
    """Strategic-merge directives ($patch, $setElementOrder/..., $retainKeys, ...) are dropped, not honoured."""
    if isinstance(patch, dict):
        return {k: _strip_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_strip_directives(v) for v in patch]
    return patch


def prune(schema: dict[str, Any], value: Any, *, root: bool = False) -> Any:
    """Drop fields the structural schema does not know, as the API server does for custom resources."""
    if isinstance(value, dict):
        embedded = root or schema.get("x-kubernetes-embedded-resource")
        keep = {"apiVersion", "kind", "metadata"} if embedded else set()
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        out = {}
        for key, item in value.items():
            if key in keep:
                out[key] = item
            elif props is not None and key in props:
                out[key] = prune(props[key], item)
            elif isinstance(extra, dict):
                out[key] = prune(extra, item)
            elif extra is True or preserve:
                out[key] = item
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(schema["items"], item) for item in value]
    return value


# --------------------------------------------------------------------------------------------------------------
# The emulator.


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock's path parser, with `/api/v1/namespaces[/NAME[/status|finalize]]` routed as a resource."""
    segments = path.strip("/").split("/")
    whole_namespace = len(segments) <= 4 or (len(segments) == 5 and segments[4] in ("status", "finalize"))
    if len(segments) >= 3 and segments[0] == "api" and segments[2] == "namespaces" and whole_namespace:
        name = segments[3] if len(segments) > 3 else None
        subresource = segments[4] if len(segments) > 4 else None
        return parsing.ParsedPath("", segments[1], "namespaces", None, name, subresource)
    return parsing.parse_path(path)


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API server's bookkeeping (see the module docstring). Serve it with kmock.Server.

    State lives in kmock's `objects` (with per-object history); all changes go through `api_*` coroutines
    (used both by HTTP requests and by tests' helpers) so that every change is stamped and watched.
    """

    validate: bool = True  # validate custom resources with tests/crdcheck.py when it imports
    garbage_collection: bool = True
    crd_paths: tuple[Path, ...] = attrs.field(factory=lambda: tuple(sorted(CRDS_DIR.glob("*.yaml"))))

    _rv: int = attrs.field(default=0, init=False)
    _log: dict[kmock.resource, list[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=lambda: collections.defaultdict(list), init=False
    )
    # Set, then replaced, on every change: watchers wait on the one they saw. (An asyncio.Condition's lock could be
    # left broken by a watcher cancelled while re-acquiring it after a timeout, and then every write hung.)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _crds: dict[kmock.resource, dict[str, Any]] = attrs.field(factory=dict, init=False)  # resource -> CRD
    _scale: dict[kmock.resource, tuple[str, str | None, str | None]] = attrs.field(factory=dict, init=False)
    _results: dict[rendering.Request, Any] = attrs.field(factory=dict, init=False)
    _watches: collections.Counter[tuple[kmock.resource, str | None]] = attrs.field(
        factory=collections.Counter, init=False
    )
    _service_ips: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for api_version, plural, kind, namespaced, subresources, shortnames in BUILTIN_RESOURCES:
            self.declare(api_version, plural, kind, namespaced=namespaced, subresources=subresources)
            self.resources[res_of(api_version, plural)].shortnames = set(shortnames)
        for (api_version, plural), paths in BUILTIN_SCALE.items():
            self._scale[res_of(api_version, plural)] = paths
        for name in INITIAL_NAMESPACES:
            self._create(res_of("v1", "namespaces"), None, {"metadata": {"name": name}})
        for path in self.crd_paths:
            for doc in yaml.safe_load_all(Path(path).read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self._create(res_of("apiextensions.k8s.io/v1", "customresourcedefinitions"), None, doc)

    # ----------------------------------------------------------------------------------------------------------
    # Declarations.

    def declare(
        self,
        api_version: str,
        plural: str,
        kind: str,
        *,
        namespaced: bool = True,
        subresources: Iterable[str] = (),
        singular: str | None = None,
    ) -> kmock.resource:
        """Serve one more resource (in discovery, lists, watches, CRUD)."""
        res = res_of(api_version, plural)
        self.resources[res] = kmock.ResourceInfo(
            namespaced=namespaced,
            kind=kind,
            singular=singular or kind.lower(),
            verbs=set(VERBS),
            subresources=set(subresources),
        )
        return res

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            subresources = version.get("subresources") or {}
            res = self.declare(
                f"{spec['group']}/{version['name']}",
                names["plural"],
                names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                subresources=[s for s in ("status", "scale") if s in subresources],
                singular=names.get("singular"),
            )
            self.resources[res].shortnames = set(names.get("shortNames", []))
            self.resources[res].categories = set(names.get("categories", []))
            self._crds[res] = {**crd, "spec": {**spec, "versions": [version]}}
            if "scale" in subresources:
                scale = subresources["scale"]
                paths = (scale["specReplicasPath"], scale.get("statusReplicasPath"), scale.get("labelSelectorPath"))
                self._scale[res] = paths

    def _info(self, res: kmock.resource | None) -> kmock.ResourceInfo:
        if res is None or res.plural is None or res not in self.resources:
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({res})")
        return self.resources[res]

    # ----------------------------------------------------------------------------------------------------------
    # Reading.

    def _live(self, res: kmock.resource, namespace: str | None, name: str) -> kmock.Object | None:
        key = (res, namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    def _current(self, res: kmock.resource, namespace: str | None, name: str | None) -> dict[str, Any]:
        info = self._info(res)
        if (namespace is None) == bool(info.namespaced) or name is None:
            raise not_found(res, name)
        obj = self._live(res, namespace, name)
        if obj is None:
            raise not_found(res, name)
        return copy.deepcopy(obj.raw)

    def _select(
        self,
        res: kmock.resource,
        namespace: str | None,
        name: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        matches = self._matcher(namespace, name, label_selector, field_selector)
        items = [
            copy.deepcopy(obj.raw)
            for (r, _, _), obj in list(self.objects.items())
            if r == res and not obj.deleted and matches(obj.raw)
        ]
        return sorted(items, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    @staticmethod
    def _matcher(
        namespace: str | None, name: str | None, label_selector: str | None, field_selector: str | None
    ) -> Callable[[dict[str, Any]], bool]:
        try:
            labels = parse_label_selector(label_selector)
            fields = parse_field_selector(field_selector)
        except ValueError as e:
            raise api_error(400, "BadRequest", str(e)) from None

        def matches(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta.get("name") == name)
                and labels_match(meta.get("labels"), labels)
                and fields_match(obj, fields)
            )

        return matches

    def watch_count(self, res: kmock.resource, namespace: str | None = None) -> int:
        """How many watches of this resource (in this namespace; None: cluster-wide) are established now."""
        return self._watches[(res, namespace)]

    @property
    def resource_version(self) -> int:
        return self._rv

    # ----------------------------------------------------------------------------------------------------------
    # Writing (synchronous, called under the lock; watchers are notified afterwards).

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, res: kmock.resource, event_type: str, obj: dict[str, Any]) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self._log[res].append((rv, {"type": event_type, "object": copy.deepcopy(obj)}))

    def _admit_custom(self, res: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        crd = self._crds.get(res)
        if crd is None:
            return obj
        schema = crd["spec"]["versions"][0].get("schema", {}).get("openAPIV3Schema", {})
        obj = apply_defaults(schema, prune(schema, obj, root=True))
        if self.validate:
            _, errors = admit(obj, crd)
            if errors:
                kind = self.resources[res].kind
                name = obj.get("metadata", {}).get("name")
                message = f'{kind}.{res.group} "{name}" is invalid: ' + "; ".join(errors)
                raise api_error(422, "Invalid", message, name=name, kind=kind, group=res.group)
        return obj

    def _create(self, res: kmock.resource, namespace: str | None, body: Any) -> dict[str, Any]:
        info = self._info(res)
        if not isinstance(body, dict):
            raise api_error(400, "BadRequest", "the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.get("metadata")
        meta = obj["metadata"] = dict(meta) if isinstance(meta, dict) else {}
        if info.namespaced:
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise api_error(400, "BadRequest", "the namespace of the object must be given")
            if meta.get("namespace") not in (None, namespace):
                raise api_error(400, "BadRequest", "the namespace of the object does not match the URL")
            if self._live(res_of("v1", "namespaces"), None, namespace) is None:
                raise not_found(res_of("v1", "namespaces"), namespace)
            meta["namespace"] = namespace
        elif namespace is not None:
            raise not_found(res, meta.get("name"))
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise api_error(422, "Invalid", "metadata.name or metadata.generateName is required")
            while True:
                name = meta["generateName"] + uuid.uuid4().hex[:5]
                if self._live(res, meta.get("namespace"), name) is None:
                    break
            meta["name"] = name
        api_version = api_version_of(res)
        for field, expected in (("apiVersion", api_version), ("kind", info.kind)):
            if obj.get(field) not in (None, expected):
                raise api_error(400, "BadRequest", f"{field} {obj[field]!r} does not match {expected!r}")
        key = (res, meta.get("namespace"), meta["name"])
        if self._live(*key) is not None:
            raise api_error(409, "AlreadyExists", f'{res.plural} "{meta["name"]}" already exists', name=meta["name"])
        for field in (*SERVER_METADATA, "resourceVersion", "managedFields", "selfLink"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        obj = {"apiVersion": api_version, "kind": info.kind, **obj}
        if "status" in info.subresources:
            obj.pop("status", None)
        self._builtin_create_defaults(res, obj)
        obj = self._admit_custom(res, obj)
        if res == res_of("apiextensions.k8s.io/v1", "customresourcedefinitions"):
            self._register_crd(obj)
            names = obj.get("spec", {}).get("names", {})
            storage = [v["name"] for v in obj.get("spec", {}).get("versions", []) if v.get("storage")]
            conditions = [{"type": t, "status": "True", "reason": t} for t in ("NamesAccepted", "Established")]
            obj["status"] = {"acceptedNames": names, "storedVersions": storage, "conditions": conditions}
        obj["metadata"]["resourceVersion"] = self._next_rv()
        if key in self.objects:
            self.objects[key].create(obj)  # re-creation after deletion keeps the history
        else:
            self.objects[key] = obj
        self._emit(res, "ADDED", obj)
        self._collect_if_orphaned(res, obj)
        return copy.deepcopy(obj)

    def _collect_if_orphaned(self, res: kmock.resource, obj: dict[str, Any]) -> None:
        """An object created or updated with owners that are all gone is collected, as the real GC does."""
        refs = obj["metadata"].get("ownerReferences") or []
        if self.garbage_collection and refs:
            live_uids = {o.raw["metadata"]["uid"] for o in self.objects.values() if not o.deleted}
            if not any(ref.get("uid") in live_uids for ref in refs):
                self._delete(res, obj["metadata"].get("namespace"), obj["metadata"]["name"])

    def _builtin_create_defaults(self, res: kmock.resource, obj: dict[str, Any]) -> None:
        if res == res_of("v1", "pods"):
            obj["status"] = {"phase": "Pending"}
        elif res == res_of("v1", "namespaces"):
            obj["status"] = {"phase": "Active"}
        elif res == res_of("v1", "services"):
            spec = obj.setdefault("spec", {})
            if "clusterIP" not in spec and spec.get("type") != "ExternalName":
                self._service_ips += 1
                spec["clusterIP"] = f"10.96.{self._service_ips // 250}.{self._service_ips % 250 + 1}"

    def _store_update(self, res: kmock.resource, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """Apply the server's rules to a client's new version of an object, store it, emit, release, collect."""
        info = self._info(res)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise api_error(422, "Invalid", "metadata must be an object")
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        old_meta = old["metadata"]
        for field in (*SERVER_METADATA, "name", "namespace", "resourceVersion"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise api_error(
                    422, "Invalid", f"no new finalizers can be added if the object is being deleted: {added}"
                )
        new = self._admit_custom(res, new)
        if new == old:
            return old  # a no-op: no new resourceVersion, no watch event
        ignored = {"metadata", "status"} if "status" in info.subresources else {"metadata"}
        if {k: v for k, v in new.items() if k not in ignored} != {k: v for k, v in old.items() if k not in ignored}:
            meta["generation"] = int(old_meta.get("generation", 0)) + 1
        meta["resourceVersion"] = self._next_rv()
        self.objects[(res, meta.get("namespace"), meta["name"])].history.append(new)
        self._emit(res, "MODIFIED", new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(res, new)
        elif meta.get("ownerReferences") != old_meta.get("ownerReferences"):
            self._collect_if_orphaned(res, new)
        return copy.deepcopy(new)

    def _update(
        self,
        res: kmock.resource,
        namespace: str | None,
        name: str | None,
        subresource: str | None,
        body: Any,
        patch_type: str | None,
    ) -> dict[str, Any]:
        """PATCH (patch_type: json, merge, strategic) or PUT (patch_type None) of an object or its subresource."""
        info = self._info(res)
        old = self._current(res, namespace, name)
        if subresource == "scale" and "scale" in info.subresources:
            scale = self._scale_view(res, old)
            new_scale = self._apply(scale, body, patch_type)
            replicas = get_path(new_scale, "spec.replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise api_error(422, "Invalid", f"spec.replicas must be a non-negative integer, not {replicas!r}")
            new = copy.deepcopy(old)
            set_path(new, self._scale[res][0], replicas)
            return self._scale_view(res, self._store_update(res, old, new))
        if subresource not in (None, "status") or (subresource == "status" and "status" not in info.subresources):
            raise not_found(res, f"{name}/{subresource}")
        sent_rv = body.get("metadata", {}).get("resourceVersion") if isinstance(body, dict) else None
        if sent_rv is not None and str(sent_rv) != old["metadata"]["resourceVersion"]:
            raise api_error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {res.plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                name=name,
            )
        new = self._apply(old, body, patch_type)
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif "status" in info.subresources:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        return self._store_update(res, old, new)

    @staticmethod
    def _apply(old: dict[str, Any], body: Any, patch_type: str | None) -> dict[str, Any]:
        if patch_type == "json":
            if not isinstance(body, list):
                raise api_error(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                new = jsonpatch.apply_patch(copy.deepcopy(old), body)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                # A failed `test` op (kopf's optimistic concurrency on resourceVersion) is 422, as on a real server.
                message = f"the server rejected our request due to an error in our request: {e}"
                raise api_error(422, "Invalid", message) from None
        else:
            if not isinstance(body, dict):
                raise api_error(400, "BadRequest", "the body of the request must be a JSON object")
            if patch_type is None:
                new = copy.deepcopy(body)  # PUT: a full replacement
            else:
                new = merge_patch(old, _strip_directives(body) if patch_type == "strategic" else body)
        if not isinstance(new, dict):
            raise api_error(422, "Invalid", "the patched object is not a JSON object")
        return new

    def _scale_view(self, res: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        spec_path, status_path, selector_path = self._scale[res]
        meta = obj["metadata"]
        if selector_path:
            selector = get_path(obj, selector_path) or ""
        else:
            match_labels = get_path(obj, "spec.selector.matchLabels") or {}
            selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
            },
            "spec": {"replicas": get_path(obj, spec_path) or 0},
            "status": {"replicas": (get_path(obj, status_path) if status_path else 0) or 0, "selector": selector},
        }

    def _delete(self, res: kmock.resource, namespace: str | None, name: str | None, orphan: bool = False) -> Any:
        current = self._current(res, namespace, name)
        meta = current["metadata"]
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return current
            new = copy.deepcopy(current)
            new["metadata"].update(deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0)
            new["metadata"]["generation"] = int(meta.get("generation", 0)) + 1
            new["metadata"]["resourceVersion"] = self._next_rv()
            self.objects[(res, namespace, name)].history.append(new)
            self._emit(res, "MODIFIED", new)
            return copy.deepcopy(new)
        return self._remove(res, current, orphan=orphan)

    def _remove(self, res: kmock.resource, obj: dict[str, Any], orphan: bool = False) -> dict[str, Any]:
        meta = obj["metadata"]
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = self._next_rv()
        key = (res, meta.get("namespace"), meta["name"])
        self.objects[key].history.append(final)
        self.objects[key].delete()
        self._emit(res, "DELETED", final)
        if self.garbage_collection and not orphan:
            self._collect(res, final)
        return final

    def _collect(self, res: kmock.resource, gone: dict[str, Any]) -> None:
        """Background cascading deletion: dependents with no live owner left go; namespaces take their content."""
        live_uids = {obj.raw["metadata"]["uid"] for obj in self.objects.values() if not obj.deleted}
        gone_uid = gone["metadata"]["uid"]
        for (r, ns, name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            raw = obj.raw
            in_gone_namespace = res == res_of("v1", "namespaces") and ns == gone["metadata"]["name"]
            refs = raw["metadata"].get("ownerReferences") or []
            if not in_gone_namespace and not any(ref.get("uid") == gone_uid for ref in refs):
                continue
            remaining = [ref for ref in refs if ref.get("uid") != gone_uid]
            if not in_gone_namespace and any(ref.get("uid") in live_uids for ref in remaining):
                new = copy.deepcopy(raw)
                new["metadata"]["ownerReferences"] = remaining
                self._store_update(r, copy.deepcopy(raw), new)
            elif self._live(r, ns, name) is not None:  # may have gone in a nested collection
                self._delete(r, ns, name)

    # ----------------------------------------------------------------------------------------------------------
    # The asynchronous API: HTTP handlers and tests' helpers both come here.

    async def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _locked(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._lock:
            try:
                return fn(*args, **kwargs)
            finally:
                await self._notify()

    async def api_create(self, res: kmock.resource, namespace: str | None, body: Any) -> dict[str, Any]:
        return await self._locked(self._create, res, namespace, body)

    async def api_get(self, res: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        async with self._lock:
            return self._current(res, namespace, name)

    async def api_list(
        self,
        res: kmock.resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        async with self._lock:
            self._info(res)
            return self._select(res, namespace, None, label_selector, field_selector)

    async def api_patch(
        self,
        res: kmock.resource,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        patch_type: str | None = "merge",
    ) -> dict[str, Any]:
        return await self._locked(self._update, res, namespace, name, subresource, body, patch_type)

    async def api_delete(
        self, res: kmock.resource, namespace: str | None, name: str, orphan: bool = False
    ) -> dict[str, Any]:
        return await self._locked(self._delete, res, namespace, name, orphan)

    async def close_watches(self) -> None:
        """End every watch stream (before the server stops, so that it does not wait for them)."""
        self._closing = True
        await self._notify()

    # ----------------------------------------------------------------------------------------------------------
    # HTTP.

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # As kmock's RawHandler.__call__, but with our own request parsing (the namespaces routing fix).
        await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            if self.limit is not None and len(self._requests) >= self.limit:
                raise apps.KMockError("Too many requests have been served so far.")
            request = await self._parse_request(raw_request, len(self._requests))
            self._requests.append(request)
            try:
                return await self._handle(request)
            except rendering.StreamingError as e:
                raw_response = e.args[0]
                assert e.__cause__ is not None
                raise e.__cause__ from None
        except Exception as e:
            if not self._errors:
                raise
            self._errors[-1].append(e)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, raw_response)
            await raw_response.write_eof()
            return raw_response

    @staticmethod
    async def _parse_request(raw_request: aiohttp.web.BaseRequest, request_id: int) -> rendering.Request:
        body = await raw_request.read()
        text = body.decode("utf-8", errors="replace")
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        k8s = _parse_path(raw_request.path)
        resource = (
            None if k8s.group is None else kmock.resource(group=k8s.group, version=k8s.version, plural=k8s.plural)
        )
        query = dict(raw_request.query)
        return rendering.Request(
            id=request_id,
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=query,
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            body=body,
            text=text,
            data=data,
            action=parsing.guess_k8s(k8s, enums.method(raw_request.method), query),
            resource=resource,
            namespace=k8s.namespace,
            name=k8s.name,
            subresource=k8s.subresource,
        )

    @staticmethod
    def _patch_type(request: rendering.Request) -> str | None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if request.method != enums.method.PATCH:
            return None
        types = {
            "application/json-patch+json": "json",
            "application/merge-patch+json": "merge",
            "application/strategic-merge-patch+json": "strategic",
        }
        if content_type not in types:
            raise api_error(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
            )
        return types[content_type]

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or res.plural is None:
            return await apps.RawHandler._handle(self, request)  # discovery & non-k8s: kmock's reactions
        method, action = request.method, request.action
        if action == enums.action.CREATE:
            if request.subresource or request.name:
                raise api_error(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            self._results[request] = await self.api_create(res, request.namespace, request.data)
        elif action == enums.action.UPDATE:
            patch_type = self._patch_type(request)
            args = (res, request.namespace, request.name, request.subresource, request.data, patch_type)
            self._results[request] = await self._locked(self._update, *args)
        elif action == enums.action.DELETE:
            options = request.data if isinstance(request.data, dict) else {}
            orphan = (options.get("propagationPolicy") or request.params.get("propagationPolicy")) == "Orphan"
            self._results[request] = await self._locked(self._delete, res, request.namespace, request.name, orphan)
        elif method == enums.method.PUT and request.name:  # replace: not an action kmock knows
            args = (res, request.namespace, request.name, request.subresource, request.data, None)
            return aiohttp.web.json_response(await self._locked(self._update, *args))
        elif method == enums.method.DELETE and not request.name:  # deletecollection
            return aiohttp.web.json_response(await self._locked(self._delete_collection, request))
        try:
            response = await apps.RawHandler._handle(self, request)  # user reactions first, then our _serve_*
        finally:
            served = request in self._results and self._results.pop(request) is _SERVED
        if served and action == enums.action.CREATE and not response.prepared:
            response.set_status(201)  # clients (kubernetes' CustomObjectsApi) accept only 201 for a create
        return response

    def _delete_collection(self, request: rendering.Request) -> dict[str, Any]:
        res = request.resource
        assert res is not None
        info = self._info(res)
        params = request.params
        items = self._select(res, request.namespace, None, params.get("labelSelector"), params.get("fieldSelector"))
        deleted = [self._delete(res, o["metadata"].get("namespace"), o["metadata"]["name"]) for o in items]
        return {"apiVersion": api_version_of(res), "kind": f"{info.kind}List", "metadata": {}, "items": deleted}

    async def _serve_create(self, request: rendering.Request) -> Any:
        result, self._results[request] = self._results[request], _SERVED
        return result

    _serve_update = _serve_create
    _serve_delete = _serve_create

    async def _serve_version(self, request: rendering.Request) -> Any:
        result = await super()._serve_version(request)
        if isinstance(result, dict) and request.resource is not None and request.resource.group == "":
            result["groupVersion"] = request.resource.version  # kmock says "/v1"
        for entry in result.get("resources", []) if isinstance(result, dict) else []:
            if entry["name"].endswith("/scale"):
                entry.update(kind="Scale", group="autoscaling", version="v1")
        return result

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        assert request.resource is not None
        async with self._lock:
            info = self._info(request.resource)
            obj = self._current(request.resource, request.namespace, request.name)
            if request.subresource is None or (request.subresource == "status" and "status" in info.subresources):
                return obj
            if request.subresource == "scale" and "scale" in info.subresources:
                return self._scale_view(request.resource, obj)
            raise not_found(request.resource, f"{request.name}/{request.subresource}")

    async def _serve_list(self, request: rendering.Request) -> Any:
        res = request.resource
        assert res is not None
        async with self._lock:
            info = self._info(res)
            items = self._select(
                res, request.namespace, None, request.params.get("labelSelector"), request.params.get("fieldSelector")
            )
            return {
                "apiVersion": api_version_of(res),
                "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    async def _serve_watch(self, request: rendering.Request) -> Any:
        """Kubernetes watch semantics; the snapshot and the subscription happen atomically (no race)."""
        res = request.resource
        assert res is not None
        params = request.params
        info = self._info(res)
        matches = self._matcher(
            request.namespace, request.name, params.get("labelSelector"), params.get("fieldSelector")
        )
        since = params.get("resourceVersion") or "0"
        send_initial = params.get("sendInitialEvents") == "true"
        try:
            deadline = time.monotonic() + float(params["timeoutSeconds"]) if "timeoutSeconds" in params else None
            since_rv = int(since)
        except ValueError:
            raise api_error(400, "BadRequest", f"invalid watch parameters: {params}") from None
        stream = self._watch_stream(res, info, request.namespace, matches, since_rv, send_initial, deadline)
        return self._until_disconnected(stream, request._raw_request)

    @staticmethod
    async def _until_disconnected(stream: Any, raw_request: aiohttp.web.BaseRequest | None) -> Any:
        # aiohttp does not cancel a handler whose client went away; the stream checks it while idle instead.
        try:
            async for item in stream:
                if item is _IDLE:
                    if raw_request is not None and (
                        raw_request.transport is None or raw_request.transport.is_closing()
                    ):
                        return
                else:
                    yield item
        finally:
            await stream.aclose()

    async def _watch_stream(
        self,
        res: kmock.resource,
        info: kmock.ResourceInfo,
        namespace: str | None,
        matches: Callable[[dict[str, Any]], bool],
        since_rv: int,
        send_initial: bool,
        deadline: float | None,
    ) -> Any:
        log = self._log[res]
        initial: list[dict[str, Any]] = []
        # No await between the snapshot and taking the log position: nothing can slip in between.
        if since_rv and not send_initial:
            position = bisect.bisect_right([rv for rv, _ in log], since_rv)
        else:
            position = len(log)
            initial = [{"type": "ADDED", "object": o} for o in self._select(res, None) if matches(o)]
            if send_initial:
                bookmark = {
                    "apiVersion": api_version_of(res),
                    "kind": info.kind,
                    "metadata": {
                        "resourceVersion": str(self._rv),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                initial.append({"type": "BOOKMARK", "object": bookmark})
        key = (res, namespace)
        self._watches[key] += 1
        try:
            yield b""  # send the headers now: the client knows the watch is established
            for event in initial:
                yield event
            while not self._closing:
                changed = self._changed  # taken before looking at the log: a change after this sets it
                while position < len(log):
                    _, event = log[position]
                    position += 1
                    if matches(event["object"]):
                        yield event
                if not self._closing:
                    remaining = WATCH_IDLE_CHECK if deadline is None else deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), min(remaining, WATCH_IDLE_CHECK))
                yield _IDLE
        finally:
            self._watches[key] -= 1


# --------------------------------------------------------------------------------------------------------------
# Running it: a server thread, a kubeconfig, helpers for tests.


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | None = None,
    runner: Any = None,
) -> T:
    """Poll `predicate` until it returns something truthy and return that; raise AssertionError on timeout.

    Exceptions from the predicate count as "not yet" (the last one is chained to the timeout error). With a
    `runner` (a KopfRunner), fail at once, with the operator's output, if the operator has exited.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    result: Any = None
    while True:
        try:
            result = predicate()
            last_error = None
        except Exception as e:
            result, last_error = None, e
        if result:
            return result
        if runner is not None and runner.future.done():
            raise AssertionError(f"the operator exited while waiting for {message or predicate}: {runner.output}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or predicate}") from last_error
        time.sleep(interval)


def write_kubeconfig(path: Path, server: str, namespace: str = "default") -> Path:
    """A kubeconfig with one context: the server over plain HTTP, no authentication."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kube-emulator", "cluster": {"server": server}}],
        "users": [{"name": "kube-emulator", "user": {}}],
        "contexts": [
            {
                "name": "kube-emulator",
                "context": {"cluster": "kube-emulator", "user": "kube-emulator", "namespace": namespace},
            }
        ],
        "current-context": "kube-emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def fresh_registry() -> Any:
    """An empty kopf registry with kopf's default login handlers, as `kopf.get_default_registry()` makes it.

    A plain `kopf.OperatorRegistry()` has no login handlers, and kopf then finds no credentials at all.
    """
    import kopf

    try:
        from kopf._core.intents.registries import SmartOperatorRegistry  # what kopf's default registry is
    except ImportError:  # moved in a later kopf: the public way, nearly the same (not a mere fallback)
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(kopf.login_via_client)
        return registry
    return SmartOperatorRegistry()


class EmulatedCluster:
    """A `KubeEmulator` served on 127.0.0.1 (a free port) from a background thread, with synchronous helpers.

    Resources are named as `(api_version, plural)`: `kube.objects("v1", "pods", "default")`,
    `kube.get(*MACROINSTANCES, "m", "default")`. Objects come back as plain dicts (deep copies).
    Errors are raised as `kmock.KubernetesError` (`.status`, `.reason`, `.message`) as the API would answer.
    The helpers go through the same code as HTTP requests (stamped, validated, seen by watches). The emulator
    lives in its own thread and event loop: touch `cluster.emulator` only through `cluster.call(coroutine_fn)`.
    """

    def __init__(self, kubeconfig: Path, **emulator_options: Any) -> None:
        self.kubeconfig = kubeconfig
        self._options = emulator_options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="kube-emulator", daemon=True)
        self.emulator: KubeEmulator
        self.url = ""

    # Lifecycle.

    def start(self, timeout: float = 10.0) -> EmulatedCluster:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the Kubernetes emulator did not start")
        if self._error is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from self._error
        write_kubeconfig(self.kubeconfig, self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:
            self._error = e
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self.emulator = KubeEmulator(**self._options)
        async with self.emulator, kmock.Server(self.emulator, host="127.0.0.1") as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stopping.wait()
            await self.emulator.close_watches()
            await asyncio.sleep(0)

    def call(self, coro_fn: Callable[..., Any], *args: Any, timeout: float = 10.0, **kwargs: Any) -> Any:
        """Run `await coro_fn(*args, **kwargs)` in the emulator's loop and return its result."""
        assert self._loop is not None, "the cluster is not started"
        return asyncio.run_coroutine_threadsafe(coro_fn(*args, **kwargs), self._loop).result(timeout)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    # Objects.

    def create(
        self, api_version: str, plural: str, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        return self.call(self.emulator.api_create, res_of(api_version, plural), namespace, body)

    def get(self, api_version: str, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None if there is none."""
        try:
            return self.call(self.emulator.api_get, res_of(api_version, plural), namespace, name)
        except kmock.KubernetesError as e:
            if e.status == 404:
                return None
            raise

    def objects(
        self,
        api_version: str,
        plural: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """The live objects (all namespaces if namespace is None), sorted by namespace and name."""
        res = res_of(api_version, plural)
        return self.call(self.emulator.api_list, res, namespace, label_selector, field_selector)

    def patch(
        self,
        api_version: str,
        plural: str,
        name: str,
        patch: dict[str, Any] | list[dict[str, Any]],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        patch_type: str = "merge",
    ) -> dict[str, Any]:
        """patch_type: "merge" (RFC 7386), "json" (RFC 6902, a list of ops) or "strategic"."""
        res = res_of(api_version, plural)
        return self.call(
            self.emulator.api_patch, res, namespace, name, patch, subresource=subresource, patch_type=patch_type
        )

    def patch_status(
        self, api_version: str, plural: str, name: str, status: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """Merge-patch the status through the status subresource (what a controller or kubelet would do)."""
        return self.patch(api_version, plural, name, {"status": status}, namespace, subresource="status")

    def delete(self, api_version: str, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.call(self.emulator.api_delete, res_of(api_version, plural), namespace, name)

    def events(self, namespace: str | None = None, *, kind: str | None = None, name: str | None = None) -> list[dict]:
        """core/v1 Events (as kopf posts them) in the order they were posted, optionally only those about one kind
        and/or object name."""
        selectors = [f"involvedObject.kind={kind}"] if kind else []
        selectors += [f"involvedObject.name={name}"] if name else []
        events = self.objects("v1", "events", namespace, field_selector=",".join(selectors) or None)
        return sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def declare(self, api_version: str, plural: str, kind: str, **options: Any) -> None:
        """Serve one more resource kind (see KubeEmulator.declare)."""
        self.call(self._async(self.emulator.declare), api_version, plural, kind, **options)

    def requests(self) -> list[str]:
        """What the emulator was asked so far, as "METHOD /path?k=v&..." strings, unquoted (a snapshot)."""

        def line(r: rendering.Request) -> str:
            query = "&".join(f"{k}={v}" for k, v in r.params.items())
            return f"{r.method.value.upper()} {r.url.path}" + (f"?{query}" if query else "")

        async def snapshot() -> list[str]:
            return [line(r) for r in self.emulator._requests]

        return self.call(snapshot)

    @staticmethod
    def _async(fn: Callable[..., T]) -> Callable[..., Any]:
        async def run(*args: Any, **kwargs: Any) -> T:
            return fn(*args, **kwargs)

        return run

    # Waiting.

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, **kwargs: Any) -> T:
        return wait_for(predicate, timeout, **kwargs)

    def watch_count(self, api_version: str, plural: str, namespace: str | None = None) -> int:
        res = res_of(api_version, plural)
        return self.call(self._async(self.emulator.watch_count), res, namespace)

    def wait_for_watch(
        self, api_version: str, plural: str, namespace: str | None = None, timeout: float = 10.0, runner: Any = None
    ) -> None:
        """Wait until a client has a watch of this resource established (in namespace; None: cluster-wide)."""
        self.wait_for(
            lambda: self.watch_count(api_version, plural, namespace) > 0,
            timeout,
            message=f"a watch of {api_version}/{plural} in {namespace or 'all namespaces'}",
            runner=runner,
        )

    # The operator.

    @contextlib.contextmanager
    def operator(
        self,
        *paths: str | os.PathLike[str],
        namespace: str | None = "default",
        args: Iterable[str] = (),
        watched: Iterable[tuple[str, str]] = (MACROINSTANCES,),
        ready_timeout: float = 15.0,
        stop_timeout: float = 30.0,
    ) -> Iterator[Any]:
        """Run the kopf operator from `paths` in a KopfRunner (`kopf run --standalone --verbose`, one namespace or,
        with namespace=None, `--all-namespaces`) with a fresh registry and settings; yield the runner once its
        watches of `watched` resources are established. The operator's output is printed when it exits (pytest
        shows it for a failing test); check `runner.exit_code` / `runner.exception` after the block."""
        import kopf
        from kopf.testing import KopfRunner

        scope = ["--all-namespaces"] if namespace is None else ["--namespace", namespace]
        cli = ["run", "--standalone", "--verbose", *scope, *args, *map(str, paths)]
        previous_registry = kopf.get_default_registry()
        runner = KopfRunner(cli, registry=fresh_registry(), settings=kopf.OperatorSettings(), timeout=stop_timeout)
        try:
            with runner:
                for api_version, plural in watched:
                    self.wait_for_watch(api_version, plural, namespace, ready_timeout, runner=runner)
                yield runner
        finally:
            kopf.set_default_registry(previous_registry)
            if runner.future.done():
                print(f"---- kopf {' '.join(cli)} ----\n{runner.output}")


# --------------------------------------------------------------------------------------------------------------
# The pytest fixture: import `kube_fixture` into a test module (silence F401 there) and ask for `kube`.


@pytest.fixture(name="kube")
def kube_fixture(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmulatedCluster]:
    """A fresh emulated cluster per test; KUBECONFIG points at it, for kopf and for `kubernetes.config`.

    The `kubernetes` client reads KUBECONFIG only once, when first imported, into
    `kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION`: that is repointed too (and restored after), as
    is the client's global default Configuration that `load_kube_config()` overwrites.
    """
    kubeconfig = tmp_path_factory.mktemp("kube") / "kubeconfig"
    cluster = EmulatedCluster(kubeconfig).start()
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KOPF_RUN_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)
    try:
        import kubernetes.client
        import kubernetes.config.kube_config
    except ImportError:
        previous = None
    else:
        # The client reads KUBECONFIG once, at import, into a module constant: repoint it too.
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
        monkeypatch.setattr(kubernetes.config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
        previous = kubernetes.client.Configuration.get_default_copy()
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is not None:
            kubernetes.client.Configuration.set_default(previous)
