"""Reward specs: what `rl.rewards` names, parsed once at start so a bad entry stops the run
before any rollout.

An entry is "builtin:<name>" (a reward of the task, e.g. builtin:addition), "pkg.mod:func" (any
importable callable, called TRL-style as func(prompts=[...], completions=[...], **columns) and
returning one float or None per row), or the directory of an `llm rm` run (a reward model);
each may end in "@weight" (default 1.0).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from llm.errors import UserError

if TYPE_CHECKING:
    from llm.rl.tasks.base import RLTask

RewardFn = Callable[..., list]  # fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    name: str  # the entry without its weight; keys per-reward metrics
    weight: float
    fn: RewardFn


def split_weight(entry: str) -> tuple[str, float]:
    """("pkg.mod:f", 0.5) from "pkg.mod:f@0.5"; no "@" -> weight 1.0."""
    body, at, tail = entry.rpartition("@")
    if not at:
        return entry.strip(), 1.0
    try:
        weight = float(tail)
    except ValueError:
        raise UserError(f"rl.rewards entry {entry!r}: weight {tail!r} is not a number; write NAME@WEIGHT, e.g. {body}@0.5") from None
    if not math.isfinite(weight):
        raise UserError(f"rl.rewards entry {entry!r}: weight {tail!r} is not finite; give a finite number")
    return body.strip(), weight


def import_reward(path: str, entry: str) -> RewardFn:
    """The callable named "pkg.mod:func" (or "pkg.mod:Class.attr"), or a one-line UserError."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UserError(f"rl.rewards entry {entry!r} is neither MODULE:FUNCTION nor an existing reward model directory; "
                        "write e.g. my_rewards:length_penalty, builtin:NAME or the workdir of an `llm rm` run")
    try:
        obj = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import-time error is the user's module
        msg = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"rl.rewards entry {entry!r}: module {module_name!r} does not import ({type(err).__name__}: {msg}); "
                        "fix the module or put its directory on PYTHONPATH") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"rl.rewards entry {entry!r}: {module_name!r} has no {attr!r}; check the function name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"rl.rewards entry {entry!r}: {module_name}.{attr} is a {type(obj).__name__}, not callable; "
                        "name a function fn(prompts, completions, **columns)")
    return obj


def parse_rewards(entries: Sequence[str], task: "RLTask | None", *, policy_tokenizer_fingerprint: str | None = None,
                  overrides: Iterable[str] = ()) -> list[RewardSpec]:
    """The reward specs of `rl.rewards` entries; an empty list -> the task's default reward(s).
    A directory entry is a reward model, whose tokenizer must match `policy_tokenizer_fingerprint`."""
    if isinstance(entries, str):
        raise UserError(f"rl.rewards={entries!r} is a string; give a tuple, e.g. ({entries!r},)")
    if not entries:
        return list(task.rewards) if task is not None else []
    specs: list[RewardSpec] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise UserError(f"rl.rewards entry {entry!r} is not a non-empty string; write builtin:NAME, MODULE:FUNCTION or a reward model workdir")
        name, weight = split_weight(entry)
        if name.startswith("builtin:"):
            own = {s.name: s for s in (task.rewards if task is not None else [])}
            if name not in own:
                have = ", ".join(own) or "none"
                raise UserError(f"rl.rewards entry {entry!r}: no such built-in reward for rl.task="
                                f"{task.name if task is not None else None!r} (it has: {have}); use one of those or MODULE:FUNCTION")
            fn = own[name].fn
        elif ":" not in name and os.path.isdir(name):
            if policy_tokenizer_fingerprint is None:
                raise UserError(f"rl.rewards entry {entry!r} is a directory (a reward model) but the policy's tokenizer is unknown "
                                "here; set rl.reward_model instead")
            from llm.rl.rewards.model import reward_model_reward

            fn = reward_model_reward(name, policy_tokenizer_fingerprint, overrides, name=name).fn
        else:
            fn = import_reward(name, entry)
        if any(s.name == name for s in specs):
            raise UserError(f"rl.rewards names {name!r} twice; give it once with the summed weight ({name}@W)")
        specs.append(RewardSpec(name, weight, fn))
    return specs
