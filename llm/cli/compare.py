"""`llm compare W1 W2 ...`: the cost reports of fine-tuning runs side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="compare fine-tuning runs: trainable params, step FLOPs, peak memory, tokens/s, eval loss")
    p.add_argument("workdirs", nargs="+", help="workdirs of `llm sft` / `llm classify` runs (each has cost.json)")
    p.add_argument("--json", default=None, help="also write the reports, keyed by workdir, to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.finetune.cost import compare_table, read_cost

    reports = [read_cost(w) for w in args.workdirs]
    names = [Path(w).name or str(w) for w in args.workdirs]
    print(compare_table(names, reports))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(zip(args.workdirs, reports)), indent=2) + "\n")
    return 0
