"""The shared harness of the operator's emulator tests: the real operator (`ecoserve.operator.handlers` under
kopf's KopfRunner) on kmock's Kubernetes emulator, and helpers to read what it made."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kube_emulator import MACROINSTANCES, EmulatedCluster

from ecoserve.operator.labels import DRAINING, MACRO_INSTANCE, ROLE

NS = "default"
WORKERS = f"{ROLE}=worker"
TIMEOUT = 30.0  # generous: kopf retries a failed pass after 5 s, and CI machines are shared


def macro(name: str = "demo", group: str = "demo", **spec) -> dict:
    body = {"model": "llama-2-7b", "group": group, "instances": 2, "drainTimeoutSeconds": 30} | spec
    return {"apiVersion": "ecoserve.io/v1alpha1", "kind": "MacroInstance", "metadata": {"name": name}, "spec": body}


@pytest.fixture(name="operator")
def operator_fixture(kube: EmulatedCluster, monkeypatch: pytest.MonkeyPatch):
    """Start the operator (as many times as a test likes, each a fresh import of the handlers)."""
    monkeypatch.setenv("ECOSERVE_OPERATOR_RESYNC_SECONDS", "1")

    @contextmanager
    def run() -> Iterator[object]:
        sys.modules.pop("ecoserve.operator.handlers", None)  # register into this run's fresh kopf registry
        with kube.operator(namespace=NS, args=["-m", "ecoserve.operator.handlers"]) as runner:
            kube.wait_for_watch("v1", "pods", NS, runner=runner)
            yield runner
        assert runner.exception is None and runner.exit_code == 0, runner.output

    return run


def workers(kube: EmulatedCluster, mi: str | None = None, *, serving: bool = False) -> list[dict]:
    selector = WORKERS + (f",{MACRO_INSTANCE}={mi}" if mi else "") + (f",{DRAINING}!=true" if serving else "")
    return [
        p for p in kube.objects("v1", "pods", NS, label_selector=selector) if not p["metadata"].get("deletionTimestamp")
    ]


def status(kube: EmulatedCluster, name: str = "demo") -> dict:
    return (kube.get(*MACROINSTANCES, name, NS) or {}).get("status") or {}


def make_ready(kube: EmulatedCluster, pods: list[dict]) -> None:
    """What the kubelet would report once the worker's /health answers."""
    for pod in pods:
        ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        kube.patch_status("v1", "pods", pod["metadata"]["name"], ready, NS)


def settle(kube: EmulatedCluster, runner, check) -> None:
    kube.wait_for(check, TIMEOUT, runner=runner)
