"""Argument parsing and dispatch for `ecoserve <subcommand>`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version

from . import bench, bench_router, gateway, profile, router, simulate, up, worker

Handler = Callable[[argparse.Namespace], int]

# Subcommands whose implementation lands with a later issue: (help, issue that brings it).
PLANNED: dict[str, tuple[str, int]] = {
    "operator": ("run the kopf operator for MacroInstance resources", 6),
}


def _planned(name: str, issue: int) -> Handler:
    def run(_: argparse.Namespace) -> int:
        print(
            f"ecoserve {name}: not available yet in this version (planned in issue #{issue}).",
            file=sys.stderr,
        )
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecoserve",
        description="EcoServe on Kubernetes: partially disaggregated LLM serving on commodity GPU clusters.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('ecoserve')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, issue) in PLANNED.items():
        p = sub.add_parser(name, help=help_text, description=f"{help_text} (planned in issue #{issue})")
        p.set_defaults(handler=_planned(name, issue), accepts_any_flags=True)
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
