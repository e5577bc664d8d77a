"""Measure prefill and decode step times through vLLM's own engine (the `vllm` backend of `ecoserve profile`).

Unlike the torch backend this times everything a served step costs: vLLM's kernels, CUDA graphs, the sampler,
tensor-parallel all-reduces and the engine's own overhead. Weights are random (`load_format="dummy"`), so only
the model's config is needed. vLLM exposes whole requests, not steps, so step times are derived:
- prefill of n tokens = one request of n prompt tokens generating 1 token;
- decode step of a batch b at context c = (time(b requests, 1 + k tokens) - time(b requests, 1 token)) / k,
  the prefill cancelling out; the row's context is c + k/2, the mean over the k steps.
The derivation is separated from vLLM (`profile_engine` takes any `generate`), so it is tested on a CPU with a
fake engine and a fake clock; vLLM itself only runs where it has a GPU.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .step_table import StepRow, median_seconds


class Generate(Protocol):
    def __call__(self, prompts: list[list[int]], max_tokens: int) -> object: ...


def _prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Distinct random prompts, so no two share a prefix even where prefix caching is on."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(count)]


def profile_engine(
    generate: Generate,
    prompt_lens: Sequence[int],
    batch_sizes: Sequence[int],
    context: int,
    vocab_size: int,
    repeats: int = 5,
    decode_steps: int = 16,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[StepRow], None] | None = None,
) -> list[StepRow]:
    """Prefill rows by prompt length, then decode rows by batch size at `context` tokens of KV per sequence."""
    rows: list[StepRow] = []

    def record(row: StepRow) -> None:
        rows.append(row)
        if progress is not None:
            progress(row)

    vocab = min(vocab_size, 32000)
    for n in prompt_lens:
        prompts = _prompts(1, n, vocab, n)
        record(StepRow("prefill", n, n, median_seconds(lambda p=prompts: generate(p, 1), repeats, clock=clock)))
    for b in batch_sizes:
        prompts = _prompts(b, context, vocab, b)
        first = median_seconds(lambda p=prompts: generate(p, 1), repeats, clock=clock)
        longer = median_seconds(lambda p=prompts: generate(p, 1 + decode_steps), repeats, clock=clock)
        record(StepRow("decode", b, context + decode_steps // 2, max(longer - first, 0.0) / decode_steps))
    return rows


def vllm_generate(model: str, tp: int, max_len: int, max_batch: int, **engine_args: Any) -> tuple[Generate, int]:
    """An offline vLLM engine with random weights and no prefix caching; returns (generate, vocab size)."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model,
        tensor_parallel_size=tp,
        load_format="dummy",
        skip_tokenizer_init=True,
        enable_prefix_caching=False,
        max_model_len=max_len,
        max_num_seqs=max_batch,
        max_num_batched_tokens=max(max_len, 8192),
        **engine_args,
    )

    def generate(prompts: list[list[int]], max_tokens: int) -> object:
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, detokenize=False)
        return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)

    return generate, llm.llm_engine.model_config.get_vocab_size()
