"""`llm ppo`: online RL with a learned critic (TRL 0.x PPOTrainer's algorithm) from an SFT or
pretrained start, fully or with LoRA / QLoRA, rewarded by an `llm rm` reward model and / or
reward functions; re-running resumes."""

from __future__ import annotations

import argparse

from llm.cli.grpo import add_rl_arguments, prepare_rl_config, rl_summary_line


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("ppo", help="RL-tune a policy with PPO against a reward model (value head, GAE, clipped losses)")
    add_rl_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.finetune.ppo import run_ppo

    summary = run_ppo(prepare_rl_config(args), args.workdir, overwrite=args.overwrite)
    print(rl_summary_line(summary))
    return 0
