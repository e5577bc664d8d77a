"""`ecoserve up`: a whole macro instance on this machine — N simulated workers and a router on 127.0.0.1.

Each part is a real process speaking real HTTP, started with the same subcommands a cluster runs, so what
works here works there. Ctrl-C (or SIGTERM) stops every child cleanly.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import httpx

from .router import add_router_flags
from .serve import add_cost_model_flags, non_negative_float, positive_float, positive_int

WORKER_FLAGS = ("model_preset", "gpu", "tp", "pp", "tp_link")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="run a local macro instance (simulated workers + router) on 127.0.0.1",
        description="Start N simulated workers and one router on 127.0.0.1, print the OpenAI base URL, and "
        "run until Ctrl-C. No GPU and no cluster needed.",
    )
    p.add_argument("--instances", type=positive_int, default=4, help="workers in the macro instance (default 4)")
    p.add_argument("--port", type=int, default=8000, help="the router's port; workers take the ports after it")
    p.add_argument("--engine", choices=["sim"], default="sim")
    add_cost_model_flags(p)
    p.add_argument("--kv-blocks", type=positive_int, help="KV blocks per worker (default: from GPU memory)")
    p.add_argument(
        "--time-scale", type=non_negative_float, default=1.0, help="multiply step times (0: instant workers)"
    )
    p.add_argument("--startup-timeout", type=positive_float, default=60.0)
    add_router_flags(p)
    p.set_defaults(handler=_run)


def _cli() -> list[str]:
    return [sys.executable, "-m", "ecoserve.cli"]


def _flag(name: str, value: object) -> list[str]:
    """A flag for a child process; presets are passed by name."""
    return [f"--{name.replace('_', '-')}", str(getattr(value, "name", value))]


def worker_command(args: argparse.Namespace, port: int) -> list[str]:
    cmd = [*_cli(), "worker", "--engine", args.engine, "--host", "127.0.0.1", "--port", str(port)]
    for name in WORKER_FLAGS:
        cmd += _flag(name, getattr(args, name))
    cmd += _flag("time_scale", args.time_scale) + _flag("max_num_batched_tokens", args.max_batched_tokens)
    if args.kv_blocks:
        cmd += _flag("kv_blocks", args.kv_blocks)
    return cmd


def router_command(args: argparse.Namespace, workers: Sequence[str]) -> list[str]:
    cmd = [*_cli(), "router", "--host", "127.0.0.1", "--port", str(args.port), "--workers", ",".join(workers)]
    for name in (*WORKER_FLAGS, "ttft", "tpot", "attainment", "slack_aggregate", "kv_reservation", "queue_limit"):
        cmd += _flag(name, getattr(args, name))
    cmd += _flag("max_batched_tokens", args.max_batched_tokens) + _flag("hold_timeout", args.hold_timeout)
    cmd += _flag("window", args.window)
    if args.prefill_table:
        cmd += _flag("prefill_table", args.prefill_table)
    return cmd


def wait_ready(url: str, procs: Sequence[subprocess.Popen], timeout: float) -> None:
    """Poll `url` until it answers 200; fail early if a child died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{' '.join(dead[0].args[3:5])} exited with status {dead[0].returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def _run(args: argparse.Namespace) -> int:
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
        procs.append(subprocess.Popen(router_command(args, worker_urls)))
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
        _stop_all(procs)


def _stop_all(procs: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM everyone (router first, so no new work reaches the workers), then SIGKILL stragglers."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
