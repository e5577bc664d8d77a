"""What connects `ecoserve worker --engine vllm` to the scheduler vLLM instantiates in its engine process:
the environment variables that configure it (vLLM passes no arguments of ours to a custom scheduler class),
and the phase gauge it exports.

vLLM's API server and engine core are separate processes. The gauge is written in prometheus_client's
multiprocess mode into PROMETHEUS_MULTIPROC_DIR, which the worker command sets, and vLLM's /metrics then
serves it beside its own metrics (it collects that directory whenever the variable is set). The router reads
it under the same name the simulated worker uses.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from ecoserve.api.protocol import PHASE_METRIC
from ecoserve.brain.state import Phase

PHASE_MODE_ENV = "ECOSERVE_PHASE_MODE"  # prefill-priority (behind a router) or tdpipe (standalone)
GPU_ENV = "ECOSERVE_GPU"  # GPU preset that prices TD-Pipe's step-time comparisons


class PhaseGauge:
    """1 for the phase of the engine's last step, 0 for the others."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The vLLM scheduler registers it nowhere: in multiprocess mode the values go to files, and several
        # schedulers in one process (tests) must not collide in a registry. The simulated worker passes its own.
        self.gauge = Gauge(
            PHASE_METRIC, "1 for the phase the engine's last step ran in.", ["phase"], registry=registry,
            multiprocess_mode="livemostrecent",
        )  # fmt: skip

    def set(self, phase: Phase) -> None:
        for p in Phase:
            self.gauge.labels(phase=p.value).set(1 if p is phase else 0)
