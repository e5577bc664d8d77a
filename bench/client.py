"""Open-loop load generation against an OpenAI-compatible endpoint, with per-token timing.

Every request is sent at its arrival time whatever happened to the earlier ones (open loop: a slow server
faces the same offered load, as in production), streamed, and timed chunk by chunk.

Exact lengths: `/v1/completions` gets the prompt as a list of `prompt_tokens` random token ids in
[1000, 30000) and `max_tokens = min_tokens = output_tokens` with `ignore_eos`, vLLM's extensions that make a
real model produce exactly that many tokens (a server that ignores them may stop early; the report counts
those as `wrong_length`). Random ids also keep prefix caching from flattering the server. `/v1/chat/completions`
(`api="chat"`) gets a text of `prompt_tokens` space-separated common words instead: the exact prompt length then
depends on the server's tokenizer and chat template (the simulated worker counts one token per word).

Timing: a chunk counts when it carries text, so TTFT is the first text and ITL the gaps between texts. A
chunk of empty text (vLLM holds back a token that ends inside a UTF-8 character) merges into the next gap;
token counts come from the server's final usage report, so TPOT stays exact.

Outcomes: `ok` (the stream ended with `data: [DONE]`), `rejected` (HTTP 429), `error` (another HTTP error
status, an error event in the stream, a transport error before the response, or a timeout), `truncated` (the
response started but its stream ended without `[DONE]`, the connection dropped included), `unsent` (the
global deadline came before its arrival time).

Bounds: each request gets `timeout` seconds in all, the run a global `deadline` (by default the last arrival
plus `timeout`, which no request outlives anyway), and the connection pool `max_connections`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np

from .workload import WorkloadRequest

Api = Literal["completions", "chat"]
Outcome = Literal["ok", "rejected", "error", "truncated", "unsent"]
APIS: tuple[Api, ...] = ("completions", "chat")
TOKEN_ID_RANGE = (1000, 30000)
# Common English words, each a single token in the usual BPE vocabularies when preceded by a space.
_COMMON = (
    "the of and to in is it that for on as with was he be at by this had not are but from or have an they which "
    "you were her all she there would their we him been has when who will more no if out so said what up its "
    "about into than them can only other new some could time these two may then do first any my now"
)
WORDS = tuple(_COMMON.split())


class EndpointError(RuntimeError):
    """The endpoint cannot be benchmarked at all (unreachable, or it serves no model)."""


@dataclass(frozen=True, slots=True)
class RequestResult:
    """What happened to one request; times are seconds from the start of the run (None: never happened)."""

    request: WorkloadRequest
    outcome: Outcome
    sent: float | None = None
    end: float | None = None
    chunk_times: tuple[float, ...] = ()  # arrival of each chunk that carried text; the first is the first token
    tokens: int = 0  # output tokens: the server's usage count, else the number of text chunks
    status: int | None = None
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.sent if self.chunk_times and self.sent is not None else None

    @property
    def e2e(self) -> float | None:
        return self.end - self.sent if self.end is not None and self.sent is not None else None

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first: (e2e − ttft)/(tokens − 1); None below 2 tokens."""
        ttft, e2e = self.ttft, self.e2e
        if ttft is None or e2e is None or self.tokens < 2:
            return None
        return (e2e - ttft) / (self.tokens - 1)

    @property
    def itls(self) -> tuple[float, ...]:
        """Gaps between consecutive text chunks (a chunk may carry several tokens)."""
        return tuple(b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False))


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot of a run for a progress display; `failed` counts every finished request that is not ok."""

    total: int
    sent: int
    finished: int
    failed: int
    elapsed: float

    @property
    def in_flight(self) -> int:
        return self.sent - self.finished


@dataclass(slots=True)
class _Counts:
    """The run's live counters (owned by one `run_load` call)."""

    sent: int = 0
    finished: int = 0
    failed: int = 0


