"""Argument parsing and dispatch for `ecoserve <subcommand>`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from importlib.metadata import version

from . import bench, bench_router, gateway, operator_cmd, profile, router, simulate, up, worker

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecoserve",
        description="EcoServe on Kubernetes: partially disaggregated LLM serving on commodity GPU clusters.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('ecoserve')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    operator_cmd.add_parser(sub)
    profile.add_parser(sub)
    worker.add_parser(sub)
    router.add_parser(sub)
    up.add_parser(sub)
    gateway.add_parser(sub)
    bench.add_parser(sub)
    bench_router.add_parser(sub)
    simulate.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_any_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    handler: Handler = args.handler
    return handler(args)
