"""`ecoserve profile`: check the cost model against measured GPU profiles (and, later, measure them)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ecoserve.brain.hardware import gpu_preset
from ecoserve.brain.profiles import calibrate, validate_profile

from .serve import preset


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="validate the cost model against measured GPU profiles")
    actions = p.add_subparsers(dest="profile_command", metavar="ACTION", required=True)
    v = actions.add_parser(
        "validate",
        help="predicted vs measured non-attention layer time for every row of a profile file",
        description="Compare the cost model with a Vidur-format mlp.csv profile, row by row.",
    )
    v.add_argument("file", type=Path, help="profile CSV (Vidur mlp.csv format)")
    v.add_argument(
        "--gpu",
        type=preset(gpu_preset),
        help="GPU preset (default: inferred from the file's path, e.g. .../h100/...)",
    )
    v.add_argument("--json", action="store_true", help="print one JSON object with the error summary")
    v.set_defaults(handler=_validate)
    c = actions.add_parser(
        "calibrate",
        help="fit the cost model's efficiency factors on profile files",
        description="Least-squares fit of the efficiency factors on every row of the given profiles "
        "(each file's GPU inferred from its path). The committed defaults were fitted on the four shared "
        "profiles.",
    )
    c.add_argument("files", type=Path, nargs="+", help="profile CSVs (Vidur mlp.csv format)")
    c.set_defaults(handler=_calibrate)


def _missing(command: str, files: list[Path]) -> bool:
    for f in files:
        if not f.is_file():
            print(f"ecoserve profile {command}: no such file: {f}", file=sys.stderr)
            return True
    return False


def _validate(args: argparse.Namespace) -> int:
    if _missing("validate", [args.file]):
        return 2
    try:
        report = validate_profile(args.file, args.gpu)
    except ValueError as err:
        print(f"ecoserve profile validate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.summary(), indent=2) if args.json else report.format_table())
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    if _missing("calibrate", args.files):
        return 2
    try:
        fitted = calibrate(args.files)
    except ValueError as err:
        print(f"ecoserve profile calibrate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(fitted), indent=2))
    return 0
