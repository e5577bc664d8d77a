"""Measured per-layer GPU profiles (Vidur's `mlp.csv`): validate the cost model on them, and calibrate it.

A profile row times each operation of the non-attention part of one transformer layer on one tensor-parallel
shard, in milliseconds (`time_stats.<op>.{min,max,mean,median,std}`), for `num_tokens` tokens and
`num_tensor_parallel_workers` shards, with the model's shape in `n_head, n_kv_head, n_embd, n_expanded_embd,
vocab_size, use_gated_mlp`.

The measured non-attention layer time compared with `CostModel.layer_linear_time` is the sum of the medians of

    input_layernorm + attn_pre_proj + attn_rope + attn_post_proj + post_attention_layernorm
    + mlp_up_proj + mlp_act + mlp_down_proj + 2 × add

`add` counts twice because a layer has two residual adds and Vidur times only the second (the first is the
same kernel on the same tensor). `emb` is left out: the embedding runs once per model, not per layer. The
tensor-parallel all-reduces are not in the profiles (Vidur profiles with `reduce_results=False`), nor is
attention. Medians, because a profile's means carry the odd slow outlier.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .costmodel import DEFAULT_EFFICIENCY, CostModel, Efficiency, LayerSample, fit_efficiency
from .hardware import GPU, GPUS, ModelShape

LAYER_OPS: Mapping[str, int] = MappingProxyType(
    {
        "input_layernorm": 1,
        "attn_pre_proj": 1,
        "attn_rope": 1,
        "attn_post_proj": 1,
        "post_attention_layernorm": 1,
        "mlp_up_proj": 1,
        "mlp_act": 1,
        "mlp_down_proj": 1,
        "add": 2,
    }
)
STAT = "median"
SHAPE_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
RUN_COLUMNS = ("num_tokens", "num_tensor_parallel_workers")
REQUIRED_COLUMNS = (*(f"time_stats.{op}.{STAT}" for op in LAYER_OPS), *SHAPE_COLUMNS, *RUN_COLUMNS)
TOKEN_BUCKETS = (16, 128, 512, 1024, 2048, 4096)  # upper ends of the token ranges of `format_table`


@dataclass(frozen=True, slots=True)
class ProfileRow:
    """One profile row: measured and predicted non-attention layer time of one shard, in seconds."""

    tp: int
    num_tokens: int
    measured_s: float
    predicted_s: float

    @property
    def rel_err(self) -> float:
        return self.predicted_s / self.measured_s - 1


def _error_stats(rows: Sequence[ProfileRow]) -> dict[str, Any]:
    errors = np.array([r.rel_err for r in rows])
    absolute = np.abs(errors)
    return {
        "rows": len(rows),
        "median_abs_err": float(np.median(absolute)),
        "p90_abs_err": float(np.percentile(absolute, 90)),
        "max_abs_err": float(absolute.max()),
        "mean_signed_err": float(errors.mean()),
    }


def _token_range(num_tokens: int) -> str:
    """The range of `TOKEN_BUCKETS` that `format_table` puts `num_tokens` in."""
    low = 1
    for high in TOKEN_BUCKETS:
        if num_tokens <= high:
            return f"{low}-{high}"
        low = high + 1
    return f">{TOKEN_BUCKETS[-1]}"


def _by_tp(rows: Iterable[ProfileRow]) -> dict[int, list[ProfileRow]]:
    groups: dict[int, list[ProfileRow]] = {}
    for row in sorted(rows, key=lambda r: (r.tp, r.num_tokens)):
        groups.setdefault(row.tp, []).append(row)
    return groups


_TABLE_HEADER = (
    f"{'':<16} {'rows':>5} {'measured ms':>12} {'predicted ms':>13} "
    f"{'median |err|':>13} {'p90 |err|':>10} {'max |err|':>10} {'mean err':>9}"
)


def _table_line(label: str, rows: Sequence[ProfileRow]) -> str:
    stats = _error_stats(rows)
    measured = np.mean([r.measured_s for r in rows]) * 1e3
    predicted = np.mean([r.predicted_s for r in rows]) * 1e3
    return (
        f"{label:<16} {len(rows):>5} {measured:>12.4f} {predicted:>13.4f} {stats['median_abs_err']:>13.1%} "
        f"{stats['p90_abs_err']:>10.1%} {stats['max_abs_err']:>10.1%} {stats['mean_signed_err']:>+9.1%}"
    )


@dataclass(frozen=True, slots=True)
class ProfileValidation:
    """The cost model's predictions against every row of one profile file."""

    path: Path
    gpu: GPU
    model: str
    rows: tuple[ProfileRow, ...]

    def summary(self) -> dict[str, Any]:
        """Error distribution as fractions (0.07 is 7%), overall and per tensor-parallel degree."""
        return {
            "file": str(self.path),
            "gpu": self.gpu.name,
            "model": self.model,
            **_error_stats(self.rows),
            "by_tp": {str(tp): _error_stats(rows) for tp, rows in _by_tp(self.rows).items()},
        }

    def format_table(self) -> str:
        """Mean predicted vs measured time and the errors per (tp, token range), then the distribution."""
        lines = [
            f"{self.path}: {self.model} on {self.gpu.name}, non-attention layer time of one shard ({STAT}s)",
            _TABLE_HEADER,
        ]
        for tp, rows in _by_tp(self.rows).items():
            ranges: dict[str, list[ProfileRow]] = {}
            for row in rows:
                ranges.setdefault(_token_range(row.num_tokens), []).append(row)
            lines += [_table_line(f"tp={tp} {span}", group) for span, group in ranges.items()]
        lines += ["", "error distribution", _TABLE_HEADER]
        lines += [_table_line(f"tp={tp}", rows) for tp, rows in _by_tp(self.rows).items()]
        lines.append(_table_line("all", self.rows))
        return "\n".join(lines)


