"""The gateway in front of two macro instances: forwards by headroom and survives a router going away."""

from __future__ import annotations

import contextlib

import httpx
import openai
import pytest
from procs import free_ports, macro_instance, running

pytestmark = pytest.mark.e2e


def test_gateway_spreads_requests_and_routes_around_a_dead_router():
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(macro_instance(1))
        b = stack.enter_context(macro_instance(1))
        port = free_ports(1)[0]
        gw_url = f"http://127.0.0.1:{port}"
        args = ["gateway", "--port", str(port), "--routers", f"{a['url']},{b['url']}", "--poll-interval", "0.2"]
        stack.enter_context(running(args, f"{gw_url}/ready"))
        c = openai.OpenAI(base_url=f"{gw_url}/v1", api_key="none", timeout=30, max_retries=0)
        assert c.models.list().data[0].id == "llama-2-7b"
        for _ in range(6):
            assert c.completions.create(model="llama-2-7b", prompt="a b", max_tokens=3).usage.completion_tokens == 3
        streamed = c.completions.create(model="llama-2-7b", prompt="a b", max_tokens=4, stream=True)
        assert sum(1 for ch in streamed if ch.choices and ch.choices[0].text) == 4
        metrics = httpx.get(f"{gw_url}/metrics", timeout=5).text
        counts = [line for line in metrics.splitlines() if line.startswith("ecoserve_gateway_requests_total")]
        assert len(counts) == 2, counts  # both routers got work
        bad = httpx.post(f"{gw_url}/v1/completions", json={"prompt": "x", "max_tokens": 0}, timeout=10)
        assert bad.status_code == 400 and "error" in bad.json()  # the router's answer, passed through
        a["router"].kill()
        a["router"].wait()
        for _ in range(4):
            assert c.completions.create(model="llama-2-7b", prompt="c", max_tokens=2).usage.completion_tokens == 2
