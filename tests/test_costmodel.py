"""The analytical cost model, its hardware presets, the measured prefill table and KV capacity."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecoserve.brain.costmodel import (
    DEFAULT_EFFICIENCY,
    CostModel,
    Efficiency,
    LayerSample,
    MeasuredPrefillTable,
    fit_efficiency,
    load_prefill_table,
)
from ecoserve.brain.hardware import (
    GPUS,
    INTERCONNECTS,
    MODELS,
    ModelShape,
    gpu_preset,
    interconnect_preset,
    model_preset,
)
from ecoserve.brain.kv import DEFAULT_ACTIVATION_RESERVE_BYTES, kv_capacity_blocks
from ecoserve.brain.steptime import BatchShape, PrefillChunk, decode_time, prefill_time

LLAMA_2_7B_CONFIG = {
    "_name_or_path": "meta-llama/Llama-2-7b-hf",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "torch_dtype": "float16",
    "vocab_size": 32000,
}

# --- hardware presets and Hugging Face configs ---


def test_hf_config_gives_the_preset_shape() -> None:
    shape = ModelShape.from_hf_config(LLAMA_2_7B_CONFIG)
    assert shape.name == "meta-llama/Llama-2-7b-hf"
    assert replace(shape, name="llama-2-7b") == model_preset("llama-2-7b")
    assert shape.head_dim == 128
    assert shape.param_count == 6_738_415_616  # Llama-2-7B's published parameter count
    assert shape.weight_bytes == 2 * 6_738_415_616
    assert shape.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2


def test_hf_config_without_kv_heads_means_multi_head_attention() -> None:
    config = {k: v for k, v in LLAMA_2_7B_CONFIG.items() if k != "num_key_value_heads"}
    assert ModelShape.from_hf_config(config).num_kv_heads == 32


def test_hf_config_missing_key_is_named() -> None:
    config = {k: v for k, v in LLAMA_2_7B_CONFIG.items() if k != "intermediate_size"}
    with pytest.raises(ValueError, match="intermediate_size"):
        ModelShape.from_hf_config(config)


def test_hf_config_file_and_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "CodeLlama-34b-hf"
    model_dir.mkdir()
    config = {
        **LLAMA_2_7B_CONFIG,
        "hidden_size": 8192,
        "intermediate_size": 22016,
        "num_attention_heads": 64,
        "num_hidden_layers": 48,
        "num_key_value_heads": 8,
    }
    del config["_name_or_path"]
    (model_dir / "config.json").write_text(json.dumps(config))
    from_dir = ModelShape.from_hf_config_file(model_dir)
    assert from_dir == ModelShape.from_hf_config_file(model_dir / "config.json")
    assert from_dir.name == "CodeLlama-34b-hf"
    assert replace(from_dir, name="codellama-34b") == model_preset("codellama-34b")


def test_gqa_kv_bytes() -> None:
    assert model_preset("llama-2-70b").kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert model_preset("qwen2-72b").kv_bytes_per_token == 2 * 80 * 8 * 128 * 2


def test_presets_hold_the_required_names() -> None:
    assert {"h100", "h200", "a100", "a800", "l20"} <= set(GPUS)
    assert {"llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-30b", "codellama-34b", "qwen2-72b"} <= set(MODELS)
    assert {"nvlink", "pcie4", "pcie5", "eth10", "eth25", "eth100", "ib400"} <= set(INTERCONNECTS)
    assert gpu_preset("H100").peak_flops == pytest.approx(989.4e12)
    assert gpu_preset("l20").mem_bandwidth == pytest.approx(864e9)
    assert interconnect_preset("eth10").bandwidth == pytest.approx(1.25e9)
    assert interconnect_preset("ib400").bandwidth == pytest.approx(50e9)
    llama30 = model_preset("llama-30b")
    assert 32e9 < llama30.param_count < 33e9  # "30B" is LLaMA-1's 32.5B model


@pytest.mark.parametrize("lookup", [model_preset, gpu_preset, interconnect_preset])
def test_unknown_preset_lists_the_known_ones(lookup) -> None:
    with pytest.raises(KeyError, match="known: "):
        lookup("no-such-thing")
    with pytest.raises(ValueError):
        lookup("no-such-thing")


def test_shape_rejects_impossible_head_layout() -> None:
    with pytest.raises(ValueError, match="KV heads"):
        ModelShape("bad", 2, 4096, 32, 5, 11008, 32000)


# --- the analytical model ---

H100 = gpu_preset("h100")
LLAMA_7B = model_preset("llama-2-7b")
LLAMA_70B = model_preset("llama-2-70b")


def test_empty_batch_is_free() -> None:
    assert CostModel(LLAMA_7B, H100).step_time(BatchShape()) == 0.0
    assert CostModel(LLAMA_7B, H100).layer_linear_time(0) == 0.0


def test_decode_and_prefill_are_in_the_known_range() -> None:
    """Llama-2-7B on one H100 decodes at ~6-7 ms/token in vLLM; a 2k prefill takes ~40-50 ms."""
    model = CostModel(LLAMA_7B, H100)
    assert 0.005 < decode_time(model, 1, 1000) < 0.008
    assert 0.035 < prefill_time(model, [2048]) < 0.060


def test_decode_is_memory_bound_and_prefill_compute_bound() -> None:
    """Decode steps cost about the weights' read plus the kernels' fixed costs; prefill about its FLOPs."""
    model = CostModel(LLAMA_7B, H100)
    weights_read = LLAMA_7B.weight_bytes / (DEFAULT_EFFICIENCY.gemm_memory * H100.mem_bandwidth)
    kernels = 32 * (10 + 1) + 3  # linear work and attention per layer; embedding, final norm, LM head
    fixed = kernels * DEFAULT_EFFICIENCY.kernel_overhead_s
    assert decode_time(model, 1, 1) == pytest.approx(weights_read + fixed, rel=0.05)
    # Doubling a batch of decodes is nearly free; doubling a long prompt doubles the time (or more).
    assert decode_time(model, 2, 2) < 1.02 * decode_time(model, 1, 1)
    assert prefill_time(model, [4096]) > 1.95 * prefill_time(model, [2048])


def test_tp_must_split_the_heads() -> None:
    with pytest.raises(ValueError, match="heads"):
        CostModel(model_preset("llama-30b"), H100, tp=8)  # 52 heads
    with pytest.raises(ValueError, match="layers"):
        CostModel(LLAMA_7B, H100, pp=33)


def test_tp_all_reduce_cost_grows_as_the_link_slows() -> None:
    batch = BatchShape(prefills=(PrefillChunk(2048),))
    times = [
        CostModel(LLAMA_70B, H100, tp=4, tp_link=interconnect_preset(link)).step_time(batch)
        for link in ("nvlink", "pcie5", "pcie4", "eth100", "eth10")
    ]
    assert times == sorted(times)
    assert times[-1] > 2 * times[0]
    # The all-reduce of one layer is the ring formula: 2·(tp−1)/tp of the hidden states over the link.
    fast, slow = (CostModel(LLAMA_70B, H100, tp=4, tp_link=interconnect_preset(n)) for n in ("nvlink", "eth10"))
    hidden_bytes = 2048 * 8192 * 2
    per_all_reduce = [2 * 3 / 4 * hidden_bytes / m.tp_link.bandwidth + m.tp_link.latency for m in (fast, slow)]
    two_per_layer_and_one_for_embedding = (2 * 80 + 1) * (per_all_reduce[1] - per_all_reduce[0])
    logits_gather = 3 / 4 * 32000 * 2 * (1 / slow.tp_link.bandwidth - 1 / fast.tp_link.bandwidth)
    logits_gather += slow.tp_link.latency - fast.tp_link.latency
    assert slow.step_time(batch) - fast.step_time(batch) == pytest.approx(
        two_per_layer_and_one_for_embedding + logits_gather
    )


def test_without_tp_the_link_does_not_matter() -> None:
    batch = BatchShape(prefills=(PrefillChunk(512),), decode_count=8, decode_context=8000)
    assert CostModel(LLAMA_7B, H100, tp_link=interconnect_preset("eth10")).step_time(batch) == CostModel(
        LLAMA_7B, H100
    ).step_time(batch)


def test_tp_shortens_steps_on_nvlink() -> None:
    batch = BatchShape(prefills=(PrefillChunk(4096),))
    times = [CostModel(LLAMA_70B, H100, tp=tp).step_time(batch) for tp in (2, 4, 8)]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize("link", ["nvlink", "ib400", "eth10"])
def test_pp_adds_one_transfer_per_stage_boundary(link: str) -> None:
    """Latency of a step is the sum of the stages plus (pp−1) sends of hidden states and residual."""
    batch = BatchShape(prefills=(PrefillChunk(1000, 24),), decode_count=16, decode_context=16000)
    pp_link = interconnect_preset(link)
    one = CostModel(LLAMA_70B, H100, tp=4)
    transfer = 2 * batch.num_tokens * 8192 * 2 / pp_link.bandwidth + pp_link.latency
    for pp in (2, 4):
        staged = CostModel(LLAMA_70B, H100, tp=4, pp=pp, pp_link=pp_link)
        assert staged.step_time(batch) == pytest.approx(one.step_time(batch) + (pp - 1) * transfer)


def test_attention_prefill_counts_causal_pairs() -> None:
    """A chunk attending to a long cached context costs more than the same chunk alone."""
    model = CostModel(LLAMA_7B, H100)
    alone = model.attention_time(BatchShape(prefills=(PrefillChunk(2048),)))
    with_context = model.attention_time(BatchShape(prefills=(PrefillChunk(2048, 6144),)))
    # 2048·2049/2 pairs alone vs 2048·6144 + 2048·2049/2 with context: 7x the FLOPs, compute-bound.
    overhead = DEFAULT_EFFICIENCY.kernel_overhead_s
    assert (with_context - overhead) / (alone - overhead) == pytest.approx(
        (2048 * 6144 + 2048 * 2049 / 2) / (2048 * 2049 / 2)
    )


def test_decode_attention_reads_the_kv_cache() -> None:
    model = CostModel(LLAMA_7B, H100)
    context = 100_000
    kv_read = context * LLAMA_7B.kv_bytes_per_token / LLAMA_7B.num_layers
    expected = kv_read / (DEFAULT_EFFICIENCY.gemm_memory * H100.mem_bandwidth)
    got = model.attention_time(BatchShape(decode_count=1, decode_context=context))
    assert got == pytest.approx(expected + DEFAULT_EFFICIENCY.kernel_overhead_s, rel=1e-3)


# Hypothesis: more work never takes less time.

LAYOUTS = st.sampled_from(
    [
        ("llama-2-7b", "h100", 1, 1),
        ("llama-2-7b", "l20", 2, 1),
        ("llama-2-13b", "a100", 1, 2),
        ("llama-2-70b", "h100", 4, 2),
        ("llama-30b", "l20", 4, 1),
        ("codellama-34b", "a800", 2, 2),
        ("qwen2-72b", "h200", 8, 1),
    ]
)
CHUNKS = st.builds(PrefillChunk, st.integers(1, 8192), st.integers(0, 32768))
BATCHES = st.builds(
    lambda chunks, decodes, extra: BatchShape(tuple(chunks), decodes, decodes + extra if decodes else 0),
    st.lists(CHUNKS, max_size=6),
    st.integers(0, 256),
    st.integers(0, 200_000),
)


def _model(layout: tuple[str, str, int, int]) -> CostModel:
    model, gpu, tp, pp = layout
    return CostModel(model_preset(model), gpu_preset(gpu), tp, pp, pp_link=interconnect_preset("eth25"))


def _not_cheaper(bigger: float, smaller: float) -> bool:
    return bigger >= smaller * (1 - 1e-12)


@given(LAYOUTS, BATCHES, st.integers(1, 4096), st.data())
def test_more_new_tokens_never_cheaper(layout, batch: BatchShape, more: int, data) -> None:
    model = _model(layout)
    if batch.prefills:
        i = data.draw(st.integers(0, len(batch.prefills) - 1))
        grown = list(batch.prefills)
        grown[i] = replace(grown[i], new_tokens=grown[i].new_tokens + more)
        bigger = replace(batch, prefills=tuple(grown))
    else:
        bigger = replace(batch, prefills=(PrefillChunk(more),))
    assert _not_cheaper(model.step_time(bigger), model.step_time(batch))


@given(LAYOUTS, BATCHES, st.integers(1, 65536), st.data())
def test_more_context_never_cheaper(layout, batch: BatchShape, more: int, data) -> None:
    model = _model(layout)
    if batch.prefills:
        i = data.draw(st.integers(0, len(batch.prefills) - 1))
        grown = list(batch.prefills)
        grown[i] = replace(grown[i], cached_tokens=grown[i].cached_tokens + more)
        assert _not_cheaper(model.step_time(replace(batch, prefills=tuple(grown))), model.step_time(batch))
    more_decode_context = replace(batch, decode_context=batch.decode_context + more)
    assert _not_cheaper(model.step_time(more_decode_context), model.step_time(batch))


@given(LAYOUTS, BATCHES, st.integers(1, 64), CHUNKS)
def test_bigger_batch_never_cheaper(layout, batch: BatchShape, more: int, chunk: PrefillChunk) -> None:
    model = _model(layout)
    more_decodes = replace(batch, decode_count=batch.decode_count + more, decode_context=batch.decode_context + more)
    assert _not_cheaper(model.step_time(more_decodes), model.step_time(batch))
    more_prefills = replace(batch, prefills=(*batch.prefills, chunk))
    assert _not_cheaper(model.step_time(more_prefills), model.step_time(batch))


@given(LAYOUTS, st.integers(1, 16384), st.integers(1, 4096))
def test_layer_linear_time_grows_with_tokens(layout, tokens: int, more: int) -> None:
    model = _model(layout)
    assert _not_cheaper(model.layer_linear_time(tokens + more), model.layer_linear_time(tokens))


# --- calibration ---


def test_fit_recovers_known_factors() -> None:
    """Samples generated by the model itself give back the factors that generated them."""
    truth = Efficiency(0.6, 50.0, 0.9, 0.45, 5e-6)
    samples = [
        LayerSample(shape, gpu, tp, tokens, CostModel(shape, gpu, tp, efficiency=truth).layer_linear_time(tokens))
        for shape in (LLAMA_7B, LLAMA_70B)
        for gpu in (H100, gpu_preset("a100"))
        for tp in (1, 2, 4, 8)
        for tokens in (1, 8, 32, 96, 200, 512, 1024, 2048, 4096)
    ]
    fitted = fit_efficiency(samples)
    for name in Efficiency.__slots__:
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6)


def test_fit_needs_positive_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        fit_efficiency([])
    with pytest.raises(ValueError, match="positive"):
        fit_efficiency([LayerSample(LLAMA_7B, H100, 1, 16, 0.0)])


def test_non_physical_coefficients_are_refused() -> None:
    with pytest.raises(ValueError, match="not physical"):
        Efficiency.from_coefficients([1.3, 100.0, 1.2, 1.8, -1e-6])
    round_trip = Efficiency.from_coefficients(DEFAULT_EFFICIENCY.coefficients())
    assert round_trip.coefficients() == pytest.approx(DEFAULT_EFFICIENCY.coefficients())


# --- the measured prefill table ---

FALLBACK = CostModel(LLAMA_7B, H100)


def _table() -> MeasuredPrefillTable:
    return MeasuredPrefillTable((128, 512, 2048), (0.010, 0.030, 0.150), FALLBACK)


def test_table_interpolates_between_rows() -> None:
    table = _table()
    assert table.prefill_seconds(512) == pytest.approx(0.030)
    assert table.prefill_seconds(320) == pytest.approx(0.020)
    assert table.prefill_seconds(1280) == pytest.approx(0.090)


def test_table_scales_beyond_the_last_row_and_holds_below_the_first() -> None:
    table = _table()
    assert table.prefill_seconds(4096) == pytest.approx(0.300)
    assert table.prefill_seconds(3072) == pytest.approx(0.225)
    assert table.prefill_seconds(16) == pytest.approx(0.010)
    assert table.prefill_seconds(0) == 0.0


def test_table_prices_whole_prompt_steps_and_delegates_the_rest() -> None:
    table = _table()
    assert prefill_time(table, [256, 256]) == pytest.approx(0.030)  # looked up as one 512-token prompt
    for batch in (
        BatchShape(decode_count=4, decode_context=4000),
        BatchShape(prefills=(PrefillChunk(256),), decode_count=4, decode_context=4000),
        BatchShape(prefills=(PrefillChunk(256, cached_tokens=1024),)),
    ):
        assert table.step_time(batch) == FALLBACK.step_time(batch)


@given(st.lists(st.integers(1, 20000), min_size=1, max_size=4), st.integers(1, 5000))
def test_table_never_cheaper_for_more_tokens(prompts: list[int], more: int) -> None:
    table = _table()
    assert prefill_time(table, [*prompts[:-1], prompts[-1] + more]) >= prefill_time(table, prompts)


def test_table_rejects_bad_rows() -> None:
    with pytest.raises(ValueError, match="ascending"):
        MeasuredPrefillTable((512, 128), (0.03, 0.01), FALLBACK)
    with pytest.raises(ValueError, match="must not fall"):
        MeasuredPrefillTable((128, 512), (0.03, 0.01), FALLBACK)
    with pytest.raises(ValueError, match="at least one row"):
        MeasuredPrefillTable((), (), FALLBACK)


def test_table_loads_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "prefill.csv"
    path.write_text("prompt_len,prefill_time_s,note\n2048,0.150,x\n128,0.010,y\n512,0.030,z\n")
    assert load_prefill_table(path, FALLBACK) == _table()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("prompt_len,time\n128,0.01\n", "prefill_time_s"),
        ("prompt_len,prefill_time_s\n128,fast\n", r"prefill.csv:2: not a number"),
        ("prompt_len,prefill_time_s\n128,0.01\n128,0.02\n", "ascending"),
        ("", "prompt_len, prefill_time_s"),
    ],
)
def test_table_loader_errors_are_clear(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "prefill.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        load_prefill_table(path, FALLBACK)


# --- KV capacity ---


def test_kv_capacity_of_llama_2_7b_on_one_h100_by_hand() -> None:
    # 81559 MiB reported, 90% of it, less 13.48 GB of weights and the 2 GiB reserve, in blocks of
    # 16 tokens × 512 KiB (K and V of 32 layers × 32 heads × 128 dims × 2 bytes).
    free = 81559 * 2**20 * 0.9 - 2 * 6_738_415_616 - 2 * 2**30
    block = 16 * 2 * 32 * 32 * 128 * 2
    assert DEFAULT_ACTIVATION_RESERVE_BYTES == 2 * 2**30
    assert kv_capacity_blocks(LLAMA_7B, H100) == int(free // block) == 7312


def test_kv_capacity_scales_with_the_layout() -> None:
    one = kv_capacity_blocks(LLAMA_7B, H100)
    # TP halves each GPU's weights and KV heads, so blocks more than double.
    assert kv_capacity_blocks(LLAMA_7B, H100, tp=2) > 2 * one
    # PP halves each GPU's layers, so a block takes half the bytes.
    assert kv_capacity_blocks(LLAMA_7B, H100, pp=2) > 2 * one
    assert kv_capacity_blocks(LLAMA_7B, H100, gpu_memory_utilization=0.5) < one
    assert kv_capacity_blocks(LLAMA_7B, H100, block_size=32) == pytest.approx(one / 2, abs=1)


def test_kv_capacity_when_the_weights_do_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        kv_capacity_blocks(LLAMA_70B, H100)
    assert kv_capacity_blocks(LLAMA_70B, H100, tp=2) > 0
    with pytest.raises(ValueError, match="does not fit"):
        kv_capacity_blocks(model_preset("llama-30b"), gpu_preset("l20"))
