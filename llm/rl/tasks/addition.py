"""The built-in task a tiny model learns on a CPU in minutes: add two numbers.

Prompt "12+34=", reference response "46". Problems are distinct (a, b) pairs drawn with
data.seed: each operand's digit count uniform in 1..rl.digits, then its value uniform among
numbers of that many digits (0 counts as one digit). The last rl.held_out problems drawn are
held out, so train and held-out prompts never overlap.

Reward (the completion stripped of white space; the answer = str(a + b)):
  1.0  exactly the answer
  0.1  all digits but wrong, plus 0.1 when it has the answer's number of digits, plus 0.3 x the
       share of digits right in their place (aligned from the units; over the longer of the two),
       so a wrong answer scores below 0.5 and nearer answers score more
  0.0  anything else (empty, signs, words)
Success = exactly the answer.
"""

from __future__ import annotations

import numpy as np

from llm.errors import UserError
from llm.rl.rewards.spec import RewardSpec
from llm.rl.tasks.base import PromptRow, RLTask, check_sizes

NAME = "builtin:addition"


def addition_score(completion: str, answer: str) -> float:
    got = completion.strip()
    if got == answer:
        return 1.0
    if not got or not (got.isascii() and got.isdigit()):
        return 0.0
    width = max(len(got), len(answer))
    placed = sum(a == b for a, b in zip(got[::-1], answer[::-1]))
    return 0.1 + (0.1 if len(got) == len(answer) else 0.0) + 0.3 * placed / width


def addition_reward(prompts: list[str], completions: list[str], answer: list, **_) -> list[float | None]:
    """builtin:addition: the score above per row; rows without an answer are unscorable."""
    return [None if a is None else addition_score(c, str(a)) for c, a in zip(completions, answer)]


def addition_success(completion: str, columns: dict) -> bool:
    return completion.strip() == str(columns["answer"])


def _operand(rng: np.random.Generator, digits: int) -> int:
    n = int(rng.integers(1, digits + 1))
    low = 0 if n == 1 else 10 ** (n - 1)
    return int(rng.integers(low, 10**n))


def problems(size: int, digits: int, seed: int) -> list[tuple[int, int]]:
    """`size` distinct (a, b) pairs, a pure function of the arguments."""
    if not 1 <= digits <= 18:
        raise UserError(f"rl.digits={digits} must be in 1..18")
    space = (10**digits) ** 2
    if size > space:
        raise UserError(f"rl.task_size={size} is more than the {space} distinct additions of 1..{digits}-digit numbers; "
                        "lower rl.task_size or raise rl.digits")
    rng = np.random.default_rng([seed, digits, 0xADD])
    seen: dict[tuple[int, int], None] = {}
    tries = 0
    while len(seen) < size:
        tries += 1
        if tries > 50 * size + 10_000:  # a tiny space nearly filled: take the rest in order
            rest = [(a, b) for a in range(10**digits) for b in range(10**digits) if (a, b) not in seen]
            for i in rng.permutation(len(rest))[: size - len(seen)]:
                seen[rest[int(i)]] = None
            break
        seen.setdefault((_operand(rng, digits), _operand(rng, digits)), None)
    return list(seen)


def addition_task(size: int, held_out: int, digits: int, seed: int) -> RLTask:
    check_sizes("addition", size, held_out)
    rows = [PromptRow(f"{a}+{b}=", {"answer": str(a + b)}) for a, b in problems(size, digits, seed)]
    cut = len(rows) - held_out
    return RLTask("addition", rows[:cut], rows[cut:], [RewardSpec(NAME, 1.0, addition_reward)], addition_success,
                  response_column="answer")
