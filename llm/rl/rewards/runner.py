"""Score a rollout batch with every reward at once: reward functions run concurrently in a
thread pool (sandboxed code waits on subprocesses, reward models on the device), a function
that raises or returns the wrong thing scores its rows None and is counted, and a reward that
keeps failing stops the run with one line naming it and the fix."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import traceback

import numpy as np

from llm.errors import UserError
from llm.rl.rewards.spec import RewardSpec

log = logging.getLogger("llm")


@dataclasses.dataclass
class RewardScores:
    total: np.ndarray  # (B,) float32 weighted sum over the rewards that scored the row; NaN when none did
    per_reward: dict[str, np.ndarray]  # (B,) float32 each, NaN = None / failed
    failures: dict[str, int]  # calls that failed this time (raised, wrong length, bad value)
    messages: list[str]  # one line per failure


class RewardFailure(Exception):
    """A reward call returned something unusable (its message is the one-line summary)."""


def summarize(err: BaseException) -> str:
    """'ValueError: message (file.py:12)': the type, the message's first line and the innermost frame."""
    if isinstance(err, RewardFailure):
        return str(err)
    lines = str(err).strip().splitlines()
    msg = lines[0] if lines else ""
    if len(msg) > 200:
        msg = msg[:197] + "..."
    frames = traceback.extract_tb(err.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {msg}{where}"


def _values(result, rows: int) -> np.ndarray:
    """A reward's return value as (rows,) float32 with NaN for None, or RewardFailure."""
    try:
        items = list(result)
    except TypeError:
        raise RewardFailure(f"returned a {type(result).__name__}, not a list of floats") from None
    if len(items) != rows:
        raise RewardFailure(f"returned {len(items)} values for {rows} completions")
    out = np.full(rows, np.nan, np.float32)
    for i, v in enumerate(items):
        if v is None:
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise RewardFailure(f"returned {v!r} (a {type(v).__name__}) for row {i}; return floats or None") from None
        if math.isinf(x):
            raise RewardFailure(f"returned {x} for row {i}; return finite floats or None")
        out[i] = x  # NaN stays NaN: unscorable, like None
    return out


class RewardRunner:
    """Runs `specs` over rollout batches and keeps each reward's failure count over the run.
    The failure share is failed calls / max(calls, min_calls), so one early failure does not
    stop a run but a reward that always fails stops it within about min_calls steps."""

    def __init__(self, specs: list[RewardSpec], *, workers: int = 2, max_failure_rate: float = 0.5, min_calls: int = 10):
        if not specs:
            raise UserError("no rewards to score completions with; set rl.rewards (e.g. ('my_rewards:score',)) or rl.reward_model")
        if workers < 1:
            raise UserError(f"rl.reward_workers={workers} must be at least 1")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise UserError(f"rl.max_reward_failure_rate={max_failure_rate} must be in [0, 1]")
        self.specs = list(specs)
        self.max_failure_rate = float(max_failure_rate)
        self.min_calls = max(1, int(min_calls))
        self.calls = {s.name: 0 for s in self.specs}
        self.failed = {s.name: 0 for s in self.specs}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward")

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> RewardScores:
        rows = len(completions)
        if len(prompts) != rows:
            raise ValueError(f"{len(prompts)} prompts for {rows} completions")
        for key, values in columns.items():
            if key in ("prompts", "completions"):
                raise UserError(f"the prompt rows have a column {key!r}, which is also the name of a reward function's "
                                "argument; rename that field of the rows")
            if len(values) != rows:
                raise ValueError(f"column {key!r} has {len(values)} entries for {rows} completions")
        futures = {s.name: self._pool.submit(s.fn, prompts=list(prompts), completions=list(completions),
                                             **{k: list(v) for k, v in columns.items()}) for s in self.specs}
        per_reward, failures, messages = {}, {}, []
        for spec in self.specs:
            self.calls[spec.name] += 1
            try:
                per_reward[spec.name] = _values(futures[spec.name].result(), rows)
            except Exception as err:  # noqa: BLE001 - a user's reward must never kill the run
                per_reward[spec.name] = np.full(rows, np.nan, np.float32)
                failures[spec.name] = 1
                self.failed[spec.name] += 1
                line = f"reward {spec.name} failed: {summarize(err)}"
                messages.append(line)
                log.warning("%s; its %d rows score None", line, rows)
        weighted = np.stack([s.weight * per_reward[s.name] for s in self.specs])
        scored = ~np.isnan(weighted)
        total = np.where(scored.any(0), np.where(scored, weighted, 0.0).sum(0), np.nan).astype(np.float32)
        self._check_failure_rate(messages)
        return RewardScores(total, per_reward, failures, messages)

    def _check_failure_rate(self, messages: list[str]) -> None:
        for spec in self.specs:
            failed, calls = self.failed[spec.name], self.calls[spec.name]
            if failed and failed / max(calls, self.min_calls) > self.max_failure_rate:
                last = next((m for m in reversed(messages) if m.startswith(f"reward {spec.name} ")), "")
                raise UserError(f"reward {spec.name} failed {failed} of {calls} calls, more than rl.max_reward_failure_rate="
                                f"{self.max_failure_rate}{' (last: ' + last + ')' if last else ''}; fix the function or raise "
                                "rl.max_reward_failure_rate")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "RewardRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
