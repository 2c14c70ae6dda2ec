"""The `llm` command: one subcommand per job.

Each subcommand lives in its own module exposing `add_parser(subparsers)`, which registers the
parser and sets `func`. Errors a user can fix (ConfigError and friends) print as one line and
exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llm.cpu.runtime import configure_host_runtime
from llm.errors import UserError

# Modules under llm.cli that define subcommands, in the order `llm --help` lists them.
SUBCOMMAND_MODULES = (
    "quickstart",
    "train",
    "sft",
    "classify",
    "rm",
    "dpo",
    "grpo",
    "ppo",
    "eval",
    "compare",
    "export",
    "generate",
    "bench",
    "config_cmd",
    "convert",
    "compile_cmd",
    "plan",
    "data_cmd",
    "tokenizer_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm", description="Train and adapt decoder language models with JAX.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"llm.cli.{name}").add_parser(subparsers)
    return parser


def split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--config.a.b=v` / `--config.a.b v` overrides from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config.") :]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise UserError(f"{arg} needs a value; write {arg}=VALUE")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, overrides = split_config_overrides(argv)
        args = build_parser().parse_args(rest)
        args.config_overrides = overrides
        configure_host_runtime()
        result = args.func(args)
        return int(result or 0)
    except (UserError, FileNotFoundError, FileExistsError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"llm {argv[0] if argv else ''}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
