"""`ecoserve bench`: replay a trace or a synthetic workload against an OpenAI-compatible endpoint."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TextIO

from ecoserve.bench.client import APIS, EndpointError, Progress, base_url, discover_model, run_load
from ecoserve.bench.report import summarize
from ecoserve.bench.workload import (
    ARRIVALS,
    DATASETS,
    DEFAULT_MAX_CONTEXT,
    WorkloadError,
    WorkloadSpec,
    build_workload,
    describe,
)
from ecoserve.brain.state import SLO

from .serve import fraction, number

EPILOG = """\
Exact output lengths rely on vLLM's `min_tokens` and `ignore_eos` extensions (the report counts answers of
another length as "wrong length"); with --api chat the prompt is text, whose length in tokens depends on the
server's tokenizer. Exit status: 0 when at least one request succeeded, 1 when none did or the endpoint
cannot be reached, 2 for bad flags.

examples:
  ecoserve bench --url http://127.0.0.1:8000 --trace ../shared/data/traces/azure_llm_2023_conv.csv \\
      --rate-scale 2 --duration 300 --json azure.json
  ecoserve bench --url http://127.0.0.1:8000 --dataset sharegpt --rate 4 --arrival gamma --cv 2 --duration 120
"""


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that define a workload (`WorkloadSpec`'s fields), for every command that replays one."""
    w = p.add_argument_group("workload")
    source = w.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", type=Path, metavar="FILE", help="trace CSV: Azure LLM trace or Vidur format")
    source.add_argument(
        "--dataset",
        choices=list(DATASETS),
        help="synthetic lengths with a dataset's means: "
        + ", ".join(f"{name} {m.prompt:g}/{m.output:g}" for name, m in DATASETS.items())
        + " prompt/output tokens (geometric)",
    )
    w.add_argument(
        "--arrival",
        choices=ARRIVALS,
        help="arrival process (default: the trace's own times with --trace, poisson with --dataset)",
    )
    w.add_argument("--rate", type=number(float, 0), metavar="R", help="requests/s of poisson or gamma arrivals")
    w.add_argument(
        "--rate-scale", type=number(float, 0), metavar="X", help="speed a trace's own times up: 2 = twice as fast"
    )
    w.add_argument("--cv", type=number(float, 0), help="coefficient of variation of gamma inter-arrival times")
    w.add_argument("--input-len", type=number(float, 1, inclusive=True), metavar="N", help="mean prompt tokens")
    w.add_argument("--output-len", type=number(float, 1, inclusive=True), metavar="N", help="mean output tokens")
    w.add_argument("--duration", type=number(float, 0), metavar="S", help="keep the arrivals of the first S seconds")
    w.add_argument("--max-requests", type=number(int, 1, inclusive=True), metavar="N", help="keep the first N requests")
    w.add_argument(
        "--max-context",
        type=number(int, 2, inclusive=True),
        default=DEFAULT_MAX_CONTEXT,
        metavar="N",
        help="clip prompt + output to N tokens, prompt first; set it to the server's max_model_len "
        "(default: %(default)s)",
    )
    w.add_argument("--seed", type=int, default=0, help="seed of arrivals, lengths and prompts (default: 0)")


