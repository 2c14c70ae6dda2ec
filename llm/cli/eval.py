"""`llm eval`: score a model on lm-evaluation-harness task files, offline, in JAX.

    llm eval --workdir runs/sft --tasks builtin
    llm eval --workdir runs/sft --tasks path/to/my_task.yaml --num-fewshot 5
    llm eval --checkpoint hf/Qwen2-0.5B --tasks arc_easy.yaml --limit 200 --output results.json
    llm eval --workdir runs/sft --tasks builtin --perturb typo

Prints a table (task, metric, value, stderr) and writes, next to --output (default
<workdir>/eval/results.json, or ./eval/results.json for --checkpoint): results.json in
lm-eval's layout, samples_<task>.jsonl per task and report.md with plots. results.json is
rewritten after each task, so a failing task leaves the finished ones on disk.
`--config.a.b=value` overrides apply to the checkpoint's stored config (mesh, precision...).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from llm.errors import UserError

log = logging.getLogger("llm")


def add_parser(subparsers) -> None:
    from llm.eval.perturb import PERTURBATIONS

    p = subparsers.add_parser("eval", help="score a model on lm-eval task files (log-likelihood, multiple choice, generation, pass@k)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a training / fine-tuning workdir: its latest valid checkpoint")
    src.add_argument("--checkpoint", help="an `llm export` / `llm convert` directory or a Hugging Face model directory")
    p.add_argument("--tasks", required=True, help="'builtin', lm-eval task YAML files or directories of them (comma-separated)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples per item (default: each task's own)")
    p.add_argument("--fewshot-seed", type=int, default=1234, help="seed of the few-shot sampler (lm-eval's default 1234)")
    p.add_argument("--limit", type=float, default=None, help="only the first N items of each task (a fraction < 1: that share)")
    p.add_argument("--output", default=None, help="results.json path (samples and report go next to it)")
    p.add_argument("--batch-size", type=int, default=16, help="requests per forward pass")
    p.add_argument("--max-length", type=int, default=None, help="context length used for scoring (default: the model's)")
    p.add_argument("--perturb", choices=PERTURBATIONS, default=None, help="also score each task on perturbed inputs and report the drop")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations")
    p.add_argument("--no-samples", action="store_true", help="do not write the per-item samples_<task>.jsonl files")
    p.set_defaults(func=run)


def _out_dir(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.output:
        results = Path(args.output)
        if results.suffix != ".json":
            raise UserError(f"--output {args.output!r} should name a .json file (results.json); samples and the report go next to it")
        return results.parent, results
    base = Path(args.workdir) / "eval" if args.workdir else Path("eval")
    return base, base / "results.json"


def run(args: argparse.Namespace) -> int:
    from llm.eval.model import load_eval_model
    from llm.eval.results import console_table
    from llm.eval.runner import load_tasks, resolve_task_paths, run_eval

    from llm.train.workdir import setup_logging

    setup_logging(None)  # per-task lines and warnings on the console
    source = args.workdir or args.checkpoint
    if not Path(source).is_dir():
        raise UserError(f"{source!r} does not exist; pass a workdir, an exported checkpoint or a Hugging Face model directory")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UserError(f"--num-fewshot {args.num_fewshot} must be >= 0")
    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit {args.limit:g} must be > 0 (an item count, or a fraction below 1)")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    out_dir, results_path = _out_dir(args)
    paths = resolve_task_paths(args.tasks, out_dir / "builtin_tasks")
    tasks = load_tasks(paths, num_fewshot=args.num_fewshot, fewshot_seed=args.fewshot_seed)
    model = load_eval_model(source, getattr(args, "config_overrides", ()) or (), batch_size=args.batch_size, max_length=args.max_length)
    model_args = {"source": str(source), "batch_size": args.batch_size, "max_length": model.max_length,
                  "num_fewshot": args.num_fewshot, "fewshot_seed": args.fewshot_seed, "limit": limit}
    doc = run_eval(model, tasks, out_dir, results_path=results_path, model_source="llm", model_args=model_args,
                   limit=limit, perturb=args.perturb, seed=args.seed, write_samples=not args.no_samples)
    print(console_table(doc))
    print(f"results: {results_path}  report: {out_dir / 'report.md'}")
    return 0