def gpu_from_path(path: Path) -> GPU:
    """The GPU preset named by a directory of `path` (…/h100/Llama-2-7b-hf/mlp.csv is an H100 profile)."""
    for part in reversed(path.resolve().parent.parts):
        if part.lower() in GPUS:
            return GPUS[part.lower()]
    raise ValueError(f"{path}: no directory names a known GPU ({', '.join(sorted(GPUS))}); name the GPU")


def _parse_bool(text: str) -> bool:
    if text.strip().lower() in ("true", "1"):
        return True
    if text.strip().lower() in ("false", "0"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _sample(row: Mapping[str, str], gpu: GPU, model: str) -> LayerSample:
    shape = ModelShape(
        name=model,
        num_layers=1,  # a profile is of one layer
        hidden_size=int(row["n_embd"]),
        num_heads=int(row["n_head"]),
        num_kv_heads=int(row["n_kv_head"]),
        intermediate_size=int(row["n_expanded_embd"]),
        vocab_size=int(row["vocab_size"]),
        gated_mlp=_parse_bool(row["use_gated_mlp"]),
    )
    ms = sum(count * float(row[f"time_stats.{op}.{STAT}"]) for op, count in LAYER_OPS.items())
    return LayerSample(shape, gpu, int(row["num_tensor_parallel_workers"]), int(row["num_tokens"]), ms * 1e-3)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or ()), list(reader)


def read_profile(path: Path, gpu: GPU | None = None) -> tuple[LayerSample, ...]:
    """Every row of a profile file as a measured layer sample; the GPU comes from the path unless given."""
    gpu = gpu or gpu_from_path(path)
    columns, rows = _read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{path}: not a Vidur MLP profile, missing column(s): {', '.join(missing)}")
    if not rows:
        raise ValueError(f"{path}: profile has no rows")
    samples = []
    for line, row in enumerate(rows, start=2):
        try:
            samples.append(_sample(row, gpu, path.parent.name))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}:{line}: {err}") from None
    return tuple(samples)


def validate_profile(
    path: Path, gpu: GPU | None = None, efficiency: Efficiency = DEFAULT_EFFICIENCY
) -> ProfileValidation:
    """Predict every row of a profile with the cost model and keep predicted next to measured."""
    samples = read_profile(path, gpu)
    rows = tuple(
        ProfileRow(
            x.tp,
            x.num_tokens,
            x.seconds,
            CostModel(x.shape, x.gpu, x.tp, efficiency=efficiency).layer_linear_time(x.num_tokens),
        )
        for x in samples
    )
    return ProfileValidation(path, samples[0].gpu, samples[0].shape.name, rows)


def calibrate(paths: Iterable[Path]) -> Efficiency:
    """Fit the efficiency factors on the rows of every profile in `paths` (each file's GPU from its path).

    On the four shared profiles this reproduces `DEFAULT_EFFICIENCY`.
    """
    return fit_efficiency([sample for path in paths for sample in read_profile(path)])
