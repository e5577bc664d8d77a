"""The router's Prometheus metrics: outcomes, latency, SLO attainment, goodput, queue, instance phases."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ecoserve.brain.state import Phase

if TYPE_CHECKING:
    from .core import Router

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "ecoserve_router_requests",
            "Requests by outcome (ok, rejected, invalid, timeout, error, aborted).",
            ["outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "ecoserve_router_routing_decisions",
            "Routing decisions by outcome and reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "ecoserve_router_ttft_seconds", "Time to first token.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "ecoserve_router_tpot_seconds", "Time per output token.", buckets=TPOT_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("ecoserve_router_queue_depth", "Requests held for want of an instance.", registry=r)
        self.slo_attainment = Gauge(
            "ecoserve_router_slo_attainment", "Share of requests meeting TTFT and TPOT SLOs (window).", registry=r
        )
        self.ttft_attainment = Gauge(
            "ecoserve_router_ttft_attainment", "Share of requests meeting the TTFT SLO (window).", registry=r
        )
        self.goodput = Gauge("ecoserve_router_goodput", "Requests per second meeting both SLOs (window).", registry=r)
        self.window_requests = Gauge(
            "ecoserve_router_window_requests", "Requests finished or failed in the window.", registry=r
        )
        self.window_rejected = Gauge(
            "ecoserve_router_window_rejected", "Requests turned away (queue full) in the window.", registry=r
        )
        self.window_arrived = Gauge(
            "ecoserve_router_window_arrived",
            "Requests that arrived in the window (rejected ones included): demand, against window_requests.",
            registry=r,
        )
        self.ttft_mean = Gauge(
            "ecoserve_router_ttft_mean_seconds", "Mean TTFT in the window (compare with the TTFT SLO).", registry=r
        )
        self.saved_tpot = Gauge(
            "ecoserve_router_saved_tpot_median_seconds",
            "Median saved TPOT of the decoding requests: slack the mitosis planner shrinks on.",
            registry=r,
        )
        self.decoding = Gauge("ecoserve_router_decoding_requests", "Requests past their first token.", registry=r)
        self.phase = Gauge(
            "ecoserve_router_instance_phase", "1 for each instance's phase.", ["instance", "phase"], registry=r
        )
        self.active = Gauge(
            "ecoserve_router_instance_active", "1 for the instance taking prefills.", ["instance"], registry=r
        )
        self.kv_free = Gauge(
            "ecoserve_router_instance_kv_free_blocks",
            "KV blocks the router can still promise.",
            ["instance"],
            registry=r,
        )

    def observe_instances(self, router: Router) -> None:
        """Refresh the gauges that describe the macro instance as a whole."""
        now = router.clock()
        stats = router.book.window.stats(now)
        self.slo_attainment.set(stats.slo_attainment if stats.slo_attainment is not None else 1.0)
        self.ttft_attainment.set(stats.ttft_attainment if stats.ttft_attainment is not None else 1.0)
        self.goodput.set(stats.goodput)
        observed = router.book.observe("", now)
        self.window_requests.set(observed.requests)
        self.window_rejected.set(observed.rejected)
        self.window_arrived.set(observed.arrived or 0)
        self.ttft_mean.set(observed.ttft_mean or 0.0)
        self.saved_tpot.set(observed.saved_tpot or 0.0)
        self.decoding.set(len(router.book.saved_tpots(now)))
        mode = router.book.scheduler.settings.kv_reservation
        for k, inst in enumerate(router.state.instances):
            worker = router.workers[inst.id]
            for p in Phase:
                self.phase.labels(inst.id, p.value).set(1 if p is worker.phase else 0)
            self.active.labels(inst.id).set(1 if k == router.state.active else 0)
            self.kv_free.labels(inst.id).set(inst.free_blocks(mode))
