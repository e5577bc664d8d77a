"""`ecoserve up --autoscale`'s flags: every bad value or combination is refused before anything starts, naming
its flag."""

from __future__ import annotations

import pytest

from ecoserve.cli.autoscale import mitosis_settings
from ecoserve.cli.main import build_parser, main


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--min-instances", "3", "--max-instances", "4"], "--min-instances/--max-instances: splitting"),
        (["--min-instances", "5", "--max-instances", "4", "--instances", "5"], "--min-instances/--max-instances"),
        (["--instances", "5", "--max-instances", "4"], "--instances 5 is outside"),
        (["--instances", "1", "--min-instances", "2", "--max-instances", "4"], "--instances 1 is outside"),
        (["--instances", "3", "--max-total-instances", "2"], "--max-total-instances 2 is below --instances"),
    ],
)
def test_bad_bounds_name_their_flags(flags, named):
    with pytest.raises(SystemExit) as exc:
        main(["up", "--autoscale", *flags])
    assert str(exc.value.code).startswith(f"ecoserve up: {named}")


@pytest.mark.parametrize("flag", ["--min-instances", "--cooldown", "--group"])
def test_a_scaling_flag_without_autoscale_is_refused(flag):
    value = "local" if flag == "--group" else "2"
    with pytest.raises(SystemExit) as exc:
        main(["up", flag, value])
    assert exc.value.code == f"ecoserve up: {flag} needs --autoscale"


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--cooldown", "-1"), ("--scale-interval", "0"), ("--drain-timeout", "nan"), ("--group", "Bad_Name")],
)
def test_bad_values_are_argparse_errors_naming_the_flag(capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        main(["up", "--autoscale", flag, value])
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_defaults_fill_in_and_the_slo_is_the_routers():
    args = build_parser().parse_args(["up", "--autoscale", "--ttft", "2", "--tpot", "0.05", "--attainment", "0.8"])
    settings = mitosis_settings(args)
    assert settings is not None
    assert (settings.slo.ttft, settings.slo.tpot, settings.slo.attainment) == (2, 0.05, 0.8)
    assert (settings.min_instances, settings.max_instances, settings.max_total_instances) == (1, 4, None)
    assert (args.group, args.scale_interval, settings.cooldown, args.drain_timeout) == ("local", 10, 30, 60)


def test_without_autoscale_there_are_no_settings():
    assert mitosis_settings(build_parser().parse_args(["up"])) is None
