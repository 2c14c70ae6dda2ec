"""`llm data builtin|curate`: build the built-in corpus; curate a corpus into clean shards."""

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
