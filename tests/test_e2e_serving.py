"""The serving path end to end: real worker and router processes on 127.0.0.1, the official openai client."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import subprocess
import time

import httpx
import openai
import pytest
from procs import CLI, free_ports, macro_instance, stop, wait_http

pytestmark = pytest.mark.e2e

MODEL = "llama-2-7b"


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def up():
    """`ecoserve up` itself, as a user starts it."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([*CLI, "up", "--instances", "2", "--port", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", proc, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop([proc], signal.SIGINT)
    assert proc.returncode == 0


def test_completions_and_chat_streamed_and_whole(up):
    c = client(up)
    assert c.models.list().data[0].id == MODEL
    whole = c.completions.create(model=MODEL, prompt="one two three", max_tokens=7)
    assert whole.usage.completion_tokens == 7 and whole.usage.prompt_tokens == 3
    assert whole.choices[0].finish_reason == "length" and len(whole.choices[0].text.split()) == 7
    chunks = list(
        c.completions.create(
            model=MODEL, prompt=[11, 12, 13, 14], max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text.split() == whole.choices[0].text.split()[:5]  # the same deterministic words
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].usage.prompt_tokens == 4
    chat = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 4
    chat_stream = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    deltas = [ch.choices[0].delta.content for ch in chat_stream if ch.choices and ch.choices[0].delta.content]
    assert "".join(deltas) == chat.choices[0].message.content


def test_many_concurrent_requests_all_complete_and_show_in_metrics(up):
    c = client(up)
    before = _metric(up, 'ecoserve_router_requests_total{outcome="ok"}')

    def one(k: int) -> int:
        return c.completions.create(
            model=MODEL, prompt=list(range(100, 150 + k)), max_tokens=20
        ).usage.completion_tokens

    with cf.ThreadPoolExecutor(24) as pool:
        assert list(pool.map(one, range(48))) == [20] * 48
    text = httpx.get(f"{up}/metrics", timeout=5).text
    assert _metric(up, 'ecoserve_router_requests_total{outcome="ok"}') >= before + 48
    for name in ("ecoserve_router_slo_attainment", "ecoserve_router_goodput", "ecoserve_router_ttft_seconds_bucket"):
        assert name in text
    status = httpx.get(f"{up}/ecoserve/status", timeout=5).json()
    assert len(status["instances"]) == 2 and status["window"]["requests"] >= 48
    assert status["planner"]["requests"] == status["window"]["requests"]
    assert status["planner"]["ttft_mean"] == pytest.approx(status["window"]["ttft_mean"])
    assert _metric(up, "ecoserve_router_window_requests") >= 48
    assert _metric(up, "ecoserve_router_ttft_mean_seconds") > 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "n": 2}, None),
        ({"max_tokens": 3}, "prompt"),
        ({"prompt": "", "max_tokens": 3}, None),
        ({"prompt": "x", "max_tokens": 10**9}, "max_tokens"),
    ],
)
def test_bad_input_gets_400_with_an_openai_error_body(up, body, param):
    resp = httpx.post(f"{up}/v1/completions", json=body, timeout=10)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert error["param"] == param


