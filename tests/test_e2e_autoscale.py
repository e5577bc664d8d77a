"""`ecoserve up --autoscale` end to end: the real supervisor, gateway, routers and simulated workers on 127.0.0.1,
driven by `ecoserve bench`'s load generator with a load that rises past what one macro instance can serve and
then falls. The group must grow, split (moving a running worker, not restarting it), then shrink and merge, and
every request must succeed throughout. Slow workers and long requests then show that a shrink and a merge stop a
worker or router only once its requests are done, and that stopping the supervisor stops every child."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from procs import CLI, free_port_range, stop, wait_http

from ecoserve.bench.client import RequestResult, run_load
from ecoserve.bench.workload import WorkloadRequest

pytestmark = pytest.mark.e2e

# One worker holds 24 KV blocks of 16 tokens: four 96-token requests at a time, each decoding for ~1.6 s
# (64 tokens at 4x the modelled H100 step time), so ~2.4 req/s saturate it. N_u = 3: splitting a full macro
# instance of 3 moves one running worker (with N_u = 2 a split would move none).
FLAGS = [
    "--instances", "1", "--min-instances", "1", "--max-instances", "3", "--max-total-instances", "4",
    "--scale-interval", "1", "--cooldown", "3", "--drain-timeout", "30",
    "--window", "5", "--ttft", "1", "--tpot", "0.2",
    "--time-scale", "4", "--kv-blocks", "24",
]  # fmt: skip
STEP = re.compile(r"\] (?P<action>grow|shrink|split|merge) .*; took (?P<took>[\d.]+) s; sizes (?P<sizes>.*)$")
WORKER = re.compile(r"(http://127\.0\.0\.1:\d+) \(pid (\d+)\)")
SPLIT = re.compile(r"moved (?P<moved>.*) to (?P<sibling>[-a-z0-9]+) \(router (?P<router>http://[\d.:]+) ")


def ramp(rates: list[float], prompt: int, output: int, start: float = 0.0) -> list[WorkloadRequest]:
    """rates[k] requests, evenly spaced, in second k after `start`."""
    return [
        WorkloadRequest(start + k + j / rate, prompt, output)
        for k, rate in enumerate(rates)
        for j in range(round(rate))
    ]


# Rising to 4 req/s of short requests for 18 s, then 1 req/s of long ones (long enough that every macro instance
# always has decodes, whose saved TPOT is the planner's shrink signal) for 28 s.
WORKLOAD = ramp([1, 2, 3] + [4] * 15, 32, 64) + ramp([1] * 28, 32, 160, start=18)


@dataclass(frozen=True)
class Step:
    action: str
    line: str
    index: int  # of the line in the output
    end: float  # time.monotonic() when the line arrived
    took: float
    sizes: dict[str, int]


class Output:
    """The supervisor's stdout, read as it comes, each line with the time it arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def steps(self) -> list[Step]:
        steps = []
        for index, (at, line) in enumerate(list(self.lines)):
            if m := STEP.search(line):
                sizes = {name: int(size) for name, size in (pair.split("=") for pair in m["sizes"].split())}
                steps.append(Step(m["action"], line, index, at, float(m["took"]), sizes))
        return steps

    def wait_for(self, action: str, after: int, timeout: float) -> Step:
        """The first `action` step after the first `after` steps."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.steps()[after:] if s.action == action]
            if found:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(
            f"no {action} within {timeout} s; output so far:\n" + "\n".join(line for _, line in self.lines)
        )

    def pids(self, before: int | None = None) -> dict[str, int]:
        """Every worker/router URL with the pid it was first reported with (in the lines before `before`)."""
        seen: dict[str, int] = {}
        for _, line in self.lines[:before]:
            for url, pid in WORKER.findall(line):
                seen.setdefault(url, int(pid))
        return seen


def in_flight_during(results: list[RequestResult], bench_start: float, step: Step) -> int:
    """Requests in flight at some time while the step was carried out."""
    began = step.end - step.took
    return sum(1 for r in results if bench_start + r.sent < step.end and bench_start + r.end > began)


def routed(router: str) -> set[str]:
    return {i["url"] for i in httpx.get(f"{router}/ecoserve/status", timeout=5).json()["instances"]}


def until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@contextlib.contextmanager
def autoscaling(flags: list[str], ports: int) -> Iterator[tuple[str, Output]]:
    """`ecoserve up --autoscale` with `flags`, once its gateway is ready: its URL and the output; it must exit 0
    when stopped by SIGTERM at the end."""
    port = free_port_range(ports)
    proc = subprocess.Popen([*CLI, "up", "--autoscale", "--port", str(port), *flags], stdout=subprocess.PIPE, text=True)
    out = Output(proc)
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", proc, timeout=60)
        yield f"http://127.0.0.1:{port}", out
    finally:
        stop([proc])
    assert proc.returncode == 0
    for pid in out.pids().values():  # every child stopped with the supervisor
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_autoscale_grows_splits_merges_and_fails_no_request():
    with autoscaling(FLAGS, 20) as (gateway, out), cf.ThreadPoolExecutor(1) as pool:
        (first_router,) = [r["url"] for r in httpx.get(f"{gateway}/ecoserve/status", timeout=5).json()["routers"]]
        bench_start = time.monotonic()
        bench = pool.submit(asyncio.run, run_load(gateway, WORKLOAD, timeout=60))
        split = out.wait_for("split", 0, timeout=60)
        # Checked at once (the cooldown holds the group still for a few seconds): the moved worker is served by
        # the new router, no longer by the old one, and is the very process started before the split.
        m = SPLIT.search(split.line)
        assert m is not None, split.line
        moved = dict(WORKER.findall(m["moved"]))
        assert len(moved) == 1 and routed(m["router"]) >= set(moved)
        assert until(lambda: not routed(first_router) & set(moved))
        started = out.pids(before=split.index)
        for url, pid in moved.items():
            assert started[url] == int(pid)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert cmdline[cmdline.index(b"--port") + 1].decode() == url.rsplit(":", 1)[1]
        results = bench.result(timeout=120)
        merge = out.wait_for("merge", out.steps().index(split), timeout=40)

    steps = out.steps()
    before_split = steps[: steps.index(split)]
    assert "grow" in [s.action for s in before_split] and before_split[-1].sizes == {"local": 3}  # N_u, then split
    assert split.sizes == {"local": 2, "local-2": 2}
    assert len(merge.sizes) == len(steps[steps.index(merge) - 1].sizes) - 1
    failed = [(r.outcome, r.error) for r in results if r.outcome != "ok"]
    assert not failed, failed
    assert len(results) == len(WORKLOAD)
    assert in_flight_during(results, bench_start, split) > 0  # the split happened under load
    for step in steps:  # shown with -s
        print(f"{step.end - bench_start:5.1f} s, {in_flight_during(results, bench_start, step)} in flight: {step.line}")


# Steps of 0.1 s (16x the modelled H100's) and room for one 126-token request per worker: a request of 110 tokens
# decodes for 11 s, more than the 5 s a stopping server gives its open streams, so stopping a worker or a router
# that still serves one would cut it.
SLOW = ["--time-scale", "16", "--kv-blocks", "8", "--scale-interval", "1", "--window", "2", "--tpot", "1"]
LONG = WorkloadRequest(0.0, 16, 110)


def test_a_shrink_stops_its_worker_only_once_its_request_is_done():
    flags = ["--instances", "2", "--min-instances", "1", "--max-instances", "2", *SLOW]
    with autoscaling(flags, 10) as (gateway, out):
        sent = time.monotonic()
        # Idle, the group shrinks after three rounds; by then each worker decodes one of these.
        results = asyncio.run(run_load(gateway, [LONG, LONG], timeout=60))
        shrink = out.wait_for("shrink", 0, timeout=30)
    assert not [(r.outcome, r.error) for r in results if r.outcome != "ok"]
    first_done = sent + min(r.end for r in results)
    assert shrink.end - shrink.took < first_done < shrink.end


def test_a_merge_stops_the_old_router_only_once_its_request_is_done():
    """N_u = 1: a burst splits off a one-worker sibling; then each router serves a long request when the group,
    idle otherwise, merges."""
    flags = ["--instances", "1", "--min-instances", "1", "--max-instances", "1", "--max-total-instances", "2"]
    with autoscaling([*flags, "--cooldown", "3", "--ttft", "0.5", *SLOW], 12) as (gateway, out):
        (first_router,) = [r["url"] for r in httpx.get(f"{gateway}/ecoserve/status", timeout=5).json()["routers"]]
        burst = asyncio.run(run_load(gateway, [WorkloadRequest(0.0, 16, 16)] * 8, timeout=60))
        split = out.wait_for("split", 0, timeout=30)
        m = SPLIT.search(split.line)
        assert m is not None and m["moved"] == "no worker", split.line
        sent = time.monotonic()
        with cf.ThreadPoolExecutor(2) as pool:
            old, new = pool.map(lambda url: asyncio.run(run_load(url, [LONG], timeout=60)), [first_router, m["router"]])
        merge = out.wait_for("merge", out.steps().index(split), timeout=30)
    assert "merge local into local-2" in merge.line
    assert not [(r.outcome, r.error) for r in burst + old + new if r.outcome != "ok"]
    assert merge.end - merge.took < sent + old[0].end < merge.end


@pytest.mark.parametrize("end", ["ctrl-c", "a worker dies"])
def test_every_child_stops_with_the_supervisor(tmp_path, end):
    port = free_port_range(8)
    flags = ["--instances", "2", "--max-instances", "3", "--scale-interval", "60"]
    with (tmp_path / "stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [*CLI, "up", "--autoscale", "--port", str(port), *flags], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    out = Output(proc)
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", proc, timeout=60)
        assert until(lambda: any("Ctrl-C to stop" in line for _, line in out.lines))
        pids = out.pids()
        assert len(pids) == 4  # the gateway, the router and two workers
        worker = pids[f"http://127.0.0.1:{port + 1}"]
        if end == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        else:
            os.kill(worker, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop([proc])
    if end == "ctrl-c":
        assert proc.returncode == 0
    else:
        assert proc.returncode == 1
        assert f"a worker (pid {worker}) exited with status -9; stopping" in (tmp_path / "stderr").read_text()
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
