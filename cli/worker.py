"""`ecoserve worker`: one serving instance, simulated or vLLM with the temporal scheduler."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

from ecoserve.brain.engine import EngineConfig, EngineModel
from ecoserve.brain.kv import kv_capacity_blocks
from ecoserve.brain.phase import PhaseMode, PhasePolicySettings
from ecoserve.brain.predictor import QuantilePredictor
from ecoserve.brain.temporal import TemporalPolicy
from ecoserve.worker.vllm_phase import GPU_ENV, PHASE_MODE_ENV

from .serve import add_cost_model_flags, cost_model, non_negative_float, positive_float, positive_int, run_app


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run one serving instance (simulated engine, or vLLM with the temporal scheduler)",
        description="One serving instance with vLLM's OpenAI API. --engine sim runs on a CPU with step times "
        "from the cost model; --engine vllm MODEL runs `vllm serve` with the temporal scheduler, and every flag "
        "not listed here goes to vLLM (`ecoserve worker --engine vllm --help` shows vLLM's flags too).",
        # -h/--help is handled in _run: with --engine vllm it must also show vLLM's own flags.
        add_help=False,
    )
    p.add_argument("-h", "--help", action="store_true", help="show this help (and vLLM's with --engine vllm)")
    p.add_argument("--engine", choices=["sim", "vllm"], default="sim")
    p.add_argument("model", nargs="?", help="--engine vllm: the model to serve; every other flag goes to vLLM")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    add_cost_model_flags(p)
    p.add_argument("--kv-blocks", type=positive_int, help="KV blocks (default: derived from GPU memory)")
    # Flags vLLM has too: with --engine vllm they are forwarded when given, and vLLM's defaults apply otherwise.
    for flag, kind in SHARED_WITH_VLLM.items():
        default = SIM_DEFAULTS.get(flag.removeprefix("--").replace("-", "_"))
        p.add_argument(flag, type=kind, help=f"sim default: {default or 'the whole KV cache'}; vLLM's own with vllm")
    p.add_argument("--default-chat-max-tokens", type=positive_int, default=256, help="chat max_tokens when unset")
    p.add_argument("--served-model-name", help="model name in the API (default: the model preset)")
    p.add_argument(
        "--phase-mode",
        choices=[m.value for m in PhaseMode],
        default=PhaseMode.PREFILL_PRIORITY.value,
        help="prefill-priority behind a router; tdpipe when the worker serves clients directly",
    )
    p.add_argument(
        "--time-scale",
        type=non_negative_float,
        default=1.0,
        help="multiply step times (0: instant-response worker)",
    )
    p.add_argument("--log-level", default="warning")
    p.set_defaults(handler=_run, accepts_any_flags=True, format_help=p.format_help)


SHARED_WITH_VLLM: dict[str, Callable[[str], float]] = {
    "--block-size": positive_int,
    "--gpu-memory-utilization": positive_float,
    "--max-num-batched-tokens": positive_int,
    "--max-num-seqs": positive_int,
    "--max-model-len": positive_int,
}
SIM_DEFAULTS = {"block_size": 16, "gpu_memory_utilization": 0.9, "max_num_batched_tokens": 8192, "max_num_seqs": 256}


def _run(args: argparse.Namespace) -> int:
    if args.help:
        print(args.format_help(), flush=True)
        if args.engine != "vllm":
            return 0
    if args.engine == "vllm":
        return _run_vllm(args)
    if args.extra:
        print(f"ecoserve worker: unrecognized arguments: {' '.join(args.extra)}", file=sys.stderr)
        return 2
    from ecoserve.worker.app import WorkerSettings, create_app
    from ecoserve.worker.metrics import WorkerMetrics
    from ecoserve.worker.sim import SimEngine

    for name, default in SIM_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    shape, gpu = args.model_preset, args.gpu
    try:
        blocks = args.kv_blocks or kv_capacity_blocks(
            shape, gpu, args.tp, args.pp, args.gpu_memory_utilization, args.block_size
        )
    except ValueError as err:
        print(f"ecoserve worker: {err} (set --kv-blocks, --tp or --gpu)", file=sys.stderr)
        return 2
    config = EngineConfig(blocks, args.block_size, args.max_num_batched_tokens, args.max_num_seqs)
    model = cost_model(args)
    policy = TemporalPolicy(PhasePolicySettings(mode=PhaseMode(args.phase_mode), pipeline_stages=args.pp))
    name = args.served_model_name or shape.name
    metrics = WorkerMetrics(name, args.block_size, blocks)
    engine = SimEngine(EngineModel(config, model, policy), QuantilePredictor(), metrics, args.time_scale)
    settings = WorkerSettings(name, args.max_model_len or config.capacity_tokens, args.default_chat_max_tokens)
    print(
        f"ecoserve worker (sim): {name} on {gpu.name} tp={args.tp} pp={args.pp}, {blocks} KV blocks of "
        f"{args.block_size}, http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    return run_app(create_app(engine, settings), args.host, args.port, args.log_level)


SCHEDULERS = {
    True: "ecoserve.worker.vllm_scheduler.TemporalAsyncScheduler",
    False: "ecoserve.worker.vllm_scheduler.TemporalScheduler",
}


def vllm_command(args: argparse.Namespace) -> list[str]:
    """`vllm serve` with the temporal scheduler: the async variant unless async scheduling is switched off."""
    extra = list(args.extra)
    async_scheduling = "--no-async-scheduling" not in extra
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", args.model]
    command += ["--host", args.host, "--port", str(args.port), "--scheduler-cls", SCHEDULERS[async_scheduling]]
    for flag in ("--served-model-name", *SHARED_WITH_VLLM):
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            command += [flag, str(value)]
    if args.tp > 1:
        command += ["--tensor-parallel-size", str(args.tp)]
    if args.pp > 1:
        command += ["--pipeline-parallel-size", str(args.pp)]
    return command + extra


def _run_vllm(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("vllm") is None:
        print("ecoserve worker: --engine vllm needs vLLM: pip install 'ecoserve[vllm]'", file=sys.stderr)
        return 2
    if args.help or any(a.startswith("--help=") for a in args.extra):
        print("vLLM's own flags, passed through by ecoserve worker --engine vllm:\n", flush=True)
        help_flag = [a for a in args.extra if a.startswith("--help=")] or ["--help"]
        command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *help_flag]
        return subprocess.run(command, check=False).returncode
    if not args.model:
        print("ecoserve worker: --engine vllm needs a MODEL (a Hugging Face id or a local path)", file=sys.stderr)
        return 2
    env = os.environ | {PHASE_MODE_ENV: args.phase_mode, GPU_ENV: args.gpu.name}
    # A fresh multiprocess-metrics directory, so the engine process's phase gauge reaches vLLM's /metrics.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="ecoserve-metrics-"))
    command = vllm_command(args)
    print("ecoserve worker (vllm): " + " ".join(command), file=sys.stderr, flush=True)
    os.execvpe(command[0], command, env)
