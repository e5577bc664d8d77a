"""The real-cluster suite: install the chart, apply the sim-engine example, send requests through the gateway's
Service, scale, delete. Runs only against a real cluster (tests/e2e/run.sh makes a kind one):
ECOSERVE_E2E_KUBECONFIG=PATH pytest -m cluster. Skipped otherwise: no cluster can run on the CI machines."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KUBECONFIG = os.environ.get("ECOSERVE_E2E_KUBECONFIG")
KUBECTL = ROOT / ".tools" / "kubectl" / "kubectl"
HELM = ROOT / ".tools" / "helm" / "helm"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not KUBECONFIG, reason="no real cluster: set ECOSERVE_E2E_KUBECONFIG (tests/e2e/run.sh)"),
]


def run(tool: Path, *args: str, check: bool = True) -> str:
    env = os.environ | {"KUBECONFIG": KUBECONFIG or ""}
    out = subprocess.run([str(tool), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{tool.name} {' '.join(args)}: {out.stderr}")
    return out.stdout


def wait(what: str, predicate, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError, ValueError, KeyError):
            value = predicate()
            if value:
                return value
        time.sleep(3)
    raise AssertionError(f"timed out waiting for {what}")


def macro_status(name: str) -> dict:
    return json.loads(run(KUBECTL, "get", "mi", name, "-o", "json")).get("status") or {}


@pytest.fixture(scope="module")
def installed() -> Iterator[None]:
    run(HELM, "upgrade", "--install", "ecoserve", str(ROOT / "charts" / "ecoserve"), "--namespace",
        "ecoserve-system", "--create-namespace", "--set", "images.pullPolicy=IfNotPresent", "--wait")  # fmt: skip
    yield
    run(KUBECTL, "delete", "-f", str(ROOT / "manifests" / "examples" / "sim.yaml"), "--ignore-not-found", check=False)
    run(HELM, "uninstall", "ecoserve", "--namespace", "ecoserve-system", check=False)


@contextlib.contextmanager
def port_forward(service: str) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"KUBECONFIG": KUBECONFIG or ""}
    proc = subprocess.Popen([str(KUBECTL), "port-forward", f"svc/{service}", f"{port}:8000"], env=env)
    try:
        time.sleep(3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()


def test_sim_macro_instance_serves_scales_and_cleans_up(installed):
    from openai import OpenAI

    run(KUBECTL, "apply", "-f", str(ROOT / "manifests" / "examples" / "sim.yaml"))
    status = wait("4 ready workers", lambda: (s := macro_status("demo")).get("readyInstances") == 4 and s)
    assert status["phase"] == "Running" and status["routerEndpoint"].startswith("http://demo-router.")
    run(KUBECTL, "rollout", "status", "deployment/demo-gateway", "--timeout=180s")
    with port_forward("demo-gateway") as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none")
        for _ in range(5):
            out = client.completions.create(model="llama-2-7b", prompt="hello", max_tokens=8)
            assert out.usage.completion_tokens == 8
    run(KUBECTL, "scale", "mi/demo", "--replicas=2")
    wait("scale-down to 2", lambda: macro_status("demo").get("instances") == 2)
    workers = "ecoserve.io/macroinstance=demo,ecoserve.io/role=worker"
    wait("drained pods deleted", lambda: len(run(KUBECTL, "get", "pods", "-l", workers, "-o", "name").split()) == 2)
    run(KUBECTL, "delete", "mi", "demo", "--wait=true")
    wait(
        "children garbage-collected",
        lambda: not run(KUBECTL, "get", "pods,deploy,svc", "-l", "ecoserve.io/group=demo", "-o", "name").strip(),
    )
