"""`run_load` and `ecoserve bench` end to end against a fake OpenAI streaming server on 127.0.0.1.

The fake server streams one chunk per asked token with small sleeps; some prompt lengths are magic and
make it misbehave the ways a real server can. No timed assertions: counts, structure and ordering only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from ecoserve.bench.client import (
    TOKEN_ID_RANGE,
    WORDS,
    EndpointError,
    Progress,
    RequestResult,
    discover_model,
    run_load,
)
from ecoserve.bench.workload import WorkloadRequest
from ecoserve.cli.bench import add_parser

REJECT = 7  # prompt lengths the fake server answers 429 to
DROP = 13  # … drops the connection after two chunks
ERROR_EVENT = 19  # … sends an error event after two chunks and ends the stream
BAD_REQUEST = 23  # … answers 400 with a vLLM-style error body
NO_USAGE = 17  # … streams without the final usage chunk
STALL = 29  # … waits 3 s before its first chunk (for timeouts)
MODEL = "fake-model"


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _stream(prompt_len: int, max_tokens: int, chat: bool) -> AsyncIterator[str]:
    if prompt_len == STALL:
        await asyncio.sleep(3)
    if chat:  # like vLLM: the first chat chunk carries the role and no text
        yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for i in range(max_tokens):
        await asyncio.sleep(0.002)
        if i == 2 and prompt_len == DROP:
            raise RuntimeError("worker died")  # uvicorn closes the connection mid-body
        if i == 2 and prompt_len == ERROR_EVENT:
            yield _sse({"error": {"message": "worker failed mid-stream", "type": "InternalServerError"}})
            return
        text = f" w{i}"
        choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
        yield _sse({"choices": [choice], "usage": None})
    if prompt_len != NO_USAGE:
        usage = {"prompt_tokens": prompt_len, "completion_tokens": max_tokens}
        yield _sse({"choices": [], "usage": {**usage, "total_tokens": prompt_len + max_tokens}})
    yield _sse("[DONE]")


def _fake_app(bodies: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    def answer(body: dict[str, Any], prompt_len: int, chat: bool) -> Any:
        bodies.append(body)
        if prompt_len == REJECT:
            error = {"message": "router queue full", "type": "RateLimitError", "code": 429}
            return JSONResponse({"error": error}, status_code=429, headers={"Retry-After": "1"})
        if prompt_len == BAD_REQUEST:
            error = {"object": "error", "message": "prompt too long", "type": "BadRequestError", "code": 400}
            return JSONResponse(error, status_code=400)
        return StreamingResponse(_stream(prompt_len, body["max_tokens"], chat), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008 (FastAPI's idiom)
        return answer(body, len(body["prompt"]), chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        return answer(body, len(body["messages"][-1]["content"].split()), chat=True)

    return app


@dataclass(frozen=True)
class FakeServer:
    url: str
    bodies: list[dict[str, Any]]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    bodies: list[dict[str, Any]] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_fake_app(bodies), log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    give_up = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < give_up and thread.is_alive(), "the fake server did not start"
        time.sleep(0.01)
    yield FakeServer(f"http://127.0.0.1:{sock.getsockname()[1]}", bodies)
    uv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def fake(server: FakeServer) -> FakeServer:
    server.bodies.clear()
    return server


def _load(url: str, requests: list[WorkloadRequest], **kwargs: Any) -> list[RequestResult]:
    return asyncio.run(asyncio.wait_for(run_load(url, requests, **kwargs), timeout=30))


def _assert_well_ordered(r: RequestResult) -> None:
    assert r.sent is not None and r.end is not None and r.sent <= r.end
    assert list(r.chunk_times) == sorted(r.chunk_times)
    assert all(r.sent <= t <= r.end for t in r.chunk_times)


def test_completions_counts_every_outcome(fake: FakeServer) -> None:
    lengths = [(5, 6), (REJECT, 4), (DROP, 10), (ERROR_EVENT, 10), (BAD_REQUEST, 3), (NO_USAGE, 5), (3, 1), (8, 2)]
    requests = [WorkloadRequest(0.01 * i, p, o) for i, (p, o) in enumerate(lengths)]
    seen: list[Progress] = []
    results = _load(fake.url, requests, progress=seen.append, progress_interval=0.05)

    assert [r.request for r in results] == requests
    assert [r.outcome for r in results] == ["ok", "rejected", "truncated", "error", "error", "ok", "ok", "ok"]
    ok = [r for r in results if r.outcome == "ok"]
    assert [r.tokens for r in ok] == [6, 5, 1, 2]  # usage counts, and chunk counts without usage
    assert [len(r.chunk_times) for r in ok] == [6, 5, 1, 2]
    for r in ok:
        _assert_well_ordered(r)
        assert r.ttft is not None and r.e2e is not None and 0 <= r.ttft <= r.e2e
        assert r.error is None and r.status == 200
        assert len(r.itls) == r.tokens - 1
    assert results[6].tpot is None and results[0].tpot is not None and results[0].tpot >= 0

    rejected, dropped, event, bad = results[1:5]
    assert rejected.status == 429 and rejected.error == "HTTP 429: router queue full" and not rejected.chunk_times
    assert dropped.status == 200 and len(dropped.chunk_times) == 2 and dropped.error
    assert event.status == 200 and "worker failed mid-stream" in (event.error or "")
    assert bad.status == 400 and bad.error == "HTTP 400: prompt too long"
    assert seen[-1] == Progress(total=8, sent=8, finished=8, failed=4, elapsed=seen[-1].elapsed)

    assert len(fake.bodies) == len(requests)
    for body in fake.bodies:
        assert body["model"] == MODEL  # discovered from /v1/models
        assert body["max_tokens"] == body["min_tokens"] >= 1 and body["ignore_eos"] is True
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["temperature"] == 0
        assert all(TOKEN_ID_RANGE[0] <= t < TOKEN_ID_RANGE[1] for t in body["prompt"])
    assert sorted(len(b["prompt"]) for b in fake.bodies) == sorted(p for p, _ in lengths)


def test_same_seed_sends_the_same_prompts(fake: FakeServer) -> None:
    requests = [WorkloadRequest(0.0, 4, 1), WorkloadRequest(0.01, 6, 1)]
    for _ in range(2):
        _load(fake.url, requests, model=MODEL, seed=3)
    first, second = fake.bodies[:2], fake.bodies[2:]
    assert [b["prompt"] for b in first] == [b["prompt"] for b in second]


def test_chat_sends_words_and_skips_the_role_chunk(fake: FakeServer) -> None:
    requests = [WorkloadRequest(0.0, 12, 4), WorkloadRequest(0.0, REJECT, 4)]
    results = _load(f"{fake.url}/v1/", requests, model="other", api="chat")
    assert [r.outcome for r in results] == ["ok", "rejected"]
    assert results[0].tokens == 4 and len(results[0].chunk_times) == 4
    body = next(b for b in fake.bodies if len(b["messages"][0]["content"].split()) == 12)
    assert body["model"] == "other" and body["max_tokens"] == 4
    assert set(body["messages"][0]["content"].split()) <= set(WORDS)


def test_a_stalled_request_times_out_as_an_error(fake: FakeServer) -> None:
    results = _load(fake.url, [WorkloadRequest(0.0, STALL, 3), WorkloadRequest(0.0, 4, 2)], model=MODEL, timeout=0.5)
    assert [r.outcome for r in results] == ["error", "ok"]
    assert results[0].error == "no complete response within 0.5 s" and results[0].status == 200


def test_requests_after_the_global_deadline_are_not_sent(fake: FakeServer) -> None:
    requests = [WorkloadRequest(0.0, 4, 2), WorkloadRequest(5.0, 4, 2)]
    results = _load(fake.url, requests, model=MODEL, deadline=2.0)
    assert results[0].outcome == "ok"
    assert results[1].outcome == "unsent" and results[1].sent is None
    assert len(fake.bodies) == 1


def test_an_unreachable_endpoint_is_an_endpoint_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(EndpointError, match="/v1/models"):
        asyncio.run(discover_model(f"http://127.0.0.1:{port}", timeout=5))


def _bench(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ecoserve")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    return args.handler(args)


def test_cli_prints_a_table_and_writes_the_json_report(
    fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.csv"
    rows = [(0.0, 5, 4), (0.02, REJECT, 3), (0.04, DROP, 6), (0.06, 9, 1), (0.08, 6, 3), (9.0, 6, 3)]
    trace.write_text(
        "arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows)
    )
    report = tmp_path / "report.json"
    argv = ["--url", fake.url, "--trace", str(trace), "--rate-scale", "2", "--duration", "1", "--json", str(report)]
    assert _bench([*argv, "--ttft", "60", "--tpot", "10"]) == 0  # SLOs no machine can miss: counts, not speed

    out, err = capsys.readouterr()
    assert "TTFT" in out and "goodput" in out and "rejected(429) 1" in out
    assert "finished 5" in err  # the last progress line
    document = json.loads(report.read_text())
    assert document["model"] == MODEL and document["api"] == "completions"
    assert document["workload"]["requests"] == 5 and document["workload"]["rate_scale"] == 2
    assert document["counts"] == {
        "total": 5,
        "sent": 5,
        "ok": 3,
        "rejected": 1,
        "errors": 0,
        "truncated": 1,
        "unsent": 0,
        "wrong_length": 0,
        "met_slo": 3,
    }
    assert set(document["latency_s"]) == {"ttft", "tpot", "itl", "e2e"}
    assert document["latency_s"]["ttft"]["count"] == 3
    assert document["attainment"] == pytest.approx(0.6) and document["attainment_met"] is False
    for key in ("duration_s", "goodput_rps", "request_throughput_rps", "output_throughput_tps", "slo"):
        assert key in document


def test_cli_exits_1_when_the_endpoint_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert _bench(["--url", url, "--dataset", "alpaca", "--rate", "1", "--max-requests", "2"]) == 1
    assert "/v1/models" in capsys.readouterr().err
