"""`ecoserve profile`: check the cost model against measured GPU profiles, and measure them."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ecoserve.brain.costmodel import CostModel
from ecoserve.brain.hardware import ModelShape, gpu_preset, model_preset
from ecoserve.brain.profiles import calibrate, validate_profile
from ecoserve.brain.steptime import decode_time, prefill_time
from ecoserve.worker.step_table import StepRow, write_tables

from .serve import positive_int, preset


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure step times, validate and calibrate the cost model")
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
    m = actions.add_parser(
        "measure",
        help="time prefill and decode steps of a model on this machine's GPU (random weights)",
        description="Time prefill by prompt length and decode by batch size, and write the tables the cost model "
        "reads. Backend torch builds one tensor-parallel shard of the model's decoder layer with random weights "
        "(PyTorch, no download; the shape from --model-preset or --hf-config). Backend vllm runs vLLM's own engine "
        "on --model with random weights (only its config is read) and derives step times from whole requests. "
        "With --gpu, print the cost model's prediction for that GPU beside each measurement.",
    )
    m.add_argument("--backend", choices=["torch", "vllm"], default="torch")
    m.add_argument("--model", help="backend vllm: Hugging Face id or local folder with a config.json")
    shape = m.add_mutually_exclusive_group()
    shape.add_argument("--model-preset", type=preset(model_preset), default="llama-2-7b")
    shape.add_argument("--hf-config", type=Path, help="a Hugging Face config.json (or its folder)")
    m.add_argument("--tp", type=positive_int, default=1, help="profile one shard of this tensor-parallel degree")
    m.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1 ...")
    m.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto")
    m.add_argument("--prompt-lens", type=_int_list, default=[128, 256, 512, 1024, 2048, 4096])
    m.add_argument("--batch-sizes", type=_int_list, default=[1, 8, 32, 64, 128, 256])
    m.add_argument("--context", type=positive_int, default=1024, help="KV tokens per sequence in decode steps")
    m.add_argument("--repeats", type=positive_int, default=5)
    m.add_argument(
        "--decode-steps", type=positive_int, default=16, help="backend vllm: tokens decoded to time one decode step"
    )
    m.add_argument("--gpu", type=preset(gpu_preset), help="compare with the cost model for this GPU preset")
    m.add_argument("--out", type=Path, default=Path("profile"), help="prefix: PREFIX.prefill.csv, PREFIX.decode.csv")
    m.set_defaults(handler=_measure)


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


def _int_list(text: str) -> list[int]:
    return [positive_int(v) for v in text.split(",") if v.strip()]


def _measure(args: argparse.Namespace) -> int:
    if args.backend == "vllm" and not args.model:
        print("ecoserve profile measure: --backend vllm needs --model (a Hugging Face id or folder)", file=sys.stderr)
        return 2
    needs = "vllm" if args.backend == "vllm" else "torch"
    if importlib.util.find_spec(needs) is None:
        print(
            f"ecoserve profile measure: --backend {args.backend} needs {needs}: pip install 'ecoserve[vllm]'",
            file=sys.stderr,
        )
        return 2
    hf_config = args.hf_config
    if hf_config is None and args.model and (Path(args.model) / "config.json").is_file():
        hf_config = Path(args.model)
    try:
        shape = ModelShape.from_hf_config_file(hf_config) if hf_config else args.model_preset
    except (OSError, ValueError) as err:
        print(f"ecoserve profile measure: --hf-config: {err}", file=sys.stderr)
        return 2
    model = CostModel(shape, args.gpu, tp=args.tp) if args.gpu else None
    print(f"{'kind':<8}{'tokens':>8}{'context':>9}{'measured ms':>13}{'model ms':>10}{'error':>8}")

    def show(row: StepRow) -> None:
        predicted = None
        if model is not None:
            predicted = (
                prefill_time(model, [row.tokens])
                if row.kind == "prefill"
                else decode_time(model, row.tokens, row.tokens * row.context)
            )
        cells = ("-", "-") if predicted is None else (f"{predicted * 1000:.2f}", f"{predicted / row.seconds - 1:+.0%}")
        print(
            f"{row.kind:<8}{row.tokens:>8}{row.context:>9}{row.seconds * 1000:>13.2f}{cells[0]:>10}{cells[1]:>8}",
            flush=True,
        )

    if args.backend == "vllm":
        from ecoserve.worker.vllm_profile import profile_engine, vllm_generate

        max_len = max([*args.prompt_lens, args.context + args.decode_steps + 1])
        generate, vocab = vllm_generate(args.model, args.tp, max_len, max(args.batch_sizes))
        rows = profile_engine(
            generate,
            args.prompt_lens,
            args.batch_sizes,
            args.context,
            vocab,
            args.repeats,
            args.decode_steps,
            progress=show,
        )
    else:
        from ecoserve.worker.torch_profile import profile

        rows = profile(
            shape,
            args.prompt_lens,
            args.batch_sizes,
            args.context,
            args.tp,
            args.device,
            args.dtype,
            args.repeats,
            show,
        )
    prefill_path, decode_path = write_tables(rows, args.out)
    print(f"wrote {prefill_path} and {decode_path}")
    return 0
