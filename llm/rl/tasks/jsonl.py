"""Prompts from the user's JSONL: one object per line with data.prompt_field (a string); every
other field becomes a column passed to the reward functions. Held-out rows come from
data.eval_path, else a data.eval_fraction share chosen by a hash of the prompt (stable across
runs and machines). The task has no built-in reward: name some in rl.rewards / rl.reward_model.
A row counts as solved when the completion equals its data.response_field column, if it has one."""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path

from llm.data.jsonl import read_jsonl
from llm.data.split import is_validation
from llm.errors import UserError
from llm.rl.tasks.base import PromptRow, RLTask


def _files(path: str, label: str) -> list[str]:
    if not path:
        raise UserError(f"rl.task='jsonl' needs {label}; set it to a JSONL file of prompts")
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path))
        if not files:
            raise UserError(f"{label}={path!r} matches no files; check the pattern")
        return files
    if Path(path).is_dir():
        files = sorted(str(p) for p in Path(path).glob("*.jsonl"))
        if not files:
            raise UserError(f"{label}={path!r} is a directory with no .jsonl files; point it at a JSONL file")
        return files
    return [path]


def read_prompt_rows(path: str, prompt_field: str, label: str = "data.path") -> list[PromptRow]:
    rows = []
    for file in _files(path, label):
        for n, record in read_jsonl(file, label):
            where = f"{file}:{n}"
            if not isinstance(record, dict):
                raise UserError(f"{where} is a JSON {type(record).__name__}; write one object per line with {prompt_field!r}")
            if prompt_field not in record:
                has = ", ".join(map(repr, sorted(record)[:6])) or "no fields"
                raise UserError(f"{where} has no {prompt_field!r} field (it has {has}); add it or set data.prompt_field")
            prompt = record[prompt_field]
            if not isinstance(prompt, str) or not prompt:
                raise UserError(f"{where}: {prompt_field!r} is {type(prompt).__name__ if not isinstance(prompt, str) else 'empty'}; "
                                "give the prompt as a non-empty string")
            rows.append(PromptRow(prompt, {k: v for k, v in record.items() if k != prompt_field}))
    if not rows:
        raise UserError(f"{label}={path!r} has no rows; give it one JSON object per line")
    return rows


def jsonl_task(data) -> RLTask:
    """The task of config.data: path, eval_path, eval_fraction, prompt_field, response_field."""
    rows = read_prompt_rows(str(data.path), str(data.prompt_field))
    if data.eval_path:
        train, held_out = rows, read_prompt_rows(str(data.eval_path), str(data.prompt_field), "data.eval_path")
    else:
        fraction = float(data.eval_fraction)
        held_out = [r for r in rows if is_validation(r.prompt, fraction)]
        train = [r for r in rows if not is_validation(r.prompt, fraction)]
        if not train:
            raise UserError(f"data.eval_fraction={fraction} holds out all {len(rows)} rows of {data.path}; lower it")
    response = str(data.response_field)
    has_response = response and all(isinstance(r.columns.get(response), str) for r in train)
    return RLTask("jsonl", train, held_out, [], _ExactResponse(response), response_column=response if has_response else None)


@dataclasses.dataclass(frozen=True)
class _ExactResponse:
    """Solved = the completion equals the row's data.response_field column (white space stripped);
    rows without one are never solved (judge those by their held-out mean reward)."""

    field: str

    def __call__(self, completion: str, columns: dict) -> bool:
        want = columns.get(self.field)
        return isinstance(want, str) and completion.strip() == want.strip()
