"""`ecoserve gateway`: the overall scheduler in front of the routers of a group."""

from __future__ import annotations

import argparse

from .serve import positive_float, run_app


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gateway",
        help="run the overall scheduler in front of a group's routers",
        description="Forward each request to the router (macro instance) reporting the most headroom.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--routers", required=True, help="comma-separated router URLs")
    p.add_argument("--poll-interval", type=positive_float, default=1.0, help="seconds between status polls")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ecoserve.router.gateway import create_gateway

    urls = [u.strip() for u in args.routers.split(",") if u.strip()]
    if not urls:
        raise SystemExit("ecoserve gateway: --routers: give at least one router URL")
    return run_app(create_gateway(urls, args.poll_interval), args.host, args.port, args.log_level)
