"""`ecoserve bench` flags: bad values and combinations name the flag and exit with status 2."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from ecoserve.bench.client import Progress
from ecoserve.bench.workload import WorkloadSpec
from ecoserve.cli.bench import _ProgressLine, add_parser, workload_spec

URL = ["--url", "http://127.0.0.1:9"]  # never contacted: every case fails before sending


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ecoserve")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (URL, "one of the arguments --trace --dataset is required"),
        ([*URL, "--trace", "t.csv", "--dataset", "alpaca"], "not allowed with argument"),
        (["--dataset", "alpaca"], "the following arguments are required: --url"),
        ([*URL, "--dataset", "alpaca", "--rate", "-1"], "argument --rate: must be above 0, got -1"),
        ([*URL, "--dataset", "alpaca", "--rate", "nan"], "argument --rate: must be above 0"),
        ([*URL, "--dataset", "alpaca", "--cv", "0"], "argument --cv: must be above 0, got 0"),
        ([*URL, "--dataset", "alpaca", "--max-requests", "2.5"], "argument --max-requests: not an integer"),
        ([*URL, "--dataset", "alpaca", "--attainment", "1.5"], "argument --attainment: must be in (0, 1]"),
        ([*URL, "--dataset", "shakespeare"], "argument --dataset: invalid choice"),
        ([*URL, "--dataset", "alpaca", "--arrival", "uniform"], "argument --arrival: invalid choice"),
    ],
)
def test_argparse_rejects_bad_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trace", "/nonexistent/trace.csv"], "--trace: no such file: /nonexistent/trace.csv"),
        (["--dataset", "alpaca", "--max-requests", "5"], "--rate: poisson arrivals need a rate"),
        (["--dataset", "alpaca", "--rate", "2"], "--duration: a synthetic workload needs"),
        (["--dataset", "alpaca", "--rate", "2", "--duration", "9", "--arrival", "gamma"], "--cv: gamma arrivals"),
        (["--dataset", "alpaca", "--rate", "2", "--duration", "9", "--cv", "2"], "--cv: cv applies to gamma"),
        (["--dataset", "alpaca", "--rate", "2", "--duration", "9", "--rate-scale", "2"], "--rate-scale: "),
        (["--dataset", "alpaca", "--rate", "2", "--duration", "9", "--json", "/nonexistent/r.json"], "--json: "),
    ],
)
def test_bad_combinations_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse([*URL, *argv])
    assert args.handler(args) == 2
    assert message in capsys.readouterr().err


def test_a_bad_trace_names_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,3,4\n2023-11-16 18:15:47,-3,4\n")
    args = _parse([*URL, "--trace", str(trace)])
    assert args.handler(args) == 2
    assert f"--trace: {trace}:3: ContextTokens: expected a positive integer" in capsys.readouterr().err


def test_flags_map_onto_the_workload_spec() -> None:
    args = _parse(
        [*URL, "--dataset", "longbench", "--rate", "3", "--arrival", "gamma", "--cv", "2", "--duration", "60"]
    )
    assert workload_spec(args) == WorkloadSpec(dataset="longbench", rate=3.0, arrival="gamma", cv=2.0, duration=60.0)
    args = _parse([*URL, "--trace", "t.csv", "--ttft", "2", "--tpot", "0.05", "--max-requests", "10"])
    assert (args.ttft, args.tpot, args.attainment, args.api, args.max_requests) == (2.0, 0.05, 0.9, "completions", 10)


def test_help_states_the_units(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "TTFT SLO in seconds" in text and "TPOT SLO in seconds" in text and "requests/s" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [io.StringIO(), _Terminal()], ids=["log", "terminal"])
def test_progress_is_a_line_per_tick_in_a_log_and_one_updated_line_on_a_terminal(stream: io.StringIO) -> None:
    line = _ProgressLine(stream)
    for finished in (1, 4):
        line(Progress(total=9, sent=5, finished=finished, failed=1, elapsed=2.0))
    line.close()
    text = stream.getvalue()
    assert "sent 5/9  finished 4  in flight 1  errors 1  elapsed 2.0 s" in text
    if stream.isatty():
        assert text.count("\r\x1b[K") == 2 and text.endswith("\n") and text.count("\n") == 1
    else:
        assert "\r" not in text and text.count("\n") == 2 and line.interval == 2.0
