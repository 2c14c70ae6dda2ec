"""`llm train`: pretrain (or continue) a model in a workdir; re-running resumes."""

from __future__ import annotations

import argparse

from llm.config.loading import load_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="pretrain a model; re-run the same command to resume")
    p.add_argument("--config", required=True, help="a configs/*.py file")
    p.add_argument("--workdir", required=True, help="where the run lives (config, checkpoints, metrics)")
    p.add_argument("--overwrite", action="store_true", help="move a different run in --workdir aside and start anew")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.train.init_sources import apply_hf_architecture
    from llm.train.loop import run_training

    config = apply_hf_architecture(load_config(args.config, args.config_overrides))
    run_training(config, args.workdir, overwrite=args.overwrite)
    return 0
