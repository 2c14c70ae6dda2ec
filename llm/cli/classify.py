"""`llm classify`: fine-tune a sequence classifier (a head on the last real token) fully, with a
frozen backbone or with LoRA; reports accuracy and macro-F1. Re-running resumes."""

from __future__ import annotations

import argparse

from llm.cli.sft import add_common_arguments, prepare_config, summary_line


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("classify", help="fine-tune a sequence classifier (accuracy, F1) on {text, label} records")
    add_common_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.finetune.classify import run_classification

    summary = run_classification(prepare_config(args), args.workdir, overwrite=args.overwrite)
    print(summary_line(summary))
    return 0