def test_malformed_json_and_unknown_model(up):
    bad = httpx.post(f"{up}/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "error" in bad.json()
    with pytest.raises(openai.NotFoundError):
        client(up).completions.create(model="no-such-model", prompt="x", max_tokens=2)


def _metric(url: str, series: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def _stream_until_first_token(c: openai.OpenAI, max_tokens: int):
    """Start a streaming request and return (stream, instance) once its first token arrived."""
    raw = c.completions.with_raw_response.create(model=MODEL, prompt="a b c d", max_tokens=max_tokens, stream=True)
    stream = raw.parse()
    first = next(iter(stream))
    assert first.choices[0].text
    return stream, raw.headers["x-ecoserve-instance"]


def test_rolling_activation_keeps_the_active_instance_while_it_passes():
    with macro_instance(2) as mi:
        c = client(mi["url"])
        stream, first = _stream_until_first_token(c, 300)
        # The active instance is decoding with plenty of saved TPOT: the next request joins it.
        second = c.completions.with_raw_response.create(model=MODEL, prompt="x y", max_tokens=2)
        assert second.headers["x-ecoserve-instance"] == first
        stream.close()


def test_activation_rolls_when_the_active_instance_has_no_slack_and_requests_wait_when_none_has():
    # A 1 ms TPOT SLO: a decoding instance can never stand a prefill pause, so new requests roll on.
    with macro_instance(2, router_args=["--tpot", "0.001"]) as mi:
        c = client(mi["url"])
        s1, i1 = _stream_until_first_token(c, 200)
        s2, i2 = _stream_until_first_token(c, 200)
        assert i1 != i2
        status = httpx.get(f"{mi['url']}/ecoserve/status", timeout=5).json()
        assert [i["id"] for i in status["instances"] if i["active"]] == [i2.split("://")[-1]]
        # Both instances decode now: a third request is held until one finishes, then served.
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(1) as pool:
            third = pool.submit(c.completions.create, model=MODEL, prompt="q", max_tokens=2)
            time.sleep(0.5)
            assert httpx.get(f"{mi['url']}/ecoserve/status", timeout=5).json()["queue_depth"] == 1
            s1.close()
            assert third.result(timeout=30).usage.completion_tokens == 2
        assert time.monotonic() - t0 >= 0.5
        s2.close()


def test_full_queue_answers_429_with_retry_after():
    with macro_instance(1, router_args=["--tpot", "0.001", "--queue-limit", "0"]) as mi:
        c = client(mi["url"])
        stream, _ = _stream_until_first_token(c, 200)
        resp = httpx.post(f"{mi['url']}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=10)
        assert resp.status_code == 429 and resp.headers["retry-after"]
        assert resp.json()["error"]["type"] == "RateLimitError"
        stream.close()
        assert _metric(mi["url"], 'ecoserve_router_requests_total{outcome="rejected"}') == 1
        # The mitosis planner's inputs: the rejection counts in the window, as JSON and on /metrics.
        status = httpx.get(f"{mi['url']}/ecoserve/status", timeout=5).json()
        assert status["planner"]["rejected"] == 1 and status["window"]["rejected"] == 1
        assert set(status["planner"]) == {
            *("requests", "ttft_mean", "ttft_attainment", "saved_tpot", "rejected", "arrived", "serving", "queued")
        }
        # Both requests arrived (the rejected one too), on the one instance the router serves with; none waits.
        planner = status["planner"]
        assert (planner["arrived"], status["window"]["arrived"], planner["serving"], planner["queued"]) == (2, 2, 1, 0)
        assert _metric(mi["url"], "ecoserve_router_window_rejected") == 1
        assert _metric(mi["url"], "ecoserve_router_window_arrived") == 2


def test_worker_killed_mid_stream_gives_an_explicit_error_and_others_take_over():
    with macro_instance(2) as mi:
        c = client(mi["url"])
        stream, instance = _stream_until_first_token(c, 2000)
        mi["workers"][f"http://{instance}"].kill()
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass
        # Requests that had not started are routed around the dead worker, whatever the router last polled.
        for _ in range(4):
            ok = c.completions.with_raw_response.create(model=MODEL, prompt="z", max_tokens=3)
            assert ok.parse().usage.completion_tokens == 3
            assert ok.headers["x-ecoserve-instance"] != instance


def test_client_disconnect_aborts_the_request_at_the_worker():
    with macro_instance(1) as mi:
        (worker_url,) = mi["workers"]
        c = client(mi["url"])
        stream, _ = _stream_until_first_token(c, 5000)
        assert _metric(worker_url, 'vllm:num_requests_running{model_name="llama-2-7b"}') == 1
        stream.close()
        deadline = time.monotonic() + 10
        while _metric(worker_url, 'vllm:num_requests_running{model_name="llama-2-7b"}') and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric(worker_url, 'vllm:num_requests_running{model_name="llama-2-7b"}') == 0
        assert _metric(worker_url, 'vllm:kv_cache_usage_perc{model_name="llama-2-7b"}') == 0
        assert _metric(mi["url"], 'ecoserve_router_requests_total{outcome="aborted"}') == 1
