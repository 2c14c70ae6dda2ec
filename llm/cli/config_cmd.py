"""`llm config show`: print a config (with overrides applied) so users can see every key."""

from __future__ import annotations

import argparse

from llm.config.loading import load_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("config", help="show a config with overrides applied")
    p.add_argument("action", choices=["show"])
    p.add_argument("--config", required=True, help="path to a configs/*.py file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.config_overrides)
    print(config.to_json_best_effort(indent=2))
    return 0
