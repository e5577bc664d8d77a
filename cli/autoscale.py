"""`ecoserve up --autoscale`: mitosis scaling of local processes, by the planner the operator and the simulator use.

A gateway on --port fronts one router per macro instance. Each router follows a file listing its workers, and
the gateway one listing the routers, so moving a worker to another macro instance is rewriting two files: the
worker process (with its KV cache and running requests) stays. Every --scale-interval seconds the supervisor
reads each router's /ecoserve/status, asks the planner for one step and carries it out before planning again;
a round with a router that does not answer is skipped rather than planned on partial data.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ecoserve.brain.mitosis import (
    Action,
    MacroObservation,
    MitosisPlanner,
    MitosisSettings,
    ScalingDecision,
    Sizing,
    sibling_name,
)
from ecoserve.brain.state import SLO
from ecoserve.router.discovery import write_url_file
from ecoserve.router.upstream import probe_worker

from .local import Children, PortPool, gateway_command, router_command, stop_all, worker_command
from .serve import non_negative_float, positive_float, positive_int

POLL = 0.25  # seconds between checks while a step waits for something


def group_name(text: str) -> str:
    """An argparse type: a DNS label, as a MacroInstance's group (it also names files)."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", text):
        raise argparse.ArgumentTypeError(f"lower-case letters, digits and '-' (at most 42), got {text!r}")
    return text


# The flags that mean something only with --autoscale: (type, default, help). They parse to None when not
# given, so that one given without --autoscale is an error; mitosis_settings fills in the defaults.
FLAGS: dict[str, tuple[Callable[[str], Any], Any, str]] = {
    "--group": (group_name, "local", "name of the first macro instance; a split's are GROUP-2, GROUP-3, ..."),
    "--min-instances": (positive_int, 1, "N_l, fewest workers in a macro instance"),
    "--max-instances": (positive_int, 4, "N_u, most workers in a macro instance (a full one splits)"),
    "--max-total-instances": (positive_int, None, "most workers in all"),
    "--scale-interval": (positive_float, 10, "seconds between planner rounds"),
    "--cooldown": (non_negative_float, 30, "seconds after a scaling step before the next"),
    "--sizing": (Sizing, Sizing.CAPACITY, "instances per grow: capacity (as many as needed) or one-at-a-time"),
    "--max-grow-step": (positive_int, 4, "most workers one grow starts (--sizing capacity)"),
    "--drain-timeout": (positive_float, 60, "seconds a leaving worker or router may take to finish its requests"),
}


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def add_autoscale_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("mitosis scaling")
    a.add_argument(
        "--autoscale",
        action="store_true",
        help="a gateway on --port and a router per macro instance; grow, shrink, split and merge with the load",
    )
    for flag, (kind, default, what) in FLAGS.items():
        a.add_argument(flag, type=kind, help=f"{what} (default: {'no limit' if default is None else default})")


def mitosis_settings(args: argparse.Namespace) -> MitosisSettings | None:
    """The planner's settings for --autoscale (filling in the defaults), None without it; a bad combination is
    an error naming its flags."""
    given = [flag for flag in FLAGS if getattr(args, _dest(flag)) is not None]
    if not args.autoscale:
        if given:
            raise SystemExit(f"ecoserve up: {given[0]} needs --autoscale")
        return None
    for flag, (_, default, _) in FLAGS.items():
        if flag not in given:
            setattr(args, _dest(flag), default)
    try:
        settings = MitosisSettings(
            SLO(args.ttft, args.tpot, args.attainment),
            args.min_instances,
            args.max_instances,
            args.max_total_instances,
            args.cooldown,
            sizing=args.sizing,
            max_grow_step=args.max_grow_step,
        )
    except ValueError as err:
        raise SystemExit(f"ecoserve up: --min-instances/--max-instances: {err}") from None
    if not args.min_instances <= args.instances <= args.max_instances:
        raise SystemExit(
            f"ecoserve up: --instances {args.instances} is outside --min-instances {args.min_instances} "
            f"to --max-instances {args.max_instances}"
        )
    if args.max_total_instances is not None and args.max_total_instances < args.instances:
        raise SystemExit(f"ecoserve up: --max-total-instances {args.max_total_instances} is below --instances")
    return settings


def run(args: argparse.Namespace, settings: MitosisSettings) -> int:
    try:
        return asyncio.run(_main(args, settings))
    except KeyboardInterrupt:
        return 0


async def _main(args: argparse.Namespace, settings: MitosisSettings) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with tempfile.TemporaryDirectory(prefix="ecoserve-up-") as folder:
        async with httpx.AsyncClient(trust_env=False) as client:
            supervisor = Supervisor(args, MitosisPlanner(settings), Path(folder), client)
            try:
                return await supervisor.run()
            except asyncio.CancelledError:
                return 0
            finally:
                supervisor.children.stop_all()


class ChildExited(RuntimeError):
    """A child process ended without being asked to: everything stops."""


@dataclass(slots=True)
class Child:
    url: str
    proc: subprocess.Popen

    def __str__(self) -> str:
        return f"{self.url} (pid {self.proc.pid})"


