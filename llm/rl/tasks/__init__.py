"""Prompt sets for online RL with their own rewards: the built-in addition and docstring tasks
and the user's JSONL prompts (`rl.task`)."""

from __future__ import annotations

from llm.errors import ConfigError
from llm.rl.tasks.base import PromptRow, RLTask, columns_of

TASKS = ("addition", "docstring", "jsonl")


def build_task(config) -> RLTask:
    """The task config.rl.task names, built from config.rl and config.data."""
    rl, data = config.rl, config.data
    name = str(rl.task)
    if name == "addition":
        from llm.rl.tasks.addition import addition_task

        return addition_task(int(rl.task_size), int(rl.held_out), int(rl.digits), int(data.seed))
    if name == "docstring":
        from llm.rl.tasks.docstring import docstring_task

        return docstring_task(int(rl.task_size), int(rl.held_out), int(data.seed), timeout_s=float(rl.sandbox_timeout_s),
                              memory_mb=int(rl.sandbox_memory_mb), workers=int(rl.reward_workers))
    if name == "jsonl":
        from llm.rl.tasks.jsonl import jsonl_task

        return jsonl_task(data)
    raise ConfigError(f"rl.task={name!r} is not one of {', '.join(TASKS)}; pick one")


__all__ = ["PromptRow", "RLTask", "build_task", "columns_of", "TASKS"]
