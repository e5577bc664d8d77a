"""Output-length prediction: how many tokens a request will generate, learned online from finished ones.

The router reserves KV for the predicted output and TD-Pipe's admission simulates future KV usage from it,
so a prediction is needed before a request starts. Without a learned model (no BERT classifier here) the
best cheap signal is the distribution of past outputs conditioned on prompt length and `max_tokens`.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol


class OutputLengthPredictor(Protocol):
    """Predicts a request's output length; learns from requests as they finish."""

    def predict(self, prompt_len: int, max_tokens: int | None) -> int: ...

    def observe(self, prompt_len: int, max_tokens: int | None, output_len: int) -> None: ...


def _cap(value: int, max_tokens: int | None) -> int:
    value = max(value, 1)
    return value if max_tokens is None else min(value, max_tokens)


@dataclass(frozen=True, slots=True)
class FixedPredictor:
    """Always the same length (capped by `max_tokens`): the fallback before anything was observed."""

    value: int = 256

    def predict(self, prompt_len: int, max_tokens: int | None) -> int:
        return _cap(self.value, max_tokens)

    def observe(self, prompt_len: int, max_tokens: int | None, output_len: int) -> None:
        """A fixed predictor learns nothing."""


def _log2_bucket(n: int | None) -> int | None:
    return None if n is None else max(n, 1).bit_length()


@dataclass(slots=True)
class _Window:
    """The last `size` observations, kept sorted as well so a quantile costs O(1)."""

    size: int
    recent: deque[int] = field(default_factory=deque)
    ordered: list[int] = field(default_factory=list)

    def add(self, value: int) -> None:
        self.recent.append(value)
        bisect.insort(self.ordered, value)
        if len(self.recent) > self.size:
            old = self.recent.popleft()
            del self.ordered[bisect.bisect_left(self.ordered, old)]

    def quantile(self, q: float) -> int:
        return self.ordered[min(int(q * len(self.ordered)), len(self.ordered) - 1)]


@dataclass(slots=True)
class QuantilePredictor:
    """Conditional quantile of recent output lengths, by prompt-length and `max_tokens` buckets (powers of 2).

    Lookup falls back from the narrowest condition with at least `min_samples` observations — (prompt bucket,
    max_tokens bucket), then prompt bucket alone, then all requests — to `fallback`. The quantile `q` trades
    KV headroom (higher) against admitting more requests (lower).
    """

    q: float = 0.5
    window: int = 512
    min_samples: int = 16
    fallback: FixedPredictor = field(default_factory=FixedPredictor)
    _windows: dict[tuple[int | None, int | None] | None, _Window] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.q <= 1:
            raise ValueError(f"quantile q must be in [0, 1], got {self.q}")
        if self.window < 1 or self.min_samples < 1:
            raise ValueError("window and min_samples must be at least 1")

    def _keys(self, prompt_len: int, max_tokens: int | None) -> list[tuple[int | None, int | None] | None]:
        pb = _log2_bucket(prompt_len)
        # Without max_tokens the narrowest key is (pb, None) already: dedupe so it is counted once.
        return list(dict.fromkeys([(pb, _log2_bucket(max_tokens)), (pb, None), None]))

    def predict(self, prompt_len: int, max_tokens: int | None) -> int:
        for key in self._keys(prompt_len, max_tokens):
            w = self._windows.get(key)
            if w is not None and len(w.recent) >= self.min_samples:
                return _cap(w.quantile(self.q), max_tokens)
        return self.fallback.predict(prompt_len, max_tokens)

    def observe(self, prompt_len: int, max_tokens: int | None, output_len: int) -> None:
        if output_len < 0:
            raise ValueError(f"output length must be non-negative, got {output_len}")
        for key in self._keys(prompt_len, max_tokens):
            self._windows.setdefault(key, _Window(self.window)).add(output_len)
