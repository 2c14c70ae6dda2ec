"""`llm bench [TARGET]`: measured throughput and cost, side by side with a peer (Hugging Face) or
with the alternatives; the targets and their options are llm.bench.TARGETS.

With no target name, `llm bench --config ...` is `llm bench train --config ...` (its options are
also accepted before any target name, under their own dests, so one given there with a target
name after it is an error rather than silently dropped). `llm convert bench` is the `convert`
target under another name (`add_target_parser`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm.bench import DEFAULT_TARGET, TARGETS, Target
from llm.errors import UserError

_TOP = "default_target__"  # dest prefix of the default target's options on `llm bench` itself


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark training, checkpoints, the data pipeline, generation, fine-tuning or conversion",
        description=f"Without a target name: the {DEFAULT_TARGET} target (`llm bench --config C` = `llm bench {DEFAULT_TARGET} --config C`).",
    )
    for option in TARGETS[DEFAULT_TARGET].options:
        kwargs = {**option.kwargs, "dest": _TOP + option.dest, "required": False}
        if kwargs.get("action") != "store_true":
            kwargs["metavar"] = option.dest.upper()
        p.add_argument(option.flag, **kwargs)
    sub = p.add_subparsers(dest="target", metavar="TARGET")
    for target in TARGETS.values():
        add_target_parser(sub, target.name)
    p.set_defaults(func=run, target=None)


def add_target_parser(subparsers, name: str, command: str | None = None) -> argparse.ArgumentParser:
    """Register target `name` as subcommand `command` (default: the target's name)."""
    target = TARGETS[name]
    p = subparsers.add_parser(command or name, help=target.help, description=target.help)
    target.add_arguments(p)
    p.set_defaults(func=run, target=name)
    return p


def _resolve(args: argparse.Namespace) -> Target:
    """The target to run, with the default target's options moved to their plain dests."""
    top = {k[len(_TOP) :]: v for k, v in vars(args).items() if k.startswith(_TOP)}
    for key in top:
        delattr(args, _TOP + key)
    if args.target is None:
        if top.get("config") is None:
            raise UserError(f"llm bench needs --config CONFIG.py (or a target first: llm bench {{{','.join(TARGETS)}}} ...)")
        vars(args).update(top)
        return TARGETS[DEFAULT_TARGET]
    given = [o.flag for o in TARGETS[DEFAULT_TARGET].options if o.dest in top and top[o.dest] != o.default]
    if given:
        raise UserError(f"{given[0]} comes before the target name; write it after: llm bench {args.target} {given[0]} ...")
    return TARGETS[args.target]


def write_json(path: str, figures: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(figures, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    target = _resolve(args)
    overrides = getattr(args, "config_overrides", [])
    if overrides and not target.takes_config:
        raise UserError(f"bench {target.name} takes no --config.* overrides (got {overrides[0]!r})")
    figures = target.run(args)
    if args.json_path:
        write_json(args.json_path, figures)
    return 0
