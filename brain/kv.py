"""KV-cache accounting in paged blocks, as vLLM allocates them."""

from __future__ import annotations

from .hardware import GPU, ModelShape

DEFAULT_BLOCK_SIZE = 16


def blocks_for_tokens(tokens: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Blocks a sequence of `tokens` tokens occupies (the last block may be partly filled)."""
    if tokens <= 0:
        return 0
    return -(-tokens // block_size)


# vLLM sizes the KV cache from what is left after a profiling forward pass; its peak activations, CUDA
# graphs and the NCCL/cuBLAS workspaces take a few GiB whatever the model.
DEFAULT_ACTIVATION_RESERVE_BYTES = 2 * 2**30


def kv_bytes_per_token_per_gpu(shape: ModelShape, tp: int = 1, pp: int = 1) -> int:
    """K and V of one token on one GPU: its stage's layers (the fullest stage) and its shard's KV heads."""
    layers = -(-shape.num_layers // pp)
    return 2 * layers * shape.kv_heads_per_shard(tp) * shape.head_dim * shape.dtype_bytes


def kv_capacity_blocks(
    shape: ModelShape,
    gpu: GPU,
    tp: int = 1,
    pp: int = 1,
    gpu_memory_utilization: float = 0.9,
    block_size: int = DEFAULT_BLOCK_SIZE,
    activation_reserve_bytes: int = DEFAULT_ACTIVATION_RESERVE_BYTES,
) -> int:
    """KV-cache blocks of one instance of `tp`×`pp` GPUs, as vLLM's `num_gpu_blocks` comes out.

    Each GPU keeps `gpu_memory_utilization` of its memory, less its share of the weights (split evenly over
    tp·pp) and the activation reserve, for KV; a block holds `block_size` tokens of its stage's layers and its
    shard's heads on every GPU alike, so one GPU's count is the instance's.
    """
    if tp < 1 or pp < 1 or block_size < 1 or not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"bad layout: tp={tp} pp={pp} block_size={block_size} util={gpu_memory_utilization}")
    weights = shape.weight_bytes / (tp * pp)
    free = gpu.memory_bytes * gpu_memory_utilization - weights - activation_reserve_bytes
    blocks = int(free // (block_size * kv_bytes_per_token_per_gpu(shape, tp, pp)))
    if blocks < 1:
        gib = 2**30
        raise ValueError(
            f"{shape.name} does not fit on {gpu.name} with tp={tp} pp={pp}: {weights / gib:.1f} GiB of "
            f"weights per GPU and {activation_reserve_bytes / gib:.1f} GiB reserved leave no room for a KV "
            f"block in {gpu_memory_utilization:.0%} of {gpu.memory_bytes / gib:.1f} GiB"
        )
    return blocks