def workload_spec(args: argparse.Namespace) -> WorkloadSpec:
    """The `WorkloadSpec` of parsed workload flags (raises `WorkloadError` for a bad combination)."""
    return WorkloadSpec(
        trace=args.trace,
        dataset=args.dataset,
        arrival=args.arrival,
        rate=args.rate,
        rate_scale=args.rate_scale,
        cv=args.cv,
        input_len=args.input_len,
        output_len=args.output_len,
        duration=args.duration,
        max_requests=args.max_requests,
        max_context=args.max_context,
        seed=args.seed,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="replay a trace or synthetic workload against an OpenAI-compatible endpoint",
        description="Send requests with exact prompt and output lengths at their arrival times (open loop), "
        "stream the answers, and report TTFT / TPOT / ITL / E2E percentiles, SLO attainment and goodput.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    p.add_argument("--model", help="model name to send (default: the first one GET /v1/models lists)")
    add_workload_arguments(p)
    s = p.add_argument_group("SLO")
    s.add_argument("--ttft", type=number(float, 0), default=5.0, metavar="S", help="TTFT SLO in seconds (5)")
    s.add_argument("--tpot", type=number(float, 0), default=0.1, metavar="S", help="TPOT SLO in seconds (0.1)")
    s.add_argument("--attainment", type=fraction, default=0.9, metavar="F", help="target share meeting both SLOs (0.9)")
    c = p.add_argument_group("client")
    c.add_argument("--api", choices=APIS, default="completions", help="endpoint to call (default: completions)")
    c.add_argument(
        "--timeout", type=number(float, 0), default=300.0, metavar="S", help="seconds per request in all (300)"
    )
    c.add_argument(
        "--max-connections", type=number(int, 1, inclusive=True), default=1000, metavar="N", help="pool size (1000)"
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to FILE")
    p.set_defaults(handler=_run)


class _ProgressLine:
    """Progress on a stream: one line rewritten in place on a terminal, a line every 2 s otherwise (logs)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 0.5 if self.tty else 2.0

    def __call__(self, p: Progress) -> None:
        line = (
            f"sent {p.sent}/{p.total}  finished {p.finished}  in flight {p.in_flight}  errors {p.failed}  "
            f"elapsed {p.elapsed:.1f} s"
        )
        self.stream.write(f"\r\x1b[K{line}" if self.tty else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _fail(message: str, code: int) -> int:
    print(f"ecoserve bench: {message}", file=sys.stderr)
    return code


def _describe(spec: WorkloadSpec) -> str:
    source = f"trace {spec.trace.name}" if spec.trace is not None else f"dataset {spec.dataset}"
    if spec.process == "trace":
        return f"{source}, its own arrivals ×{spec.rate_scale or 1:g}"
    cv = f", CV {spec.cv:g}" if spec.process == "gamma" else ""
    return f"{source}, {spec.process} arrivals at {spec.rate:g} req/s{cv}"


def _run(args: argparse.Namespace) -> int:
    if args.trace is not None and not args.trace.is_file():
        return _fail(f"--trace: no such file: {args.trace}", 2)
    if args.json is not None and not args.json.parent.is_dir():
        return _fail(f"--json: no such directory: {args.json.parent}", 2)
    try:
        spec = workload_spec(args)
        requests = build_workload(spec)
    except WorkloadError as err:
        flag = f"--{err.field.replace('_', '-')}: " if err.field else ""
        return _fail(f"{flag}{err}", 2)
    slo = SLO(ttft=args.ttft, tpot=args.tpot, attainment=args.attainment)
    offered = describe(requests)
    print(
        f"ecoserve bench: {offered['requests']} requests over {offered['span_s']:.1f} s to {base_url(args.url)}",
        file=sys.stderr,
    )
    progress = _ProgressLine(sys.stderr)
    try:
        model = args.model or asyncio.run(discover_model(args.url, timeout=args.timeout))
        results = asyncio.run(
            run_load(
                args.url,
                requests,
                model=model,
                api=args.api,
                timeout=args.timeout,
                max_connections=args.max_connections,
                seed=args.seed,
                progress=progress,
                progress_interval=progress.interval,
            )
        )
    except EndpointError as err:
        return _fail(str(err), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    finally:
        progress.close()
    report = summarize(results, slo)
    print(
        f"{base_url(args.url)}  model {model}  /v1/{'chat/completions' if args.api == 'chat' else 'completions'}\n"
        f"workload  {_describe(spec)}: {offered['requests']} requests over {offered['span_s']:.1f} s, mean prompt "
        f"{offered['mean_prompt_tokens']:.1f} / output {offered['mean_output_tokens']:.1f} tokens\n"
        f"{report.format_table()}"
    )
    if args.json is not None:
        document = {
            "url": base_url(args.url),
            "model": model,
            "api": args.api,
            "workload": {**spec.to_json(), **offered},
            **report.to_json(),
        }
        try:
            args.json.write_text(json.dumps(document, indent=2) + "\n")
        except OSError as err:
            return _fail(f"--json: {err}", 1)
    return 0 if report.ok else 1
