"""`llm data builtin|curate|rl-task`: build the built-in corpus; curate a corpus into clean
shards; write an RL task's SFT warm-start records."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="build the built-in corpus or curate a corpus")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    b = sub.add_parser("builtin", help="write the built-in corpus (standard library sources) and DIR/manifest.json")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--eval-fraction", type=float, default=0.1, help="share of modules held out for validation")
    b.add_argument("--max-chars", type=int, default=1200, help="longest function (signature + docstring + body) kept for sft/preference")
    b.set_defaults(func=run_builtin)

    c = sub.add_parser("curate", help="normalize, filter, dedup, scrub PII, decontaminate and shard config.data's source")
    c.add_argument("--config", required=True, help="a configs/*.py file; data.* names the input, data.curate.* the thresholds")
    c.add_argument("--out", required=True, help="output directory (shards, manifest.json, report.json)")
    c.set_defaults(func=run_curate)

    r = sub.add_parser("rl-task", help="write an RL task's SFT warm-start records (DIR/sft.jsonl) and its held-out prompts (DIR/heldout.jsonl)")
    r.add_argument("--config", required=True, help="a configs/grpo_*.py file; rl.task and its sizes pick the prompts")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--sft-records", type=int, default=0, help="train rows written to sft.jsonl (0 = all)")
    r.set_defaults(func=run_rl_task)

    e = sub.add_parser("eval-suite", help="write the built-in eval suite (held-out, decontaminated data + lm-eval task YAMLs) to DIR")
    e.add_argument("--out", required=True, help="output directory; run it with `llm eval --tasks DIR` or lm-eval's --include_path DIR")
    e.add_argument("--corpus", default=None, help="a `llm data builtin` directory or its manifest.json (default: the standard library, split the same way)")
    e.set_defaults(func=run_eval_suite)


def run_eval_suite(args: argparse.Namespace) -> int:
    from llm.eval.builtin import materialize_builtin

    if args.config_overrides:
        from llm.errors import UserError

        raise UserError("llm data eval-suite takes no --config.* overrides; use --out / --corpus")
    for path in materialize_builtin(args.out, corpus=args.corpus):
        print(path)
    return 0


def run_builtin(args: argparse.Namespace) -> int:
    from llm.data.builtin import build_builtin

    if args.config_overrides:
        from llm.errors import UserError

        raise UserError("llm data builtin takes no --config.* overrides; use --eval-fraction / --max-chars")
    manifest = build_builtin(args.out, eval_fraction=args.eval_fraction, max_chars=args.max_chars)
    print(json.dumps({"manifest": f"{args.out}/manifest.json", "counts": manifest["counts"], "labels": manifest["labels"]}))
    return 0


def run_curate(args: argparse.Namespace) -> int:
    from llm.config.loading import load_config
    from llm.data.curate.run import curate

    config = load_config(args.config, args.config_overrides)
    report = curate(config, args.out)
    summary = {
        "docs_in": report["input"]["docs"],
        "docs_out": {s: v["docs"] for s, v in report["output"].items()},
        "removed": {s["stage"]: s["docs_removed"] for s in report["stages"] if s["docs_removed"]},
        "mb_per_s": report["mb_per_s"],
        "report": f"{args.out}/report.json",
        "manifest": f"{args.out}/manifest.json",
    }
    print(json.dumps(summary))
    return 0


def run_rl_task(args: argparse.Namespace) -> int:
    """The SFT warm start for `llm grpo`: the task's train prompts with reference responses, so
    a policy first learns the answer format, then RL raises its success rate."""
    from pathlib import Path

    from llm.config.loading import load_config
    from llm.rl.tasks import build_task

    config = load_config(args.config, args.config_overrides)
    task = build_task(config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = task.sft_records(args.sft_records or None)
    with open(out / "sft.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with open(out / "heldout.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"prompt": row.prompt, **row.columns}) + "\n" for row in task.held_out)
    print(json.dumps({"task": task.name, "sft": str(out / "sft.jsonl"), "sft_records": len(records),
                      "heldout": str(out / "heldout.jsonl"), "heldout_prompts": len(task.held_out)}))
    return 0
