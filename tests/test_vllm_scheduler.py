"""The temporal scheduler inside vLLM's real V1 scheduler, driven on a CPU with fake model-runner outputs."""

from __future__ import annotations

import json
from collections import Counter, deque

import pytest

pytestmark = pytest.mark.vllm

torch = pytest.importorskip("torch", reason="the vllm extra is not installed: pip install -e '.[vllm,dev]'")
from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from ecoserve.brain.state import Phase  # noqa: E402
from ecoserve.worker.vllm_scheduler import TemporalAsyncScheduler, TemporalScheduler, needs_prefill  # noqa: E402

TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 4096,
    "torch_dtype": "float32",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    (path / "config.json").write_text(json.dumps(TINY))
    return path


def scheduler(model_dir, cls, blocks=256, budget=256, seqs=16):
    model = ModelConfig(model=str(model_dir), skip_tokenizer_init=True, max_model_len=4096, dtype="float32")
    sched = SchedulerConfig(
        max_num_seqs=seqs, max_num_batched_tokens=budget, max_model_len=4096, is_encoder_decoder=False
    )
    cache = CacheConfig(block_size=16, enable_prefix_caching=False)
    cache.num_gpu_blocks = blocks
    config = VllmConfig(
        model_config=model, scheduler_config=sched, cache_config=cache, device_config=DeviceConfig("cpu")
    )
    spec = FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=16, dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
    outputs = StructuredOutputManager(config)
    return cls(vllm_config=config, kv_cache_config=kv, structured_output_manager=outputs, block_size=16, log_stats=True)


def request(rid: str, prompt: int, out: int) -> Request:
    params = SamplingParams(max_tokens=out, ignore_eos=True)
    return Request(rid, list(range(1, prompt + 1)), params, None, arrival_time=0.0)


class Driver:
    """An engine loop around the scheduler: schedule, fake the model runner, feed the output back. With
    `depth=2` the next step is scheduled before the previous one's output arrives, as async scheduling does."""

    def __init__(self, sched, depth: int) -> None:
        self.s, self.depth = sched, depth
        self.inflight: deque = deque()
        self.steps: list[tuple[set[bool], Phase, frozenset[str]]] = []
        self.tokens: Counter[str] = Counter()
        self.finished: set[str] = set()
        self.preempted = 0

    def step(self) -> None:
        kinds = {rid: needs_prefill(r) for rid, r in self.s.requests.items()}
        decoding_before = {rid for rid, k in kinds.items() if not k and rid in {r.request_id for r in self.s.running}}
        out = self.s.schedule()
        ids = list(out.num_scheduled_tokens)
        self.preempted += len(out.preempted_req_ids)
        if ids:
            self.steps.append(({kinds[rid] for rid in ids}, self.s.phase, frozenset(decoding_before)))
        sampling = [rid for rid in ids if not self.s.requests[rid].is_prefill_chunk]
        self.inflight.append((out, ids, sampling))
        while len(self.inflight) >= self.depth or (self.inflight and not ids):
            self._complete(*self.inflight.popleft())

    def _complete(self, out, ids, sampling) -> None:
        sampled = [[7] if rid in sampling else [] for rid in ids]
        runner = ModelRunnerOutput(
            req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled
        )
        for outputs in self.s.update_from_output(out, runner).values():
            for o in outputs.outputs:
                self.tokens[o.request_id] += len(o.new_token_ids)
                if o.finish_reason is not None:
                    self.finished.add(o.request_id)

    def run(self, limit: int = 2000) -> None:
        for _ in range(limit):
            if not self.s.has_requests() and not self.inflight:
                return
            self.step()
        raise AssertionError("requests did not finish")


SCHEDULERS = [pytest.param(TemporalScheduler, 1, id="sync"), pytest.param(TemporalAsyncScheduler, 2, id="async")]


@pytest.mark.parametrize(("cls", "depth"), SCHEDULERS)
def test_no_step_mixes_prefill_and_decode_and_all_finish(model_dir, cls, depth):
    d = Driver(scheduler(model_dir, cls), depth)
    for k in range(3):
        d.s.add_request(request(f"a{k}", 100, 20))
    for _ in range(5):
        d.step()
    for k in range(3):
        d.s.add_request(request(f"b{k}", 60 + 10 * k, 12))
    d.run()
    assert all(len(kinds) == 1 for kinds, _, _ in d.steps), [k for k, _, _ in d.steps]
    assert {tuple(k) == (True,) for k, _, _ in d.steps} == {True, False}  # both kinds of step happened
    assert d.finished == {f"a{k}" for k in range(3)} | {f"b{k}" for k in range(3)}
    assert all(d.tokens[f"a{k}"] == 20 and d.tokens[f"b{k}"] == 12 for k in range(3))


@pytest.mark.parametrize(("cls", "depth"), SCHEDULERS)
def test_decodes_wait_while_prompts_are_pending_and_the_phase_follows_the_steps(model_dir, cls, depth):
    d = Driver(scheduler(model_dir, cls, budget=128), depth)
    d.s.add_request(request("a", 50, 40))
    for _ in range(4):
        d.step()
    d.s.add_request(request("long", 600, 3))  # five prefill chunks of <=128 tokens
    d.run()
    for kinds, phase, _ in d.steps:
        assert phase is (Phase.PREFILL if kinds == {True} else Phase.DECODE)
    prefill_run = [i for i, (kinds, _, _) in enumerate(d.steps) if kinds == {True}][1:]  # the long prompt's chunks
    assert len(prefill_run) >= 5 and prefill_run == list(range(prefill_run[0], prefill_run[0] + len(prefill_run)))
    assert d.s.phase_steps[Phase.PREFILL] >= 6 and d.s.phase_steps[Phase.DECODE] > 0
    assert d.tokens["a"] == 40 and d.tokens["long"] == 3


@pytest.mark.parametrize(("cls", "depth"), SCHEDULERS)
def test_preemption_under_kv_pressure_recovers(model_dir, cls, depth):
    d = Driver(scheduler(model_dir, cls, blocks=24), depth)  # 384 tokens of KV for 4 × (64 + 80)
    for k in range(4):
        d.s.add_request(request(f"r{k}", 64, 80))
    d.run()
    assert d.preempted > 0
    assert all(len(kinds) == 1 for kinds, _, _ in d.steps)
    assert d.finished == {f"r{k}" for k in range(4)} and all(d.tokens[f"r{k}"] == 80 for k in range(4))


def test_phase_gauge_reaches_a_multiprocess_metrics_endpoint(tmp_path):
    """The scheduler runs in vLLM's engine process; its gauge must reach the API server's /metrics, which
    collects PROMETHEUS_MULTIPROC_DIR. Write it from another process, read it as vLLM's endpoint would, and
    parse it as the router does."""
    import os
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from ecoserve.router.upstream import parse_worker_metrics

    code = "from ecoserve.worker.vllm_phase import PhaseGauge; from ecoserve.brain.state import Phase; "
    code += "PhaseGauge().set(Phase.PREFILL)"
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert 'ecoserve:engine_phase{phase="prefill"} 1.0' in text
    cache_info = 'vllm:cache_config_info{block_size="16",num_gpu_blocks="64"} 1.0\n'
    assert parse_worker_metrics(text + cache_info).phase is Phase.PREFILL
