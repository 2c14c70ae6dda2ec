"""`llm dpo`: preference-tune a model with the DPO family (sigmoid, robust, hinge, ipo, simpo,
orpo), fully or with LoRA / QLoRA, from a pretrained or SFT start; re-running resumes."""

from __future__ import annotations

import argparse

from llm.cli.sft import add_common_arguments, prepare_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("dpo", help="preference-tune a policy on {prompt, chosen, rejected} pairs (DPO, IPO, cDPO, hinge, SimPO, ORPO)")
    add_common_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.finetune.preference import run_dpo
    from llm.finetune.start import resolve_chat_template

    summary = run_dpo(resolve_chat_template(prepare_config(args)), args.workdir, overwrite=args.overwrite)
    print(pair_summary_line(summary, ("rewards/accuracies", "rewards/margins")))
    return 0


def pair_summary_line(summary: dict, keys: tuple[str, ...]) -> str:
    """The step, start and final held-out loss and the held-out metrics a user judges the run by."""
    parts = [f"step {summary.get('step')}"]
    for key in ("start_eval_loss", "heldout_loss"):
        if isinstance(summary.get(key), float):
            parts.append(f"{key} {summary[key]:.4f}")
    for key in keys:
        value = summary.get(f"heldout_{key}")
        if isinstance(value, float):
            parts.append(f"held-out {key} {value:.4f}")
    if summary.get("cost"):
        parts.append(f"cost report {summary['cost']}")
    return ", ".join(parts)