@dataclass(slots=True)
class _Stream:
    """What one request observed so far; turned into a `RequestResult` when it ends, however it ends."""

    sent: float
    status: int | None = None
    chunk_times: list[float] = field(default_factory=list)
    usage_tokens: int | None = None
    done_at: float | None = None
    error: str | None = None
    failed: bool = False  # an error status, error event or timeout, as opposed to a cut stream


def base_url(url: str) -> str:
    """The server's root: `http://h:8000`, `http://h:8000/` and `http://h:8000/v1` all name the same server."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def _error_message(body: Any) -> str:
    """The message of an OpenAI (`{"error": {"message"}}`), vLLM (`{"message"}`) or FastAPI error body."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        for key in ("message", "detail"):
            if key in body:
                return str(body[key])
        if error is not None:
            return str(error)
    return str(body)[:200]


def _parse_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


async def discover_model(url: str, *, timeout: float = 30.0) -> str:
    """The first model `GET /v1/models` lists, as vLLM's benchmark does when no model is named."""
    endpoint = f"{base_url(url)}/v1/models"
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.get(endpoint)
    except httpx.HTTPError as err:
        raise EndpointError(f"{endpoint}: {type(err).__name__}: {err}") from None
    body = _parse_body(response.content)
    if response.status_code != 200:
        raise EndpointError(f"{endpoint}: HTTP {response.status_code}: {_error_message(body)}")
    models = body.get("data") if isinstance(body, dict) else None
    if not models or not isinstance(models[0], dict) or "id" not in models[0]:
        raise EndpointError(f"{endpoint}: no model listed; name one")
    return str(models[0]["id"])


def _payload(api: Api, model: str, request: WorkloadRequest, rng: np.random.Generator) -> dict[str, Any]:
    n = request.output_tokens
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": n,
        "min_tokens": n,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    if api == "chat":
        words = rng.choice(len(WORDS), size=request.prompt_tokens)
        body["messages"] = [{"role": "user", "content": " ".join(WORDS[i] for i in words)}]
    else:
        body["prompt"] = rng.integers(*TOKEN_ID_RANGE, size=request.prompt_tokens).tolist()
    return body


def _has_text(chunk: dict[str, Any]) -> bool:
    """Whether a chunk carries output text (chat streams open with a role-only chunk, and end with usage)."""
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if choice.get("text") or (isinstance(delta, dict) and delta.get("content")):
            return True
    return False


class _StreamError(Exception):
    """The server reported an error inside a 200 stream, or sent something that is not SSE JSON."""


def _observe(state: _Stream, line: str, now: float) -> None:
    """Fold one SSE line into the request's state (events of several lines are not used by these APIs)."""
    if not line.startswith("data:") or state.done_at is not None:
        return
    data = line[5:].strip()
    if data == "[DONE]":
        state.done_at = now
        return
    try:
        chunk = json.loads(data)
    except ValueError:
        raise _StreamError(f"malformed stream data: {data[:100]!r}") from None
    if not isinstance(chunk, dict):
        raise _StreamError(f"malformed stream data: {data[:100]!r}")
    if "error" in chunk or chunk.get("object") == "error":
        raise _StreamError(f"error event: {_error_message(chunk)}")
    if _has_text(chunk):
        state.chunk_times.append(now)
    usage = chunk.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        state.usage_tokens = usage["completion_tokens"]


async def _send(
    client: httpx.AsyncClient, endpoint: str, body: dict[str, Any], budget: float, clock: Callable[[], float]
) -> _Stream:
    state = _Stream(sent=clock())
    try:
        async with asyncio.timeout(budget), client.stream("POST", endpoint, json=body) as response:
            state.status = response.status_code
            if response.status_code != 200:
                state.error = f"HTTP {response.status_code}: {_error_message(_parse_body(await response.aread()))}"
                state.failed = True
                return state
            async for line in response.aiter_lines():  # read to the end even after [DONE], to reuse the connection
                _observe(state, line, clock())
    except TimeoutError:
        if state.done_at is None:  # a server that holds the stream open after [DONE] still answered in full
            state.error, state.failed = f"no complete response within {budget:.1f} s", True
    except _StreamError as err:
        state.error, state.failed = str(err), True
    except httpx.HTTPError as err:
        state.error = f"{type(err).__name__}: {err}"
        state.failed = state.status is None
    return state


