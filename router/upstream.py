"""Reading workers: their Prometheus metrics (KV size and usage, phase) and their SSE streams."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ecoserve.api.protocol import PHASE_METRIC
from ecoserve.brain.state import Phase


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker's /metrics says: its KV cache size and use, the phase of its last step, and how many
    requests it holds (running + waiting; a draining worker is idle at 0)."""

    num_gpu_blocks: int
    block_size: int
    kv_usage: float
    phase: Phase
    requests: int = 0

    @property
    def used_blocks(self) -> int:
        return round(self.kv_usage * self.num_gpu_blocks)


def parse_worker_metrics(text: str) -> WorkerInfo | None:
    """vLLM's `vllm:cache_config_info` and `vllm:kv_cache_usage_perc` (and our `ecoserve:engine_phase`)."""
    blocks = block_size = None
    usage = 0.0
    phase = Phase.IDLE
    requests = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:cache_config_info":
                blocks = int(sample.labels["num_gpu_blocks"])
                block_size = int(sample.labels["block_size"])
            elif sample.name == "vllm:kv_cache_usage_perc":
                usage = max(usage, float(sample.value))
            elif sample.name == PHASE_METRIC and sample.value == 1:
                phase = Phase(sample.labels["phase"])
            elif sample.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                requests += sample.value
    if blocks is None or block_size is None:
        return None
    return WorkerInfo(blocks, block_size, usage, phase, round(requests))


async def probe_worker(client: httpx.AsyncClient, url: str, timeout: float = 2.0) -> WorkerInfo | None:
    """The worker's state if it is healthy and its metrics say how big its KV cache is; None otherwise."""
    try:
        health = await client.get(f"{url}/health", timeout=timeout)
        if health.status_code != 200:
            return None
        metrics = await client.get(f"{url}/metrics", timeout=timeout)
        return parse_worker_metrics(metrics.text) if metrics.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def parse_sse_line(line: str) -> dict[str, Any] | str | None:
    """A `data:` line's JSON object, or "[DONE]", or None for blank lines and comments."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return payload
    return json.loads(payload)


async def served_model(client: httpx.AsyncClient, url: str, timeout: float = 2.0) -> str | None:
    """The first model a worker's /v1/models lists (the name clients omit at their peril)."""
    try:
        resp = await client.get(f"{url}/v1/models", timeout=timeout)
        return str(resp.json()["data"][0]["id"]) if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return None
