"""What an RL task is: prompts (train and held out), its own rewards, and what counts as solved."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from llm.errors import UserError
from llm.rl.rewards.spec import RewardSpec


@dataclasses.dataclass(frozen=True)
class PromptRow:
    prompt: str  # the user turn, raw text (the trainer renders the chat template)
    columns: dict  # e.g. {"answer": "46"}; passed to reward functions as keyword lists


@dataclasses.dataclass(frozen=True)
class RLTask:
    name: str
    train: list[PromptRow]
    held_out: list[PromptRow]
    rewards: list[RewardSpec]  # its default reward(s), named "builtin:<name>"
    success: Callable[[str, dict], bool]  # (completion, row columns) -> solved (held-out success rate)
    response_column: str | None = None  # the column holding a reference response (SFT warm start)

    def sft_records(self, n: int | None = None) -> list[dict]:
        """{"prompt", "response"} records of the first n train rows (all when None), for `llm sft`."""
        if self.response_column is None:
            raise UserError(f"rl.task={self.name!r} has no reference responses for an SFT warm start; "
                            "give the rows a response field (data.response_field)")
        rows = self.train if n is None else self.train[:n]
        return [{"prompt": r.prompt, "response": r.columns[self.response_column]} for r in rows
                if isinstance(r.columns.get(self.response_column), str)]


def columns_of(rows: Sequence[PromptRow]) -> dict[str, list]:
    """The rows' columns as reward-function keyword lists (one entry per row; None where a row
    lacks a column another row has)."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r.columns))
    return {k: [r.columns.get(k) for r in rows] for k in keys}


def check_sizes(task: str, size: int, held_out: int) -> None:
    if size < 1:
        raise UserError(f"rl.task_size={size} must be at least 1 for rl.task={task!r}")
    if not 0 <= held_out < size:
        raise UserError(f"rl.held_out={held_out} must be in [0, rl.task_size={size}) for rl.task={task!r}; lower it")
