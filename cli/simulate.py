"""`ecoserve simulate`: goodput of serving strategies on a simulated cluster, or one run at a given load."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from ecoserve.bench.workload import ARRIVALS, DATASETS, WorkloadError, WorkloadSpec, build_workload
from ecoserve.brain.hardware import gpu_preset, interconnect_preset, model_preset
from ecoserve.brain.mitosis import MitosisSettings, Sizing
from ecoserve.brain.state import SLO

from .serve import fraction, number, positive_float, positive_int, preset


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ecoserve.sim.presets import PRESETS
    from ecoserve.sim.strategies import HELP

    p = sub.add_parser(
        "simulate",
        help="discrete-event simulation and goodput study of serving strategies",
        description="Simulate a cluster on a virtual clock with the real scheduling brain. Without --rate or "
        "--arrival trace, search each strategy's goodput (the highest rate meeting the SLO attainment target) "
        "and print the ratios; with them, run once at that load.",
    )
    p.add_argument("--preset", choices=list(PRESETS), default="paper-l20-30b", help="the set-up to start from")
    p.add_argument("--strategies", help=f"comma-separated: {HELP}")
    hw = p.add_argument_group("cluster (override the preset)")
    hw.add_argument("--model", type=preset(model_preset))
    hw.add_argument("--gpu", type=preset(gpu_preset))
    hw.add_argument("--tp", type=positive_int)
    hw.add_argument("--pp", type=positive_int, default=1, help="pipeline-parallel stages per instance")
    hw.add_argument("--instances", type=positive_int)
    hw.add_argument("--intra-link", type=preset(interconnect_preset), help="between the GPUs of an instance")
    hw.add_argument("--link", type=preset(interconnect_preset), help="between instances (KV transfer)")
    hw.add_argument("--kv-blocks", type=positive_int, help="KV blocks per instance (default: from GPU memory)")
    hw.add_argument("--max-num-batched-tokens", type=positive_int, default=8192)
    hw.add_argument("--chunk-tokens", type=positive_int, default=512, help="sarathi's per-step token budget")
    hw.add_argument("--max-tokens-known", action="store_true", help="let ecoserve's router see exact output lengths")
    slo = p.add_argument_group("SLO (override the preset)")
    slo.add_argument("--ttft", type=positive_float, help="TTFT SLO in seconds")
    slo.add_argument("--tpot", type=positive_float, help="TPOT SLO in seconds")
    slo.add_argument("--attainment", type=fraction, help="share of requests that must meet both SLOs")
    slo.add_argument("--percentile", type=number(float, 0), help="the same as a percentage: 90 means 0.9")
    w = p.add_argument_group("workload")
    w.add_argument("--trace", type=Path, help="trace CSV (Azure or Vidur format) instead of the preset dataset")
    w.add_argument("--dataset", choices=list(DATASETS))
    w.add_argument("--arrival", choices=ARRIVALS, default="poisson", help="trace: keep the trace's own times")
    w.add_argument("--cv", type=positive_float, help="gamma arrivals' coefficient of variation")
    w.add_argument("--rate", type=positive_float, help="one run at this rate (req/s) instead of the search")
    w.add_argument("--rate-scale", type=positive_float, help="with --arrival trace: speed the trace up")
    w.add_argument("--duration", type=positive_float, help="with --arrival trace: seconds of the trace")
    w.add_argument("--num-requests", type=positive_int, default=2000, help="requests per run (search mode)")
    w.add_argument("--seed", type=int, default=0)
    dyn = p.add_argument_group("dynamic scenario (ecoserve with the mitosis planner in the loop)")
    dyn.add_argument("--ramp", help="comma-separated req/s, one per step, e.g. 20,30,40,50,40,30,20")
    dyn.add_argument("--step-seconds", type=positive_float, default=120.0, help="length of each ramp step")
    dyn.add_argument("--window", type=positive_float, default=30.0, help="seconds per reported window")
    dyn.add_argument("--min-instances", type=positive_int, default=6, help="N_l per macro instance")
    dyn.add_argument("--max-instances", type=positive_int, default=11, help="N_u per macro instance")
    dyn.add_argument("--max-total-instances", type=positive_int, default=16, help="instances the group may use")
    dyn.add_argument("--startup-delay", type=number(float, 0, inclusive=True), default=30.0)
    dyn.add_argument("--cooldown", type=number(float, 0, inclusive=True), default=30.0)
    dyn.add_argument("--planner-interval", type=positive_float, default=30.0)
    dyn.add_argument(
        "--sizing",
        default=Sizing.CAPACITY.value,
        help="how many instances a grow adds: capacity (as many as the learned capacity needs, ours) or "
        "one-at-a-time (the paper's); a comma-separated list runs each and compares them",
    )
    dyn.add_argument("--max-grow-step", type=positive_int, default=4, help="most instances one grow adds (capacity)")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="FILE")
    out.add_argument(
        "--png",
        type=Path,
        metavar="FILE",
        help="attainment vs rate per strategy; with --ramp, attainment and instances over time per sizing",
    )
    p.set_defaults(handler=_run)


def _fail(message: str) -> int:
    print(f"ecoserve simulate: {message}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from ecoserve.sim.presets import PRESETS
    from ecoserve.sim.setup import Deployment
    from ecoserve.sim.strategies import parse_strategy

    pre = PRESETS[args.preset]
    if args.attainment is not None and args.percentile is not None:
        return _fail("--attainment and --percentile say the same thing: give one")
    attainment = args.attainment or (args.percentile / 100 if args.percentile is not None else pre.attainment)
    if not 0 < attainment <= 1:
        return _fail(f"--percentile must be in (0, 100], got {args.percentile}")
    try:
        strategies = [parse_strategy(s.strip()) for s in (args.strategies or ",".join(pre.strategies)).split(",")]
    except ValueError as err:
        return _fail(f"--strategies: {err}")
    deployment = Deployment(
        model=args.model or model_preset(pre.model),
        gpu=args.gpu or gpu_preset(pre.gpu),
        tp=args.tp or pre.tp,
        pp=args.pp,
        instances=args.instances or pre.instances,
        intra_link=args.intra_link or interconnect_preset(pre.intra_link),
        inter_link=args.link or interconnect_preset(pre.inter_link),
        slo=SLO(args.ttft or pre.ttft, args.tpot or pre.tpot, attainment),
        max_num_batched_tokens=args.max_num_batched_tokens,
        chunk_tokens=args.chunk_tokens,
        kv_blocks=args.kv_blocks,
        max_tokens_known=args.max_tokens_known,
    )
    if not args.ramp and deployment.instances < 2 and any(s in ("distserve", "mooncake") for s in strategies):
        return _fail("--instances: distserve and mooncake need at least 2 instances (a prefill and a decode pool)")
    try:
        blocks = deployment.blocks
    except ValueError as err:
        return _fail(f"--model/--gpu/--tp: {err}")
    if args.ramp:
        return _ramp(args, deployment, pre.dataset)
    single = args.rate is not None or args.arrival == "trace"
    try:
        spec = _workload(args, pre.dataset, single)
        base = build_workload(spec)
    except WorkloadError as err:
        return _fail(f"--{(err.field or 'trace').replace('_', '-')}: {err}")
    except OSError as err:
        return _fail(f"--trace: {err}")
    header = (
        f"{deployment.model.name} on {deployment.gpu.name} TP={deployment.tp} PP={deployment.pp}, "
        f"{deployment.instances} instances "
        f"({blocks} KV blocks each), links {deployment.intra_link.name}/{deployment.inter_link.name}; "
        f"SLO TTFT {deployment.slo.ttft:g} s, TPOT {deployment.slo.tpot * 1000:g} ms, attainment "
        f"{deployment.slo.attainment:.0%}; {len(base)} requests of {spec.trace or spec.dataset}"
    )
    print(header, file=sys.stderr, flush=True)
    if single:
        return _single(args, strategies, deployment, base, header)
    return _study(args, strategies, deployment, base, header)


def _workload(args: argparse.Namespace, default_dataset: str, single: bool) -> WorkloadSpec:
    source = {"trace": args.trace} if args.trace else {"dataset": args.dataset or default_dataset}
    if args.arrival == "trace":
        return WorkloadSpec(
            **source, arrival="trace", rate_scale=args.rate_scale, duration=args.duration, seed=args.seed
        )
    return WorkloadSpec(
        **source,
        arrival=args.arrival,
        rate=1.0,
        cv=args.cv,
        max_requests=args.num_requests,
        seed=args.seed,
    )


def _single(args, strategies, deployment, base, header) -> int:
    from ecoserve.sim.strategies import evaluate, retimed

    workload = retimed(base, args.rate) if args.rate is not None else base
    rate = args.rate or (len(workload) / max(workload[-1].arrival, 1e-9) if workload else 0.0)
    rows = {}
    print(f"{'strategy':<22}{'attain':>8}{'TTFT p50':>10}{'TTFT p99':>10}{'TPOT p50':>10}{'TPOT p99':>10}"
          f"{'events':>10}{'wall s':>8}{'events/s':>10}")  # fmt: skip
    for name in strategies:
        e = evaluate(name, deployment, workload, rate)
        s = e.summary
        rows[name] = s.to_json() | {"events": e.events, "wall_s": e.wall, "events_per_s": e.events / e.wall}
        print(
            f"{name:<22}{s.attainment:>8.1%}{_ms(s.ttft, 'p50'):>10}{_ms(s.ttft, 'p99'):>10}"
            f"{_ms(s.tpot, 'p50'):>10}{_ms(s.tpot, 'p99'):>10}{e.events:>10}{e.wall:>8.1f}{e.events / e.wall:>10.0f}"
        )
    print("(latencies in ms)")
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rate": rate, "runs": rows}, indent=2))
    return 0


def _ms(stats, field: str) -> str:
    return "-" if stats is None else f"{getattr(stats, field) * 1000:.0f}"


def _study(args, strategies, deployment, base, header) -> int:
    from ecoserve.sim.plot import plot_attainment
    from ecoserve.sim.study import goodput_study, ratios

    started = time.perf_counter()

    def progress(name: str, s) -> None:
        verdict = "ok" if s.attainment >= deployment.slo.attainment else "miss"
        elapsed = time.perf_counter() - started
        print(f"  [{elapsed:6.1f} s] {name:<20} {s.rate:8.2f} req/s  attainment {s.attainment:6.1%}  {verdict}",
              file=sys.stderr, flush=True)  # fmt: skip

    results = goodput_study(strategies, deployment, base, progress)
    table = ratios(results)
    names = [r.name for r in results]
    width = max(16, *(len(n) + 5 for n in names))
    print(f"{'strategy':<22}{'goodput req/s':>14}" + "".join(f"{'vs ' + n:>{width}}" for n in names))
    for r in results:
        cells = "".join(
            f"{'-' if n == r.name or table[r.name][n] is None else f'{table[r.name][n]:.2f}x':>{width}}" for n in names
        )
        extra = (
            f"  (P:D = {r.prefill_instances}:{deployment.instances - r.prefill_instances})"
            if r.prefill_instances
            else ""
        )
        print(f"{r.name:<22}{r.goodput:>14.2f}{cells}{extra}")
    events = sum(r.events for r in results)
    wall = sum(r.wall for r in results)
    print(f"simulated {events} events in {wall:.1f} s ({events / wall:.0f} events/s)")
    if args.json:
        payload = {
            "setup": header,
            "goodput": {r.name: r.goodput for r in results},
            "ratios": table,
            "strategies": {r.name: r.to_json() for r in results},
            "speed": {"events": events, "wall_s": wall, "events_per_s": events / wall},
        }
        args.json.write_text(json.dumps(payload, indent=2))
    if args.png:
        plot_attainment(results, deployment.slo.attainment, header, args.png)
    return 0


def _ramp(args: argparse.Namespace, deployment, default_dataset: str) -> int:
    from ecoserve.sim.dynamic import format_comparison, run_ramp
    from ecoserve.sim.ecoserve import MitosisRun
    from ecoserve.sim.plot import plot_ramp

    try:
        rates = [float(r) for r in args.ramp.split(",") if r.strip()]
        if not rates or min(rates) <= 0:
            raise ValueError("give positive rates")
        settings = MitosisSettings(
            deployment.slo,
            args.min_instances,
            args.max_instances,
            args.max_total_instances,
            cooldown=args.cooldown,
            max_grow_step=args.max_grow_step,
        )
    except ValueError as err:
        return _fail(f"--ramp/--min-instances/--max-instances: {err}")
    try:
        sizings = [Sizing(name.strip()) for name in args.sizing.split(",") if name.strip()]
    except ValueError:
        return _fail(f"--sizing: give {' or '.join(s.value for s in Sizing)} (or both, comma-separated)")
    source = {"trace": args.trace} if args.trace else {"dataset": args.dataset or default_dataset}
    try:
        lengths = build_workload(WorkloadSpec(**source, arrival="poisson", rate=1.0, max_requests=5000, seed=args.seed))
    except (WorkloadError, OSError) as err:
        return _fail(f"--trace/--dataset: {err}")
    title = (
        f"{deployment.model.name} on {deployment.gpu.name} TP={deployment.tp}: ramp {args.ramp} req/s, "
        f"{args.step_seconds:g} s steps, N_l={args.min_instances}, N_u={args.max_instances}"
    )
    print(title, file=sys.stderr, flush=True)
    runs = []
    for sizing in sizings:
        started = time.perf_counter()
        print(f"sizing {sizing.value}:", flush=True)
        run = MitosisRun(
            replace(settings, sizing=sizing),
            interval=args.planner_interval,
            startup_delay=args.startup_delay,
            window=args.window,
        )
        report = run_ramp(deployment, run, rates, args.step_seconds, lengths, args.window, args.seed)
        print(report.format_table())
        print(f"simulated in {time.perf_counter() - started:.1f} s\n", flush=True)
        runs.append((sizing.value, report))
    if len(runs) > 1:
        print(format_comparison(runs))
    if args.json:
        body = {"setup": title, "runs": [{"sizing": name} | report.to_json() for name, report in runs]}
        args.json.write_text(json.dumps(body, indent=2))
    if args.png:
        plot_ramp(runs, deployment.slo.attainment, title, args.png)
    return 0
