"""A thin, kind-agnostic REST layer over the official `kubernetes` client: create, read, list, patch and delete
any namespaced object from its manifest, returning plain dicts. The operator applies the builders' manifests
through it; auth and TLS come from the client's configuration (in-cluster, or the kubeconfig)."""

from __future__ import annotations

import json
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

Manifest = dict[str, Any]

PLURALS = {
    "Pod": "pods",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Deployment": "deployments",
    "Ingress": "ingresses",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "MacroInstance": "macroinstances",
}
MERGE_PATCH = "application/merge-patch+json"


def load_config() -> None:
    """In a pod, the service account; elsewhere the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{PLURALS[kind]}"


class Kube:
    def __init__(self, client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = client or kubernetes.client.ApiClient()

    def _call(self, method: str, path: str, body: Any = None, query: list | None = None, patch: bool = False) -> Any:
        headers = {"Accept": "application/json", "Content-Type": MERGE_PATCH if patch else "application/json"}
        method, url, headers, body, post = self.client.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self.client.call_api(method, url, headers, body, post)
        raw = response.read()
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=response.reason, body=raw.decode(errors="replace"))
        return json.loads(raw) if raw else None

    def create(self, manifest: Manifest) -> Manifest:
        meta = manifest["metadata"]
        return self._call(
            "POST", collection_path(manifest["apiVersion"], manifest["kind"], meta["namespace"]), manifest
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        try:
            return self._call("GET", f"{collection_path(api_version, kind, namespace)}/{name}")
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, selector: str | None = None) -> list[Manifest]:
        query = [("labelSelector", selector)] if selector else []
        result = self._call("GET", collection_path(api_version, kind, namespace), query=query)
        return list((result or {}).get("items") or [])

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Manifest, subresource: str = ""
    ) -> Manifest:
        path = f"{collection_path(api_version, kind, namespace)}/{name}" + (f"/{subresource}" if subresource else "")
        return self._call("PATCH", path, patch, patch=True)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete; an object already gone is not an error."""
        try:
            self._call("DELETE", f"{collection_path(api_version, kind, namespace)}/{name}")
        except ApiException as err:
            if err.status != 404:
                raise