def _result(request: WorkloadRequest, state: _Stream, end: float) -> RequestResult:
    if state.done_at is not None:
        outcome: Outcome = "ok"
    elif state.status == 429:
        outcome = "rejected"
    elif state.failed:
        outcome = "error"
    else:
        outcome = "truncated"
        state.error = state.error or "the stream ended without [DONE]"
    return RequestResult(
        request=request,
        outcome=outcome,
        sent=state.sent,
        end=state.done_at if state.done_at is not None else end,
        chunk_times=tuple(state.chunk_times),
        tokens=state.usage_tokens if state.usage_tokens is not None else len(state.chunk_times),
        status=state.status,
        error=state.error if outcome != "ok" else None,
    )


async def _tick(progress: Callable[[Progress], None], snapshot: Callable[[], Progress], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        progress(snapshot())


async def run_load(
    url: str,
    requests: Sequence[WorkloadRequest],
    *,
    model: str | None = None,
    api: Api = "completions",
    timeout: float = 300.0,
    deadline: float | None = None,
    max_connections: int = 1000,
    seed: int = 0,
    progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 1.0,
) -> list[RequestResult]:
    """Send every request at its arrival time (seconds from the start) and time its stream; one result per
    request, in the order given.

    `model`: None asks `GET /v1/models`. `timeout`: seconds each request may take in all. `deadline`: seconds
    from the start after which nothing is sent and nothing runs (default: last arrival + timeout). `seed`
    draws the prompts. `progress` is called every `progress_interval` seconds and once at the end; the function
    itself prints nothing. Raises `EndpointError` when no model can be discovered.
    """
    if api not in APIS:
        raise ValueError(f"api must be one of {', '.join(APIS)}, got {api!r}")
    if timeout <= 0 or max_connections < 1:
        raise ValueError(f"timeout and max_connections must be positive, got {timeout}, {max_connections}")
    endpoint = f"{base_url(url)}/v1/{'chat/completions' if api == 'chat' else 'completions'}"
    last_arrival = max((r.arrival for r in requests), default=0.0)
    stop = deadline if deadline is not None else last_arrival + timeout
    if model is None:
        model = await discover_model(url, timeout=timeout)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    # No proxies from the environment: a proxy between the client and the server would be measured too.
    # No httpx timeouts: each request's budget bounds all of it (pool wait, connect, stream) in one place.
    async with httpx.AsyncClient(limits=limits, timeout=None, trust_env=False) as client:
        rng = np.random.default_rng(seed)
        counts = _Counts()
        tasks: dict[int, asyncio.Task[RequestResult]] = {}
        start = time.perf_counter()

        def clock() -> float:
            return time.perf_counter() - start

        def snapshot() -> Progress:
            return Progress(len(requests), counts.sent, counts.finished, counts.failed, clock())

        async def one(request: WorkloadRequest, body: dict[str, Any], budget: float) -> RequestResult:
            result = _result(request, await _send(client, endpoint, body, budget, clock), clock())
            counts.finished += 1
            counts.failed += result.outcome != "ok"
            return result

        ticker = None if progress is None else asyncio.create_task(_tick(progress, snapshot, progress_interval))
        try:
            async with asyncio.TaskGroup() as group:
                for index in sorted(range(len(requests)), key=lambda i: requests[i].arrival):
                    request = requests[index]
                    await asyncio.sleep(max(0.0, min(request.arrival, stop) - clock()))
                    budget = min(timeout, stop - clock())
                    if budget <= 0:
                        break  # this request and all later ones stay unsent
                    body = _payload(api, model, request, rng)
                    counts.sent += 1
                    tasks[index] = group.create_task(one(request, body, budget))
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
        if progress is not None:
            progress(snapshot())
    return [
        tasks[i].result() if i in tasks else RequestResult(r, "unsent", error="the global deadline came first")
        for i, r in enumerate(requests)
    ]
