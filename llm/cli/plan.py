"""`llm plan`: what a training or fine-tuning run will cost, per hardware choice and method.

  llm plan --config configs/sft_lora_llama3_8b.py --tokens 50M --hardware v5e-8,v5p-8,h100x8,cpu
  llm plan --config configs/llama3_8b.py --tokens 1T --hardware v5p-256 --compare full,lora,qlora,frozen
  llm plan --validate        # short real steps here: predicted vs measured step time and memory

Memory comes from a compile where a compiler exists (libtpu for TPU slices, XLA:CPU for `cpu`),
else from the analytic model (llm.plan.memory); time from step FLOPs, the chips' peak and the MFU
table (configs/plan_mfu.json); money from the price table (configs/plan_prices.json, or --price).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plan", help="predict time, memory and cost of a run per hardware and method (full / LoRA / QLoRA / frozen)")
    p.add_argument("--config", help="a configs/*.py file (--config.a.b=v overrides apply)")
    p.add_argument("--tokens", help="the token budget: 50M, 1.5B, 1T, 2e9")
    p.add_argument("--hardware", default="v5e-8,v5p-8,h100x8,cpu", help="comma-separated: v5e-N, v5p-N, v6e-N, h100xN, h200xN, a100xN, cpu")
    p.add_argument("--compare", default=None, help="methods side by side, of full, lora, qlora, frozen (default: the config's own and full)")
    p.add_argument("--price", default=None, help="a price per chip-hour for every choice, or a price table JSON file (default configs/plan_prices.json)")
    p.add_argument("--mfu-table", default=None, help="the MFU table (default configs/plan_mfu.json)")
    p.add_argument("--memory", choices=("auto", "analytic"), default="auto", help="auto: compile where a compiler exists; analytic: never compile")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE", help="the plan as JSON, to FILE or (no FILE) stdout")
    p.add_argument("--validate", action="store_true", help="run short real steps here and print predicted vs measured")
    p.add_argument("--validate-configs", default="tiny,small", help="with --validate: configs/NAME.py models, each full and LoRA (and QLoRA with --validate-methods)")
    p.add_argument("--validate-methods", default="full,lora", help="with --validate: methods to run")
    p.add_argument("--steps", type=int, default=6, help="with --validate / --calibrate: steps per run (the first compiles and is not timed)")
    p.add_argument("--calibrate", action="store_true", help="run --validate's runs and print the cpu rows they measure for configs/plan_mfu.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.errors import UserError

    if not os.environ.get("JAX_PLATFORMS"):  # libtpu only describes slices here; never run on it
        import jax

        jax.config.update("jax_platforms", "cpu")
    if args.validate or args.calibrate:
        import datetime

        from llm.plan.methods import parse_methods
        from llm.plan.validate import format_validation, mfu_rows, validate

        results = validate([c for c in args.validate_configs.split(",") if c], parse_methods(args.validate_methods), args.steps)
        print(format_validation(results))
        if args.calibrate:
            command = (f"llm plan --calibrate --validate-configs {args.validate_configs} --validate-methods "
                       f"{args.validate_methods} --steps {args.steps}")
            rows = mfu_rows(results, datetime.date.today().isoformat(), command)
            print(json.dumps(rows, indent=1))
        if args.json:
            _write(args.json, [r.as_json() for r in results])
        return 0
    if not args.config or not args.tokens:
        raise UserError("llm plan needs --config CONFIG.py and --tokens N (e.g. 50M), or --validate")
    plan = make_plan(args)
    from llm.plan.report import format_plan, plan_json

    if args.json == "-":
        print(json.dumps(plan_json(plan), indent=2))
    else:
        print(format_plan(plan))
        if args.json:
            _write(args.json, plan_json(plan))
    return 0


def _write(path: str, data) -> None:
    if path == "-":
        print(json.dumps(data, indent=2))
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def make_plan(args: argparse.Namespace):
    from llm.config.loading import load_config
    from llm.errors import UserError
    from llm.plan.hardware import parse_hardware_list
    from llm.plan.methods import method_of, parse_methods
    from llm.plan.mfu import DEFAULT_PATH, read_table
    from llm.plan.planner import Memories, parse_tokens, plan_row
    from llm.plan.prices import resolve_prices
    from llm.plan.report import Plan

    tokens = parse_tokens(args.tokens)
    hardware = parse_hardware_list(args.hardware)
    prices = resolve_prices(args.price, [hw.chip for hw in hardware])
    mfu_rows = read_table(args.mfu_table or DEFAULT_PATH)
    config = load_config(args.config, args.config_overrides)
    methods = parse_methods(args.compare) if args.compare else list(dict.fromkeys(["full", method_of(config)]))
    peak = None
    if any(hw.kind == "cpu" for hw in hardware):
        from llm.plan.cpu import cpu_peak_flops

        peak = cpu_peak_flops()
    memories = Memories(args.memory, lambda message: print(message, file=sys.stderr, flush=True))
    rows = tuple(plan_row(config, hw, m, tokens, mfu_rows, prices, memories, peak) for hw in hardware for m in methods)
    if not any(r.fit is not None and r.hardware.name == r.asked.name for r in rows):
        bigger = next((r for r in rows if r.fit is not None), None)
        fix = (f"the smallest change that fits: {bigger.hardware.name} for {bigger.method}"
               + (f" with --config.{' --config.'.join(bigger.fit.overrides)}" if bigger.fit.overrides else "")) if bigger else \
            "nothing tried fits, not even larger slices: shorten data.seq_len or data.batch_size, or use LoRA / QLoRA"
        raise UserError(f"{args.config} fits none of {args.hardware} ({', '.join(methods)}); {fix}")
    return Plan(args.config, tokens, rows, prices, tuple(memories.notes))
