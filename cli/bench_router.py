"""`ecoserve bench-router`: what the router adds, in one run, over instant-response simulated workers."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

from .local import stop_all, wait_ready
from .serve import positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-router",
        help="measure the router's added latency and streaming throughput (instant workers)",
        description="Start `ecoserve up` with instant-response workers, then send the same workloads straight to "
        "one worker and through the router: a light Poisson load for TTFT (added latency) and a burst for "
        "the streaming throughput one router process sustains.",
    )
    p.add_argument("--instances", type=positive_int, default=2)
    p.add_argument("--port", type=int, default=8900, help="router port; workers take the next ones")
    p.add_argument("--requests", type=positive_int, default=300, help="requests of the latency phase")
    p.add_argument("--rate", type=positive_float, default=20.0, help="req/s of the latency phase")
    p.add_argument("--burst", type=positive_int, default=200, help="concurrent requests of the throughput phase")
    p.add_argument("--prompt-tokens", type=positive_int, default=32)
    p.add_argument("--output-tokens", type=positive_int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ecoserve.bench.overhead import added_latency, burst_workload, format_table, measure, poisson_workload

    cmd = [sys.executable, "-m", "ecoserve.cli", "up", "--instances", str(args.instances), "--port", str(args.port)]
    proc = subprocess.Popen([*cmd, "--time-scale", "0"], stdout=subprocess.DEVNULL)
    router_url = f"http://127.0.0.1:{args.port}"
    direct_url = f"http://127.0.0.1:{args.port + 1}"
    try:
        wait_ready(f"{router_url}/ready", [proc], 60.0)
        print(f"bench-router: {args.instances} instant workers behind {router_url}", file=sys.stderr, flush=True)
        latency = poisson_workload(args.requests, args.rate, args.prompt_tokens, args.output_tokens, args.seed)
        burst = burst_workload(args.burst, args.prompt_tokens, args.output_tokens)
        results = asyncio.run(measure(direct_url, router_url, latency, burst))
    except RuntimeError as err:
        print(f"ecoserve bench-router: {err}", file=sys.stderr)
        return 1
    finally:
        stop_all([proc])
    print(format_table(results))
    if args.json is not None:
        payload = {name: r.to_json() for name, r in results.items()} | {"added_ttft_s": added_latency(results)}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0
