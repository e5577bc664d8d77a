"""KV-cache accounting in paged blocks, as vLLM allocates them."""

from __future__ import annotations

DEFAULT_BLOCK_SIZE = 16


def blocks_for_tokens(tokens: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Blocks a sequence of `tokens` tokens occupies (the last block may be partly filled)."""
    if tokens <= 0:
        return 0
    return -(-tokens // block_size)
