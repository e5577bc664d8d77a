"""The simulated engine's tokenizer: one token per whitespace-separated word.

Deterministic and model-free, so a benchmark can build a prompt of exactly N tokens (N words) and replay a
trace's lengths; a prompt may also be given as token ids, as vLLM accepts. Generated text is a fixed word
cycle, so responses are reproducible.
"""

from __future__ import annotations

import zlib

VOCAB_SIZE = 32000
_FIRST_ID = 1000
OUTPUT_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


def token_id(word: str) -> int:
    """A stable id for a word (the same in every process)."""
    return _FIRST_ID + zlib.crc32(word.encode()) % (VOCAB_SIZE - _FIRST_ID)


def tokenize(text: str) -> list[int]:
    return [token_id(w) for w in text.split()]


def output_text(index: int) -> str:
    """The text of the `index`-th generated token (0-based): a leading space and a word."""
    return " " + OUTPUT_WORDS[index % len(OUTPUT_WORDS)]
