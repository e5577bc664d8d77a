"""The package layout and the `ecoserve` command as a user meets them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ecoserve.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags", [[], ["-S"]])
def test_stdlib_operator_is_never_shadowed_from_the_repo_root(flags):
    code = (
        "import sys; sys.path.insert(0, '');"
        "import operator, collections; assert hasattr(operator, 'itemgetter'), operator.__file__;"
        "print(operator.__file__)"
    )
    out = subprocess.run([sys.executable, *flags, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip().startswith(str(ROOT))


def test_component_packages_import_as_subpackages_from_the_repo_root():
    code = "import operator, collections; import ecoserve.operator.labels, ecoserve.router, ecoserve.worker"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in ["operator", "profile", "worker", "router", "up", "gateway", "bench", "bench-router", "simulate"]:
        assert name in text


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "ecoserve"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "simulate" in out.stdout


def test_operator_names_a_bad_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["operator", "--metrics-port", "0"])
    assert exc.value.code == 2 and "--metrics-port" in capsys.readouterr().err


def test_unknown_flag_of_a_real_subcommand_is_named(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["profile", "validate", "x.csv", "--bogus"])
    assert exc.value.code == 2 and "--bogus" in capsys.readouterr().err


def test_profile_validate_names_a_missing_file(capsys):
    assert main(["profile", "validate", "/nonexistent/mlp.csv"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_worker_selector_is_stable_and_names_role_and_macro_instance():
    from ecoserve.operator.labels import worker_selector

    assert worker_selector("llama-1") == (
        "ecoserve.io/macroinstance=llama-1,ecoserve.io/role=worker,ecoserve.io/draining!=true"
    )


def test_profile_validate_names_the_wrong_gpu_flag(capsys):
    profile = ROOT.parent / "shared" / "data" / "profiles" / "h100" / "Llama-2-7b-hf" / "mlp.csv"
    with pytest.raises(SystemExit) as exc:
        main(["profile", "validate", str(profile), "--gpu", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--gpu" in err and "h100" in err


def test_profile_validate_json_has_the_error_summary(capsys):
    profile = ROOT.parent / "shared" / "data" / "profiles" / "a100" / "Llama-2-70b-hf" / "mlp.csv"
    assert main(["profile", "validate", str(profile), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 1044
    assert 0 <= summary["median_abs_err"] <= summary["p90_abs_err"] <= 0.25


def test_profile_calibrate_prints_the_fitted_factors(capsys):
    profile = ROOT.parent / "shared" / "data" / "profiles" / "h100" / "Llama-2-7b-hf" / "mlp.csv"
    assert main(["profile", "calibrate", str(profile)]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert 0 < fitted["gemm_compute"] <= 1 and fitted["kernel_overhead_s"] > 0


def test_vllm_worker_command_plugs_in_the_temporal_scheduler_and_passes_flags_through():
    from ecoserve.cli.main import build_parser
    from ecoserve.cli.worker import vllm_command

    parser = build_parser()
    args, extra = parser.parse_known_args(["worker", "--engine", "vllm", "meta/llama", "--port", "9000"])
    args.extra = [*extra, "--tensor-parallel-size", "4"]
    cmd = vllm_command(args)
    assert cmd[cmd.index("--scheduler-cls") + 1].endswith("vllm_scheduler.TemporalAsyncScheduler")
    assert cmd[cmd.index("--port") + 1] == "9000" and cmd[-2:] == ["--tensor-parallel-size", "4"]
    args, extra = parser.parse_known_args(
        ["worker", "--engine", "vllm", "m", "--max-num-seqs", "64", "--tp", "2", "--served-model-name", "x"]
    )
    args.extra = extra
    cmd = vllm_command(args)  # flags both parsers know reach vLLM; the ones not given keep vLLM's defaults
    assert cmd[cmd.index("--max-num-seqs") + 1] == "64" and cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--served-model-name") + 1] == "x" and "--block-size" not in cmd
    args.extra = ["--no-async-scheduling"]
    assert vllm_command(args)[vllm_command(args).index("--scheduler-cls") + 1].endswith(".TemporalScheduler")


def test_worker_help_lists_the_flags(capsys):
    assert main(["worker", "--help"]) == 0
    assert "--engine" in capsys.readouterr().out


@pytest.mark.vllm
def test_vllm_worker_help_shows_vllms_own_flags(capfd, monkeypatch):
    pytest.importorskip("vllm", reason="the vllm extra is not installed: pip install -e '.[vllm,dev]'")
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")  # no GPU here: vLLM's parser needs a device type
    assert main(["worker", "--engine", "vllm", "--help"]) == 0
    out = capfd.readouterr().out
    ours, _, theirs = out.partition("vLLM's own flags")
    assert "--engine" in ours and "usage: vllm serve" in theirs and "--help=ModelConfig" in theirs


def test_sim_worker_refuses_unknown_flags(capsys):
    assert main(["worker", "--bogus-flag", "1"]) == 2
    assert "--bogus-flag" in capsys.readouterr().err
