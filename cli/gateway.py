"""`ecoserve gateway`: the overall scheduler in front of the routers of a group."""

from __future__ import annotations

import argparse

from .serve import add_discovery_flags, add_shutdown_flag, positive_float, run_app, url_source


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gateway",
        help="run the overall scheduler in front of a group's routers",
        description="Forward each request to the router (macro instance) reporting the most headroom.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    add_discovery_flags(p, "--routers", "router")
    p.add_argument("--poll-interval", type=positive_float, default=1.0, help="seconds between status polls")
    p.add_argument("--log-level", default="warning")
    add_shutdown_flag(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ecoserve.router.gateway import create_gateway

    source = url_source(args, "--routers", "gateway")
    app = create_gateway(source, args.poll_interval)
    return run_app(app, args.host, args.port, args.log_level, args.shutdown_grace)
