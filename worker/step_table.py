"""Measured step times, whichever backend timed them, and the two CSV tables `ecoserve profile measure` writes
(the prefill one is what the cost model's MeasuredPrefillTable reads)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ecoserve.brain.costmodel import PREFILL_TABLE_COLUMNS


@dataclass(frozen=True, slots=True)
class StepRow:
    kind: str  # "prefill" or "decode"
    tokens: int  # prompt length (prefill) or batch size (decode)
    context: int  # KV length each token attends to
    seconds: float


def write_tables(rows: Iterable[StepRow], prefix: Path) -> tuple[Path, Path]:
    """PREFIX.prefill.csv and PREFIX.decode.csv; returns their paths."""
    rows = list(rows)
    prefill_path = prefix.with_name(prefix.name + ".prefill.csv")
    decode_path = prefix.with_name(prefix.name + ".decode.csv")
    prefill_path.write_text(
        ",".join(PREFILL_TABLE_COLUMNS)
        + "\n"
        + "".join(f"{r.tokens},{r.seconds:.9f}\n" for r in rows if r.kind == "prefill")
    )
    decode_path.write_text(
        "batch_size,context,decode_time_s\n"
        + "".join(f"{r.tokens},{r.context},{r.seconds:.9f}\n" for r in rows if r.kind == "decode")
    )
    return prefill_path, decode_path


def median_seconds(
    fn: Callable[[], object],
    repeats: int,
    sync: Callable[[], object] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds of `fn` after one warm-up run; `sync` waits for the device (a GPU runs asynchronously)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    return statistics.median(times)
