"""`ecoserve up`: a whole macro instance on this machine — N simulated workers and a router on 127.0.0.1 (with
--autoscale, a group of them scaled by the mitosis planner: see autoscale.py).

Each part is a real process speaking real HTTP, started with the same subcommands a cluster runs, so what
works here works there. Ctrl-C (or SIGTERM) stops every child cleanly.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from . import autoscale
from .local import router_command, stop_all, wait_ready, worker_command
from .router import add_router_flags
from .serve import add_cost_model_flags, non_negative_float, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="run a local macro instance (simulated workers + router) on 127.0.0.1",
        description="Start N simulated workers and one router on 127.0.0.1, print the OpenAI base URL, and "
        "run until Ctrl-C. No GPU and no cluster needed. With --autoscale: a gateway, a router per macro instance "
        "and mitosis scaling of the workers with the load.",
    )
    p.add_argument("--instances", type=positive_int, default=4, help="workers in the macro instance (default 4)")
    p.add_argument(
        "--port", type=int, default=8000, help="the router's (--autoscale: gateway's) port; the rest take the next ones"
    )
    p.add_argument("--engine", choices=["sim"], default="sim")
    add_cost_model_flags(p)
    p.add_argument("--kv-blocks", type=positive_int, help="KV blocks per worker (default: from GPU memory)")
    p.add_argument(
        "--time-scale", type=non_negative_float, default=1.0, help="multiply step times (0: instant workers)"
    )
    p.add_argument("--startup-timeout", type=positive_float, default=60.0)
    add_router_flags(p)
    autoscale.add_autoscale_flags(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    settings = autoscale.mitosis_settings(args)
    if settings is not None:
        return autoscale.run(args, settings)
    worker_urls = [f"http://127.0.0.1:{args.port + 1 + k}" for k in range(args.instances)]
    procs: list[subprocess.Popen] = []
    stop = {"requested": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for k in range(args.instances):
            procs.append(subprocess.Popen(worker_command(args, args.port + 1 + k)))
        for url in worker_urls:
            wait_ready(f"{url}/health", procs, args.startup_timeout)
        procs.append(subprocess.Popen(router_command(args, args.port, ["--workers", ",".join(worker_urls)])))
        wait_ready(f"http://127.0.0.1:{args.port}/ready", procs, args.startup_timeout)
        print(
            f"ecoserve up: {args.instances} simulated workers ({args.model_preset.name} on {args.gpu.name}) "
            "behind the router.\n"
            f"  OpenAI base URL: http://127.0.0.1:{args.port}/v1\n"
            f"  metrics: http://127.0.0.1:{args.port}/metrics   status: http://127.0.0.1:{args.port}/ecoserve/status\n"
            "  Ctrl-C to stop.",
            flush=True,
        )
        while not stop["requested"]:
            if any(p.poll() is not None for p in procs):
                print("ecoserve up: a child process exited; stopping.", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as err:
        print(f"ecoserve up: {err}", file=sys.stderr)
        return 1
    finally:
        stop_all(procs)
