"""`llm rm`: train a reward model (a scalar head on the last token, Bradley-Terry loss) on
preference pairs, fully, with a frozen backbone or with LoRA; `llm rm score` scores texts with
a trained one. Re-running the training command resumes."""

from __future__ import annotations

import argparse

from llm.cli.dpo import pair_summary_line
from llm.cli.sft import prepare_config
from llm.errors import UserError


def add_parser(subparsers) -> None:
    from llm.cli.rm_score import add_score_parser

    p = subparsers.add_parser("rm", help="train a reward model on {prompt, chosen, rejected} pairs; `llm rm score` scores texts")
    p.add_argument("--config", help="a configs/rm_*.py file")
    p.add_argument("--workdir", help="where the run lives (config, checkpoints, cost.json, merged/ with the reward head)")
    p.add_argument("--init-from", default=None, help="start weights: a training workdir, an `llm export` directory or a Hugging Face model directory (a *ForSequenceClassification one brings its score head)")
    p.add_argument("--data", default=None, help="a JSONL file (or glob) of preference pairs or the manifest.json of `llm data builtin`")
    p.add_argument("--overwrite", action="store_true", help="move a different run in --workdir aside and start anew")
    p.set_defaults(func=run)
    add_score_parser(p.add_subparsers(dest="rm_command", metavar="score"))


def run(args: argparse.Namespace) -> int:
    from llm.finetune.reward import run_reward
    from llm.finetune.start import resolve_chat_template

    missing = [flag for flag, value in (("--config", args.config), ("--workdir", args.workdir)) if not value]
    if missing:
        raise UserError(f"`llm rm` needs {' and '.join(missing)} (or use `llm rm score --workdir W --input rows.jsonl`)")
    summary = run_reward(resolve_chat_template(prepare_config(args)), args.workdir, overwrite=args.overwrite)
    print(pair_summary_line(summary, ("accuracy", "margin")))
    return 0
