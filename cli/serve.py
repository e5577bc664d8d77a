"""Shared pieces of the subcommands: flag types that name the wrong flag, and running a server."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import uvicorn
from fastapi import FastAPI

from ecoserve.brain.costmodel import CostModel
from ecoserve.brain.hardware import UnknownPresetError, gpu_preset, interconnect_preset, model_preset

if TYPE_CHECKING:
    from ecoserve.router.discovery import UrlSource

T = TypeVar("T")


def preset(lookup: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type for a preset name, so a wrong one is reported against its flag with the valid names."""

    def convert(name: str) -> T:
        try:
            return lookup(name)
        except UnknownPresetError as err:
            raise argparse.ArgumentTypeError(str(err.args[0])) from None

    convert.__name__ = lookup.__name__
    return convert


def number(kind: type[int] | type[float], low: float, *, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number above `low` (or at least `low`), so a bad value names its flag."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'above'} {low:g}, got {text}")
        return value

    return parse


positive_int = number(int, 1, inclusive=True)
positive_float = number(float, 0)
non_negative_float = number(float, 0, inclusive=True)


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def run_app(app: FastAPI, host: str, port: int, log_level: str, grace: float = 5.0) -> int:
    """Serve until SIGINT/SIGTERM; on the way out uvicorn stops accepting and lets open requests (streams
    included) finish for up to `grace` seconds."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace)
    return 0


def add_shutdown_flag(p: argparse.ArgumentParser) -> None:
    """A router or gateway that goes (a merged macro instance's, a rollout) lets its streams finish first."""
    p.add_argument(
        "--shutdown-grace",
        type=non_negative_float,
        default=5.0,
        help="seconds open requests may take to finish after SIGTERM (default 5; the operator passes 120)",
    )


def add_cost_model_flags(p: argparse.ArgumentParser) -> None:
    """The hardware a step-time model prices: the same flags on the worker, the router and `up`."""
    p.add_argument(
        "--model-preset", type=preset(model_preset), default="llama-2-7b", help="model shape for the cost model"
    )
    p.add_argument("--gpu", type=preset(gpu_preset), default="h100", help="GPU preset for the cost model")
    p.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel degree")
    p.add_argument("--pp", type=positive_int, default=1, help="pipeline-parallel degree")
    p.add_argument(
        "--tp-link", type=preset(interconnect_preset), default="nvlink", help="link between tensor-parallel GPUs"
    )


def cost_model(args: argparse.Namespace) -> CostModel:
    return CostModel(args.model_preset, args.gpu, tp=args.tp, pp=args.pp, tp_link=args.tp_link)


def add_discovery_flags(p: argparse.ArgumentParser, static_flag: str, what: str) -> None:
    """Where the upstreams come from: a fixed `static_flag` URL list, a file of URLs followed as it changes
    (`static_flag`-file), or pods found by label selector."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(static_flag, help=f"comma-separated {what} URLs, e.g. http://127.0.0.1:8100,...")
    source.add_argument(
        f"{static_flag}-file",
        type=Path,
        metavar="FILE",
        help=f"a file of {what} URLs (one per line or comma-separated), followed as it is rewritten",
    )
    source.add_argument("--discover-selector", help=f"find the {what}s as ready pods with these labels (in a cluster)")
    p.add_argument("--discover-namespace", default="default", help="namespace of the pods (default: default)")
    p.add_argument("--discover-port", type=positive_int, default=8000, help="port of the pods (default 8000)")


def url_source(args: argparse.Namespace, static_flag: str, command: str) -> UrlSource:
    from ecoserve.router.discovery import file_urls, kube_pods, static_urls

    if args.discover_selector:
        return kube_pods(args.discover_namespace, args.discover_selector, args.discover_port)
    file_flag = f"{static_flag}-file"
    path = getattr(args, file_flag.removeprefix("--").replace("-", "_"))
    if path is not None:
        try:
            return file_urls(path)
        except (OSError, ValueError) as err:
            raise SystemExit(f"ecoserve {command}: {file_flag}: {err}") from None
    urls = [u.strip() for u in getattr(args, static_flag.removeprefix("--")).split(",") if u.strip()]
    if not urls:
        raise SystemExit(f"ecoserve {command}: {static_flag}: give at least one URL")
    return static_urls(urls)
