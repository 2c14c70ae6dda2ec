"""`llm grpo`: online RL with group baselines (GRPO, DAPO, Dr. GRPO, GSPO, RLOO) from an SFT or
pretrained start, fully or with LoRA / QLoRA; rollouts from our sampler, rewards from the
built-in tasks, Python functions or a reward model; re-running resumes."""

from __future__ import annotations

import argparse

from llm.errors import UserError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("grpo", help="RL-tune a policy with group-relative advantages (GRPO, DAPO, Dr. GRPO, GSPO, RLOO)")
    add_rl_arguments(p)
    p.set_defaults(func=run)


def add_rl_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a configs/grpo_*.py file")
    p.add_argument("--workdir", required=True, help="where the run lives (config, checkpoints, metrics, samples.jsonl, reward.png, merged/, adapter/)")
    p.add_argument("--init-from", default=None, help="start weights: an `llm sft` / `llm train` workdir, an `llm export` directory or a Hugging Face model directory")
    p.add_argument("--data", default=None, help="prompts for rl.task=jsonl: a JSONL file (or glob) with a prompt field")
    p.add_argument("--reward-model", default=None, help="an `llm rm` workdir scored as one more reward (rl.reward_model)")
    p.add_argument("--overwrite", action="store_true", help="move a different run in --workdir aside and start anew")


def prepare_rl_config(args: argparse.Namespace):
    from llm.config.loading import load_config
    from llm.config.validate import validate_config
    from llm.finetune.start import apply_data, apply_init_from, resolve_chat_template

    config = load_config(args.config, args.config_overrides)
    if args.init_from:
        config = apply_init_from(config, args.init_from, args.config_overrides)
    if args.data:
        config = apply_data(config, args.data)
    if args.reward_model:
        config.rl.reward_model = args.reward_model
    if config.rl.task == "jsonl" and not config.data.path:
        raise UserError("rl.task=jsonl reads prompts from data.path; pass --data PROMPTS.jsonl")
    validate_config(config)
    return resolve_chat_template(config)


def run(args: argparse.Namespace) -> int:
    from llm.finetune.grpo import run_grpo

    summary = run_grpo(prepare_rl_config(args), args.workdir, overwrite=args.overwrite)
    print(rl_summary_line(summary))
    return 0


def rl_summary_line(summary: dict) -> str:
    """The step and the held-out reward and success rate before and after."""
    parts = [f"step {summary.get('step')}"]
    for key, label in (("start_eval_reward", "held-out reward at start"), ("heldout_reward", "held-out reward"),
                       ("start_eval_success", "held-out success at start"), ("heldout_success", "held-out success")):
        if isinstance(summary.get(key), float):
            parts.append(f"{label} {summary[key]:.4f}")
    if summary.get("cost"):
        parts.append(f"cost report {summary['cost']}")
    return ", ".join(parts)