@dataclass(slots=True)
class Macro:
    """A macro instance: its router, the workers its file lists (a leaving worker is no longer one)."""

    name: str
    router: Child
    workers: list[Child]
    file: Path


class Supervisor:
    """The group's processes and files, and the carrying out of the planner's steps, one at a time."""

    def __init__(self, args: argparse.Namespace, planner: MitosisPlanner, folder: Path, client: httpx.AsyncClient):
        self.args = args
        self.planner = planner
        self.folder = folder
        self.client = client
        self.children = Children()
        self.ports = PortPool(args.port + 1)
        self.macros: dict[str, Macro] = {}
        self.gateway_url = f"http://127.0.0.1:{args.port}"
        self.gateway_file = folder / "gateway.urls"
        self.last_change: float | None = None
        self.started = time.monotonic()

    async def run(self) -> int:
        """Start the group and scale it until cancelled; 1 when a child exits or a step cannot be carried out."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch())
                await self._start()
                await self._scale_forever()
        except* RuntimeError as failed:
            print(f"ecoserve up: {failed.exceptions[0]}", file=sys.stderr, flush=True)
        return 1  # scaling ends only by an error or by cancellation (Ctrl-C, SIGTERM: see _main)

    async def _watch(self) -> None:
        while (exited := self.children.exited()) is None:
            await asyncio.sleep(0.5)
        raise ChildExited(f"{exited}; stopping")

    # --- processes -----------------------------------------------------------------------------------

    def _spawn(self, role: str, command: Callable[[int], list[str]]) -> Child:
        port = self.ports.take()
        return Child(f"http://127.0.0.1:{port}", self.children.start(role, command(port)))

    async def _until(self, check: Callable[[], Awaitable[bool]], deadline: float, times: int = 1) -> bool:
        """Whether `check` held `times` checks in a row before the `deadline` (time.monotonic)."""
        streak = 0
        while True:
            streak = streak + 1 if await check() else 0
            if streak >= times:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL)

    async def _answers(self, url: str) -> bool:
        try:
            return (await self.client.get(url, timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def _ready(self, url: str) -> None:
        if not await self._until(lambda: self._answers(url), time.monotonic() + self.args.startup_timeout):
            raise RuntimeError(f"{url} not ready after {self.args.startup_timeout:.0f} s")

    async def _start_workers(self, count: int) -> list[Child]:
        workers = [self._spawn("worker", lambda port: worker_command(self.args, port)) for _ in range(count)]
        for worker in workers:
            await self._ready(f"{worker.url}/health")
        return workers

    async def _stop(self, child: Child) -> None:
        self.children.release(child.proc)
        await asyncio.to_thread(stop_all, [child.proc])

    async def _status(self, url: str) -> dict[str, Any] | None:
        try:
            resp = await self.client.get(f"{url}/ecoserve/status", timeout=2.0)
            return resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async def _dropped(self, front: str, key: str, url: str) -> bool:
        """Whether the router or gateway at `front` answers and no longer lists `url` under `key`."""
        status = await self._status(front)
        return status is not None and all(item["url"] != url for item in status[key])

    async def _let_finish(self, front: str, key: str, url: str, done: Callable[[], Awaitable[bool]]) -> bool:
        """Wait until `front` no longer lists `url` (it re-reads its file within a poll, and may send `url` new
        requests until then), then until `done` holds twice in a row (a request sent just before may still be
        on its way); False when --drain-timeout passes first."""
        deadline = time.monotonic() + self.args.drain_timeout
        left = await self._until(lambda: self._dropped(front, key, url), deadline)
        return left and await self._until(done, deadline, times=2)

    # --- the group -----------------------------------------------------------------------------------

    def _write(self, macro: Macro) -> None:
        write_url_file(macro.file, [w.url for w in macro.workers])

    def _write_gateway(self) -> None:
        write_url_file(self.gateway_file, [m.router.url for m in self.macros.values()])

    async def _new_macro(self, name: str, workers: list[Child]) -> Macro:
        """A router over `workers`, ready; the gateway does not send it anything yet."""
        file = self.folder / f"{name}.urls"
        write_url_file(file, [w.url for w in workers])
        router = self._spawn("router", lambda port: router_command(self.args, port, ["--workers-file", str(file)]))
        await self._ready(f"{router.url}/ready")
        self.macros[name] = macro = Macro(name, router, workers, file)
        return macro

    async def _start(self) -> None:
        args = self.args
        first = await self._new_macro(args.group, await self._start_workers(args.instances))
        self._write_gateway()
        gateway = self.children.start("gateway", gateway_command(args.port, self.gateway_file))
        await self._ready(f"{self.gateway_url}/ready")
        bound = "no limit" if args.max_total_instances is None else f"at most {args.max_total_instances}"
        print(
            f"ecoserve up: autoscaling group {args.group} ({args.model_preset.name} on {args.gpu.name}, simulated)\n"
            f"  OpenAI base URL: {self.gateway_url}/v1\n"
            f"  gateway: {self.gateway_url} (pid {gateway.pid}), status at /ecoserve/status\n"
            f"  router {first.name}: {first.router}\n"
            + "".join(f"  worker of {first.name}: {w}\n" for w in first.workers)
            + f"  {args.min_instances} to {args.max_instances} workers per macro instance, {bound} in all; planner "
            f"every {args.scale_interval:g} s, cooldown {args.cooldown:g} s\n"
            "  Ctrl-C to stop.",
            flush=True,
        )

    # --- scaling -------------------------------------------------------------------------------------

    async def _scale_forever(self) -> None:
        while True:
            await asyncio.sleep(self.args.scale_interval)
            observations = await self._observe()
            if observations is None:
                continue
            decision = self.planner.plan(observations, time.monotonic(), self.last_change)
            if decision.action is Action.NONE:
                continue
            began = time.monotonic()
            done = await self._carry_out(decision)
            self.last_change = time.monotonic()
            self._report(decision, done, self.last_change - began)

    async def _observe(self) -> list[MacroObservation] | None:
        observations = []
        for macro in self.macros.values():
            status = await self._status(macro.router.url)
            try:
                observations.append(MacroObservation.from_json(macro.name, len(macro.workers), status["planner"]))
            except (TypeError, KeyError, ValueError):  # no answer (None), or not the figures a router reports
                print(f"ecoserve up: no status from {macro.router} of {macro.name}; round skipped", file=sys.stderr)
                return None
        return observations

    async def _carry_out(self, d: ScalingDecision) -> str:
        match d.action:
            case Action.GROW:
                return await self._grow(self.macros[d.target], d.add)
            case Action.SHRINK:
                return await self._shrink(self.macros[d.target])
            case Action.SPLIT:
                return await self._split(self.macros[d.target], d.move, d.add)
            case Action.MERGE:
                return await self._merge(self.macros[d.source], self.macros[d.target], d.remove)
        raise AssertionError(d.action)

    async def _grow(self, macro: Macro, add: int) -> str:
        workers = await self._start_workers(add)
        macro.workers += workers
        self._write(macro)
        return f"started {_plural(add, 'worker')} {', '.join(map(str, workers))}"

    async def _shrink(self, macro: Macro) -> str:
        """Take the least busy worker out of the router's file, let it finish what it runs, then stop it."""
        loads = {}
        for w in macro.workers:
            info = await probe_worker(self.client, w.url)
            loads[w.url] = -1 if info is None else info.requests  # one that does not answer goes first
        worker = min(reversed(macro.workers), key=lambda w: loads[w.url])  # ties: the newest
        macro.workers.remove(worker)
        self._write(macro)
        idle = await self._let_finish(macro.router.url, "instances", worker.url, lambda: self._idle(worker))
        await self._stop(worker)
        return f"drained worker {worker}" + ("" if idle else f" (still busy after {self.args.drain_timeout:g} s)")

    async def _idle(self, worker: Child) -> bool:
        info = await probe_worker(self.client, worker.url)
        return info is not None and info.requests == 0

    async def _split(self, source: Macro, move: int, add: int) -> str:
        """The last `move` workers of `source` and `add` new ones become a sibling macro instance."""
        keep = len(source.workers) - move
        movers = source.workers[keep:]
        new = await self._start_workers(add)
        sibling = await self._new_macro(sibling_name(self.args.group, self.macros), [*movers, *new])
        source.workers = source.workers[:keep]
        self._write(source)
        self._write_gateway()
        moved = ", ".join(map(str, movers)) or "no worker"
        started = ", ".join(map(str, new))
        return f"moved {moved} to {sibling.name} (router {sibling.router}), started {_plural(add, 'worker')} {started}"

    async def _merge(self, source: Macro, target: Macro, remove: int) -> str:
        """`source`'s workers join `target`; its router leaves the gateway, finishes what it holds and stops."""
        target.workers += source.workers
        self._write(target)
        del self.macros[source.name]
        self._write_gateway()
        url = source.router.url
        quiet = await self._let_finish(self.gateway_url, "routers", url, lambda: self._in_flight_done(url))
        await self._stop(source.router)
        source.file.unlink()
        moved = ", ".join(map(str, source.workers))
        done = [f"moved {moved} to {target.name}, stopped router {source.router}"]
        if not quiet:
            done[0] += f" (requests still in flight after {self.args.drain_timeout:g} s)"
        done += [await self._shrink(target) for _ in range(remove)]
        return "; ".join(done)

    async def _in_flight_done(self, router: str) -> bool:
        status = await self._status(router)
        return status is not None and status["in_flight"] == 0

    def _report(self, d: ScalingDecision, done: str, seconds: float) -> None:
        names = f"{d.source} into {d.target}" if d.action is Action.MERGE else d.target
        figures = " ".join(f"{k}={v:.3g}" for k, v in d.figures)
        sizes = " ".join(f"{m.name}={len(m.workers)}" for m in self.macros.values())
        print(
            f"ecoserve up: [{time.monotonic() - self.started:.1f} s] {d.action.value} {names}: {d.reason}"
            f"{f' ({figures})' if figures else ''}; {done}; took {seconds:.1f} s; sizes {sizes}",
            flush=True,
        )


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else f"{n} {noun}s"
