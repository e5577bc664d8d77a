"""Where the routers' workers and the gateways' routers come from: a fixed list (local mode), a file a local
supervisor rewrites as it scales (`ecoserve up --autoscale`), or the pods a label selector picks through the
Kubernetes API, followed as they come, go, turn ready or start draining.

Each is a `UrlSource`: an async iterator of URL sets, each the complete current set. The Kubernetes one lists,
then blocks on a watch until anything changes (or a resync period passes) and lists again, in a daemon thread
so that the official client's blocking calls neither stall the event loop nor hold up shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from ecoserve.operator.plan import is_ready

UrlSource = Callable[[], AsyncIterator[list[str]]]
log = logging.getLogger("ecoserve.discovery")


async def follow(updates: AsyncIterator[list[str]], apply: Callable[[list[str]], Awaitable[None]]) -> None:
    """Apply every further URL set (the first one is applied before serving)."""
    async for urls in updates:
        await apply(urls)


def static_urls(urls: list[str]) -> UrlSource:
    async def once() -> AsyncIterator[list[str]]:
        yield urls

    return once


def read_url_file(path: Path) -> list[str]:
    """The URLs in a file, one per line or comma-separated (blank entries ignored)."""
    return [u.strip() for u in path.read_text().replace("\n", ",").split(",") if u.strip()]


def write_url_file(path: Path, urls: Sequence[str]) -> None:
    """Replace the file at once (temporary file + rename), so a reader sees the old list or the new one, never
    a half-written one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(f"{url}\n" for url in urls))
    os.replace(temporary, path)


def _first_urls(path: Path) -> list[str]:
    urls = read_url_file(path)
    if not urls:
        raise ValueError(f"no URLs in {path}")
    return urls


def file_urls(path: Path, poll_interval: float = 0.5) -> UrlSource:
    """The URLs listed in `path`, then the new list whenever the file's list changes (read every
    `poll_interval` seconds). A missing or empty file is an error at once, so that a typo fails the command
    rather than a background task; later, a file that cannot be read keeps the last set."""
    _first_urls(path)

    async def follow() -> AsyncIterator[list[str]]:
        last = _first_urls(path)
        yield last
        while True:
            await asyncio.sleep(poll_interval)
            try:
                urls = read_url_file(path)
            except OSError as err:
                log.warning("cannot read %s, keeping the last %d URLs: %s", path, len(last), err)
                continue
            if urls != last:
                last = urls
                yield urls

    return follow


def matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selector terms (`k=v`, `k==v`, `k!=v`, `k`, `!k`), all of which must hold."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            ok = labels.get(key.strip()) != value.strip()
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            ok = labels.get(key.strip()) == value.strip()
        elif term.startswith("!"):
            ok = term[1:].strip() not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def pod_urls(pods: list[dict[str, Any]], selector: str, port: int) -> list[str]:
    """http://IP:port of every ready pod the selector picks (checked here too: a watch may not filter)."""
    urls = []
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if ip and is_ready(pod) and matches(pod["metadata"].get("labels") or {}, selector):
            urls.append(f"http://{ip}:{port}")
    return sorted(urls)


def kube_pods(namespace: str, selector: str, port: int, resync_seconds: int = 30) -> UrlSource:
    """The ready pods `selector` picks in `namespace`, re-read after every watch event."""

    async def follow() -> AsyncIterator[list[str]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[str]] = asyncio.Queue()
        stop = threading.Event()

        def publish(urls: list[str]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, urls)

        thread = threading.Thread(
            target=_list_and_watch,
            args=(namespace, selector, port, resync_seconds, publish, stop),
            name=f"discovery:{selector}",
            daemon=True,
        )
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()

    return follow


def _list_and_watch(
    namespace: str,
    selector: str,
    port: int,
    resync_seconds: int,
    publish: Callable[[list[str]], None],
    stop: threading.Event,
) -> None:
    import kubernetes

    from ecoserve.operator.kube import load_config

    last: list[str] | None = None
    api = None
    while not stop.is_set():
        try:
            if api is None:
                load_config()
                api = kubernetes.client.CoreV1Api()
            listed = api.list_namespaced_pod(namespace, label_selector=selector)
            pods = api.api_client.sanitize_for_serialization(listed)["items"]
            urls = pod_urls(pods, selector, port)
            if urls != last:
                publish(urls)
                last = urls
            watch = kubernetes.watch.Watch()
            for _ in watch.stream(
                api.list_namespaced_pod,
                namespace,
                label_selector=selector,
                resource_version=listed.metadata.resource_version,
                timeout_seconds=resync_seconds,
            ):
                watch.stop()  # something changed: list again for the whole current set
            stop.wait(0.2)  # at most five lists a second, however busy the pods are
        except Exception as err:  # the API server restarting or RBAC missing: keep the last set and retry
            log.warning("pod discovery (%s in %s) failed, retrying: %s", selector, namespace, err)
            stop.wait(2.0)
