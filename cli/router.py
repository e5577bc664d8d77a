"""`ecoserve router`: the macro-instance scheduler in front of a set of workers."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx

from ecoserve.brain.book import MacroBook
from ecoserve.brain.costmodel import load_prefill_table
from ecoserve.brain.macro import MacroScheduler, MacroSchedulerSettings, SlackAggregate
from ecoserve.brain.predictor import QuantilePredictor
from ecoserve.brain.state import SLO, KVReservation
from ecoserve.brain.window import SloWindow

from .serve import (
    add_cost_model_flags,
    add_discovery_flags,
    add_shutdown_flag,
    cost_model,
    fraction,
    positive_float,
    positive_int,
    run_app,
    url_source,
)


def add_slo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ttft", type=positive_float, default=5.0, help="TTFT SLO in seconds (default 5)")
    p.add_argument("--tpot", type=positive_float, default=0.1, help="TPOT SLO in seconds (default 0.1)")
    p.add_argument("--attainment", type=fraction, default=0.9, help="SLO attainment target (default 0.9)")


def add_router_flags(p: argparse.ArgumentParser) -> None:
    """Routing settings, shared with `ecoserve up`."""
    add_slo_flags(p)
    p.add_argument(
        "--slack-aggregate", choices=[a.value for a in SlackAggregate], default=SlackAggregate.QUANTILE.value
    )
    p.add_argument(
        "--kv-reservation", choices=[k.value for k in KVReservation], default=KVReservation.PROMPT_AND_OUTPUT.value
    )
    p.add_argument("--queue-limit", type=int, default=1024, help="held requests before 429 (default 1024)")
    p.add_argument("--max-batched-tokens", type=positive_int, default=8192, help="the workers' prefill token budget")
    p.add_argument("--prefill-table", type=Path, help="measured prompt_len,prefill_time_s CSV to price prefills")
    p.add_argument("--hold-timeout", type=positive_float, default=60.0, help="seconds a request may be held (503)")
    p.add_argument("--window", type=positive_float, default=60.0, help="seconds of the SLO statistics window")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "router",
        help="run the macro-instance router (adaptive routing, rolling activation)",
        description="OpenAI-compatible router over one macro instance's workers: adaptive SLO-aware routing "
        "with rolling activation, a bounded hold queue (429 past it), Prometheus metrics.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    add_discovery_flags(p, "--workers", "worker")
    add_router_flags(p)
    add_cost_model_flags(p)
    p.add_argument("--log-level", default="warning")
    add_shutdown_flag(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ecoserve.router.app import create_app

    app = create_app(build_router(args), url_source(args, "--workers", "router"))
    return run_app(app, args.host, args.port, args.log_level, args.shutdown_grace)


def build_router(args: argparse.Namespace):
    """A factory for the Router around the app's HTTP client, from the routing and cost-model flags."""
    from ecoserve.router.core import Router, RouterSettings
    from ecoserve.router.metrics import RouterMetrics

    if args.queue_limit < 0:
        raise SystemExit("ecoserve router: --queue-limit must be >= 0")
    slo = SLO(args.ttft, args.tpot, args.attainment)
    model = cost_model(args)
    if args.prefill_table is not None:
        try:
            model = load_prefill_table(args.prefill_table, model)
        except (OSError, ValueError) as err:
            raise SystemExit(f"ecoserve router: --prefill-table: {err}") from None
    settings = MacroSchedulerSettings(
        slo,
        SlackAggregate(args.slack_aggregate),
        KVReservation(args.kv_reservation),
        args.queue_limit,
        args.max_batched_tokens,
    )

    def build(client: httpx.AsyncClient) -> Router:
        book = MacroBook(MacroScheduler(settings, model), QuantilePredictor(), SloWindow(slo, args.window))
        return Router(book, RouterMetrics(), client, RouterSettings(hold_timeout=args.hold_timeout))

    return build
