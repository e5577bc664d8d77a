"""The simulated worker's Prometheus metrics, under vLLM's own names so dashboards and the router read a
simulated and a real worker alike (plus `ecoserve:engine_phase`, which vLLM does not have)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ecoserve.brain.state import Phase

from .vllm_phase import PhaseGauge

TTFT_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
ITL_BUCKETS = (
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    1.0,
    2.5,
)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)


class WorkerMetrics:
    """One registry per worker (no global state), labelled with the served model name as vLLM does."""

    def __init__(self, model_name: str, block_size: int, num_gpu_blocks: int) -> None:
        self.registry = CollectorRegistry()
        r, labels = self.registry, ["model_name"]
        self.running = Gauge("vllm:num_requests_running", "Requests in model execution batches.", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be processed.", labels, registry=r)
        self.kv_usage = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, registry=r
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Inter-token latency.",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency.",
            labels,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generation tokens processed.", labels, registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Cumulative preemptions.", labels, registry=r)
        cache = Gauge(
            "vllm:cache_config_info",
            "Information of the KV cache config.",
            ["block_size", "num_gpu_blocks"],
            registry=r,
        )
        cache.labels(block_size=str(block_size), num_gpu_blocks=str(num_gpu_blocks)).set(1)
        self.phase = PhaseGauge(r)
        self.model = model_name
        self.set_phase(Phase.IDLE)

    def set_phase(self, phase: Phase) -> None:
        self.phase.set(phase)
