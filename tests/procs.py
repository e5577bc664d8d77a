"""Real processes on 127.0.0.1 for end-to-end tests: free ports, start, wait until ready, always stop."""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import httpx

from ecoserve.cli.local import port_free

CLI = [sys.executable, "-m", "ecoserve.cli"]


def free_ports(n: int) -> list[int]:
    """Ports the OS says are free now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_range(span: int, low: int = 20000, high: int = 32000) -> int:
    """The first of `span` consecutive ports that are all free now, below Linux's ephemeral range (32768 up), so
    that no outgoing connection takes one between this check and a child binding it."""
    for first in random.sample(range(low, high - span), 200):
        if all(port_free(port) for port in range(first, first + span)):
            return first
    raise RuntimeError(f"no {span} free ports in a row between {low} and {high}")


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout} s")


def stop(procs: Sequence[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def running(args: Sequence[str], ready_url: str, timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([*CLI, *args])
    try:
        wait_http(ready_url, proc, timeout)
        yield proc
    finally:
        stop([proc])


@contextlib.contextmanager
def macro_instance(n: int, worker_args: Sequence[str] = (), router_args: Sequence[str] = ()) -> Iterator[dict]:
    """n simulated workers and a router, started separately so a test can kill one worker."""
    ports = free_ports(n + 1)
    urls = [f"http://127.0.0.1:{p}" for p in ports[1:]]
    workers: list[subprocess.Popen] = []
    try:
        for port in ports[1:]:
            workers.append(subprocess.Popen([*CLI, "worker", "--port", str(port), *worker_args]))
        for proc, url in zip(workers, urls, strict=True):
            wait_http(f"{url}/health", proc)
        router_cmd = ["router", "--port", str(ports[0]), "--workers", ",".join(urls), *router_args]
        with running(router_cmd, f"http://127.0.0.1:{ports[0]}/ready") as router:
            yield {
                "url": f"http://127.0.0.1:{ports[0]}",
                "workers": dict(zip(urls, workers, strict=True)),
                "router": router,
            }
    finally:
        stop(workers)
