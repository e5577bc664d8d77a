"""The operator's Prometheus metrics (the Grafana dashboard's operator panels read these)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILES = Counter("ecoserve_operator_reconciles", "Reconcile passes by outcome (ok, error).", ["result"])
RECONCILE_SECONDS = Histogram("ecoserve_operator_reconcile_seconds", "Duration of a reconcile pass.")
POD_ACTIONS = Counter(
    "ecoserve_operator_worker_pod_actions",
    "Worker pod actions (created, drained, undrained, deleted, moved).",
    ["action"],
)
SCALING_ACTIONS = Counter(
    "ecoserve_operator_scaling_actions", "Mitosis steps carried out (grow, shrink, split, merge).", ["action"]
)
