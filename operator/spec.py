"""The MacroInstance spec as the operator reads it: one pydantic model whose defaults equal the CRD's
(tests/test_operator_spec.py checks that), so a CR created before a default existed reads the same."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ecoserve.brain.hardware import MODELS
from ecoserve.brain.mitosis import Sizing


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class SloSpec(_Spec):
    ttft_ms: int = Field(5000, ge=1)
    tpot_ms: int = Field(100, ge=1)
    attainment: float = Field(0.9, gt=0, le=1)


class EngineSpec(_Spec):
    kind: Literal["vllm", "sim"] = "sim"
    image: str | None = None
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu: str = "h100"
    cost_model: str | None = None
    args: tuple[str, ...] = ()
    resources: dict[str, Any] | None = None


class SchedulerSpec(_Spec):
    slack_aggregate: Literal["quantile", "mean", "max"] = "quantile"
    kv_reservation: Literal["prompt+output", "prompt"] = "prompt+output"
    queue_limit: int = Field(1024, ge=0)
    max_batched_tokens: int = Field(8192, ge=1)


class AutoscalingSpec(_Spec):
    enabled: bool = False
    interval_seconds: int = Field(30, ge=1)
    cooldown_seconds: int = Field(120, ge=0)
    max_total_instances: int | None = None
    sizing: Sizing = Sizing.CAPACITY
    max_grow_step: int = Field(4, ge=1, le=64)


class RouterSpec(_Spec):
    image: str | None = None
    replicas: int = Field(1, ge=1, le=1)
    resources: dict[str, Any] | None = None


class IngressSpec(_Spec):
    enabled: bool = False
    host: str | None = None
    class_name: str | None = None


class PodTemplateSpec(_Spec):
    node_selector: dict[str, str] | None = None
    tolerations: tuple[dict[str, Any], ...] = ()
    volumes: tuple[dict[str, Any], ...] = ()
    volume_mounts: tuple[dict[str, Any], ...] = ()
    env: tuple[dict[str, Any], ...] = ()


class MacroInstanceSpec(_Spec):
    model: str = Field(min_length=1)
    served_model_name: str | None = None
    group: str
    instances: int = Field(1, ge=1)
    min_instances: int = Field(1, ge=1)
    max_instances: int = Field(8, ge=1)
    drain_timeout_seconds: int = Field(120, ge=0)
    slo: SloSpec = SloSpec()
    engine: EngineSpec = EngineSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    router: RouterSpec = RouterSpec()
    ingress: IngressSpec = IngressSpec()
    pod_template: PodTemplateSpec = PodTemplateSpec()

    @property
    def api_model_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def gpus_per_instance(self) -> int:
        return self.engine.tensor_parallel_size * self.engine.pipeline_parallel_size

    def cost_model_preset(self) -> str:
        """The model shape the router's cost model prices: engine.costModel, else the model when it names a
        preset (sim engines) or a Hugging Face id whose last part does (meta-llama/Llama-2-70b-hf)."""
        if self.engine.cost_model:
            return self.engine.cost_model
        base = self.model.rsplit("/", 1)[-1].lower()
        for candidate in (base, re.sub(r"(-chat|-instruct)?(-hf)?$", "", base)):
            if candidate in MODELS:
                return candidate
        raise ValueError(
            f"spec.engine.costModel is needed: {self.model!r} names no model preset ({', '.join(sorted(MODELS))})"
        )
