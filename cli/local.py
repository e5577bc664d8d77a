"""The child processes of `ecoserve up` on 127.0.0.1: their commands, free ports, waiting until one answers, and
stopping them in an order that sends no new work to what stops next."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

WORKER_FLAGS = ("model_preset", "gpu", "tp", "pp", "tp_link")
ROLES = ("worker", "router", "gateway")  # started in this order, stopped in the reverse one


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


def router_command(args: argparse.Namespace, port: int, workers: Sequence[str]) -> list[str]:
    """A router with `up`'s routing flags; `workers` says where its workers come from (`--workers URL,...` or
    `--workers-file FILE`)."""
    cmd = [*_cli(), "router", "--host", "127.0.0.1", "--port", str(port), *workers]
    for name in (*WORKER_FLAGS, "ttft", "tpot", "attainment", "slack_aggregate", "kv_reservation", "queue_limit"):
        cmd += _flag(name, getattr(args, name))
    cmd += _flag("max_batched_tokens", args.max_batched_tokens) + _flag("hold_timeout", args.hold_timeout)
    cmd += _flag("window", args.window)
    if args.prefill_table:
        cmd += _flag("prefill_table", args.prefill_table)
    return cmd


def gateway_command(port: int, routers_file: Path) -> list[str]:
    return [*_cli(), "gateway", "--host", "127.0.0.1", "--port", str(port), "--routers-file", str(routers_file)]


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


def stop_all(procs: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
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


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class PortPool:
    """Ports from `first` upward that nothing is bound to when asked; none is handed out twice, so a new child
    never races a stopped one's lingering socket."""

    def __init__(self, first: int) -> None:
        self._next = first

    def take(self) -> int:
        while self._next <= 65535:
            port, self._next = self._next, self._next + 1
            if port_free(port):
                return port
        raise RuntimeError("no free port left on 127.0.0.1")


class Children:
    """Every process running now, with its role: what the watchdog checks and what shutdown stops."""

    def __init__(self) -> None:
        self._roles: dict[subprocess.Popen, str] = {}

    def start(self, role: str, cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd)
        self._roles[proc] = role
        return proc

    def exited(self) -> str | None:
        """What a child that ended without being asked to looks like, if one did."""
        for proc, role in self._roles.items():
            if proc.poll() is not None:
                return f"a {role} (pid {proc.pid}) exited with status {proc.returncode}"
        return None

    def release(self, proc: subprocess.Popen) -> None:
        """No longer watch `proc` (it is about to be stopped on purpose)."""
        del self._roles[proc]

    def stop_all(self) -> None:
        stop_all(sorted(self._roles, key=lambda p: ROLES.index(self._roles[p])))
