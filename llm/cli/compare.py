"""`llm compare RUN1 RUN2 ...`: runs side by side.

A run is a fine-tuning workdir (its cost.json: trainable params, step FLOPs, peak memory,
tokens/s, eval loss) and/or evaluation results: a results.json in lm-eval's layout (`llm eval`'s
or lm-eval's own), a directory holding one, or a workdir whose eval/ holds one (one row per
task/metric, one column per run, value ± stderr and the difference to the first run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm.errors import UserError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="compare runs: fine-tuning cost reports and/or eval results side by side")
    p.add_argument("workdirs", nargs="+",
                   help="workdirs of `llm sft` / `llm classify` runs (cost.json), and/or `llm eval` results: "
                        "results.json files or directories holding one (or eval/results.json)")
    p.add_argument("--json", default=None, help="also write the reports, keyed by path, to this file (eval metrics under 'eval')")
    p.set_defaults(func=run)


def _name(path: str) -> str:
    p = Path(path)
    if p.suffix == ".json":
        if p.stem != "results":
            return p.stem
        p = p.parent
    if p.name == "eval":
        p = p.parent
    return p.name or str(path)


def _names(paths: list[str]) -> list[str]:
    names = [_name(p) for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def run(args: argparse.Namespace) -> int:
    from llm.eval.report import compare_results_table, metrics_by_task
    from llm.eval.results import find_results, read_results
    from llm.finetune.cost import COST_FILE, compare_table, read_cost

    costs: dict[str, dict] = {}
    evals: dict[str, dict] = {}
    for w in args.workdirs:
        has_cost = Path(w).is_dir() and (Path(w) / COST_FILE).is_file()
        results = find_results(w)
        if not has_cost and results is None:
            raise UserError(f"{w!r} has neither {COST_FILE} nor results.json (nor eval/results.json); pass `llm sft` / "
                            "`llm classify` workdirs or `llm eval` results")
        if has_cost:
            costs[w] = read_cost(w)
        if results is not None:
            evals[w] = read_results(results)
    if costs:
        print(compare_table(_names(list(costs)), list(costs.values())))
    if evals:
        if costs:
            print()
        print(compare_results_table(_names(list(evals)), list(evals.values())), end="")
    if args.json:
        out = {w: dict(costs.get(w, {})) for w in args.workdirs}
        for w, doc in evals.items():
            out[w]["eval"] = metrics_by_task(doc)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0
