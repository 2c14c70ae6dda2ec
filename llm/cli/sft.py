"""`llm sft`: instruction tuning (full, LoRA, QLoRA or partial) from a pretrained start;
re-running the same command resumes."""

from __future__ import annotations

import argparse

from llm.errors import UserError


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a configs/sft_*.py (or cls_*.py) file")
    p.add_argument("--workdir", required=True, help="where the run lives (config, checkpoints, cost.json, merged/, adapter/)")
    p.add_argument("--init-from", default=None, help="start weights: a training workdir, an `llm export` directory or a Hugging Face model directory")
    p.add_argument("--data", default=None, help="a JSONL file (or glob) or the manifest.json of `llm data builtin`")
    p.add_argument("--overwrite", action="store_true", help="move a different run in --workdir aside and start anew")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sft", help="instruction-tune a model (full, LoRA, QLoRA or partial fine-tuning)")
    add_common_arguments(p)
    p.set_defaults(func=run)


def prepare_config(args: argparse.Namespace):
    """The config file + overrides, with the start weights and data from the command line."""
    from llm.config.loading import load_config
    from llm.config.validate import validate_config
    from llm.finetune.start import apply_data, apply_init_from

    config = load_config(args.config, args.config_overrides)
    if args.init_from:
        config = apply_init_from(config, args.init_from, args.config_overrides)
    if args.data:
        config = apply_data(config, args.data)
    if not config.data.path and config.data.source != "synthetic":
        raise UserError("no training data: pass --data FILE.jsonl or --data CORPUS/manifest.json")
    validate_config(config)
    return config


def run(args: argparse.Namespace) -> int:
    from llm.finetune.sft import run_sft
    from llm.finetune.start import resolve_chat_template

    config = resolve_chat_template(prepare_config(args))
    summary = run_sft(config, args.workdir, overwrite=args.overwrite)
    print(summary_line(summary))
    return 0


def summary_line(summary: dict) -> str:
    parts = [f"step {summary.get('step')}"]
    for key in ("start_eval_loss", "eval_loss", "accuracy", "macro_f1"):
        if isinstance(summary.get(key), float):
            parts.append(f"{key} {summary[key]:.4f}")
    if summary.get("cost"):
        parts.append(f"cost report {summary['cost']}")
    return ", ".join(parts)
