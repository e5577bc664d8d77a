"""The cost model against Vidur's measured per-layer profiles, and the calibration that fits it to them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ecoserve.brain.costmodel import DEFAULT_EFFICIENCY
from ecoserve.brain.hardware import gpu_preset
from ecoserve.brain.profiles import REQUIRED_COLUMNS, calibrate, gpu_from_path, validate_profile

PROFILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "profiles"
SHARED = [
    PROFILES / gpu / model / "mlp.csv" for gpu in ("h100", "a100") for model in ("Llama-2-7b-hf", "Llama-2-70b-hf")
]
needs_profiles = pytest.mark.skipif(not PROFILES.is_dir(), reason=f"shared profiles not found at {PROFILES}")


@needs_profiles
@pytest.mark.parametrize("path", SHARED, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_cost_model_matches_the_measured_profiles(path: Path) -> None:
    summary = validate_profile(path).summary()
    assert summary["rows"] == 1044
    assert summary["gpu"] == path.parent.parent.name
    assert summary["median_abs_err"] <= 0.10
    assert summary["p90_abs_err"] <= 0.25
    assert set(summary["by_tp"]) == {"1", "2", "4", "8"}
    assert sum(s["rows"] for s in summary["by_tp"].values()) == 1044
    for key in ("max_abs_err", "mean_signed_err"):
        assert isinstance(summary[key], float)
    json.dumps(summary)


@needs_profiles
def test_calibration_reproduces_the_committed_factors() -> None:
    fitted = calibrate(SHARED)
    assert fitted.coefficients() == pytest.approx(DEFAULT_EFFICIENCY.coefficients(), rel=1e-3)


@needs_profiles
def test_table_groups_rows_and_ends_with_the_distribution() -> None:
    table = validate_profile(SHARED[0]).format_table()
    lines = table.splitlines()
    assert "Llama-2-7b-hf on h100" in lines[0]
    assert any(line.startswith("tp=8 2049-4096") for line in lines)
    assert lines[-1].startswith("all") and " 1044 " in lines[-1]
    assert len(lines) < 40


@needs_profiles
def test_a_named_gpu_overrides_the_path(tmp_path: Path) -> None:
    copy = tmp_path / "mlp.csv"
    copy.write_text(SHARED[0].read_text())
    with pytest.raises(ValueError, match="no directory names a known GPU"):
        validate_profile(copy)
    # The H100's kernels on an H200's datasheet: more bandwidth, same compute, so nothing gets slower.
    h100, h200 = validate_profile(SHARED[0]), validate_profile(copy, gpu_preset("h200"))
    assert h200.gpu.name == "h200"
    assert all(a.predicted_s <= b.predicted_s for a, b in zip(h200.rows, h100.rows, strict=True))


def test_gpu_is_read_from_a_directory_name() -> None:
    assert gpu_from_path(Path("/data/profiles/A100/Llama-2-7b-hf/mlp.csv")).name == "a100"
    assert gpu_from_path(Path("runs/l20/mlp.csv")).name == "l20"


def _write_profile(path: Path, columns: list[str], row: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerow({c: row[c] for c in columns})
    return path


ROW = {
    **{column: "0.01" for column in REQUIRED_COLUMNS},
    "n_head": "32",
    "n_kv_head": "32",
    "n_embd": "4096",
    "n_expanded_embd": "11008",
    "vocab_size": "32768",
    "use_gated_mlp": "True",
    "num_tokens": "128",
    "num_tensor_parallel_workers": "1",
}


def test_any_file_of_the_format_validates(tmp_path: Path) -> None:
    path = _write_profile(tmp_path / "h100" / "my-model" / "mlp.csv", list(REQUIRED_COLUMNS), ROW)
    validation = validate_profile(path)
    assert validation.model == "my-model"
    (row,) = validation.rows
    assert row.measured_s == pytest.approx(10 * 0.01e-3)  # nine ops, the residual add counted twice
    assert row.rel_err == pytest.approx(row.predicted_s / row.measured_s - 1)


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    columns = [c for c in REQUIRED_COLUMNS if c != "time_stats.mlp_act.median"]
    path = _write_profile(tmp_path / "h100" / "m" / "mlp.csv", columns, ROW)
    with pytest.raises(ValueError, match=r"missing column\(s\): time_stats\.mlp_act\.median"):
        validate_profile(path)


def test_a_bad_value_names_its_line(tmp_path: Path) -> None:
    path = _write_profile(tmp_path / "a100" / "m" / "mlp.csv", list(REQUIRED_COLUMNS), {**ROW, "n_embd": "wide"})
    with pytest.raises(ValueError, match=r"mlp\.csv:2: "):
        validate_profile(path)


def test_an_empty_profile_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a100" / "m" / "mlp.csv"
    path.parent.mkdir(parents=True)
    path.write_text(",".join(REQUIRED_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="no rows"):
        validate_profile(path)
